"""The package under test is the installed one, and the Azure preview path is wired up.

Runs in every session: against the fork's wheel (``nox -s tests``) and against pristine upstream
(``nox -s tests_upstream``, which sets ``FORK_UNDER_TEST=upstream``).
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

import livekit.plugins.openai as lk_openai
from livekit.plugins.openai import realtime
from livekit.plugins.openai.realtime.realtime_model_beta import RealtimeModelBeta

UNDER_TEST = os.environ.get("FORK_UNDER_TEST", "fork")
FORK_VERSION = "1.4.6.post9"


def test_imports_from_site_packages_not_the_repo() -> None:
    location = Path(lk_openai.__file__).resolve()
    assert "site-packages" in location.parts, location
    assert Path(sys.prefix).resolve() in location.parents, (location, sys.prefix)
    repo = os.environ.get("FORK_REPO_ROOT")
    if repo:
        assert Path(repo).resolve() / "livekit-plugins" not in location.parents, location


@pytest.mark.skipif(UNDER_TEST == "upstream", reason="pristine upstream has its own version")
def test_installed_distribution_is_the_fork() -> None:
    assert metadata.version("livekit-plugins-openai") == FORK_VERSION


@pytest.mark.regression(fails_on=("1.4.6", "1.4.3"))
def test_metadata_caps_openai_below_3() -> None:
    """Patch 0001: without the cap a fresh install resolves openai 3, which lacks httpx."""
    requires = metadata.requires("livekit-plugins-openai") or []
    (openai_req,) = [r for r in requires if r.replace(" ", "").startswith("openai[")]
    assert "<3" in openai_req.replace(" ", ""), openai_req


def test_openai_major_is_2() -> None:
    assert metadata.version("openai").split(".")[0] == "2"


async def test_with_azure_gives_the_beta_model() -> None:
    model = realtime.RealtimeModel.with_azure(
        azure_deployment="gpt-4o-realtime-preview",
        azure_endpoint="http://127.0.0.1:9",
        api_key="not-a-key",
        api_version="2024-10-01-preview",
    )
    try:
        assert isinstance(model, RealtimeModelBeta)
    finally:
        await model.aclose()
