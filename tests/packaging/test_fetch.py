"""Unit tests of the backend's sdist fetcher: pip/uv settings, index formats, cache (in-process).

The fetcher sees what a PEP 517 backend sees: environment variables and config files. Each test
passes its own environment (``HOME`` in a temp dir, pip's config files off unless it writes one),
so the machine's settings do not leak in.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from pipeline_support import PLUGIN_SUBDIR

NAME, VERSION = "livekit-plugins-openai", "1.4.6"
FILENAME = "livekit_plugins_openai-1.4.6.tar.gz"
PYPI = "https://pypi.org/simple/"


@pytest.fixture(scope="module")
def fetch_mod(repo_root: Path) -> Iterator[ModuleType]:
    """``lk_fork_fetch`` from the repository under test."""
    build_dir = str(repo_root / PLUGIN_SUBDIR / "_build")
    sys.path.insert(0, build_dir)
    try:
        import lk_fork_fetch

        yield lk_fork_fetch
    finally:
        sys.path.remove(build_dir)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_DIRS": str(tmp_path / "no-system-config"),
        "PIP_CONFIG_FILE": os.devnull,
        "UV_NO_CONFIG": "1",
        "LK_OPENAI_FORK_CACHE_DIR": str(tmp_path / "cache"),
    }
    env.update(extra)
    return env


def test_pip_config_files_and_env(fetch_mod: ModuleType, tmp_path: Path) -> None:
    """[global] then [install] of the user's pip.conf, PIP_* variables override."""
    conf = tmp_path / "home" / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        "[global]\nindex-url = http://conf/simple\nextra-index-url = http://e1/s http://e2/s\n"
        "trusted-host = conf\n[install]\nfind-links = /wheels\n[download]\nno-index = yes\n"
    )
    env = _env(tmp_path)
    del env["PIP_CONFIG_FILE"]
    src = fetch_mod.discover_sources(env)
    assert src.locations() == ["/wheels", "http://e1/s", "http://e2/s", "http://conf/simple"]
    assert src.trusted_hosts == {"conf"}
    env["PIP_INDEX_URL"] = "http://mirror/simple"
    env["PIP_NO_INDEX"] = "0"
    assert fetch_mod.discover_sources(env).locations()[-1] == "http://mirror/simple"
    env["PIP_NO_INDEX"] = "1"
    assert fetch_mod.discover_sources(env).locations() == ["/wheels"]
    env["PIP_CONFIG_FILE"] = os.devnull  # pip: no config file at all
    del env["PIP_NO_INDEX"], env["PIP_INDEX_URL"]
    assert fetch_mod.discover_sources(env).locations() == [PYPI]


def test_uv_environment(fetch_mod: ModuleType, tmp_path: Path) -> None:
    """UV_INDEX (named) before UV_EXTRA_INDEX_URL before the default; no PyPI then."""
    env = _env(
        tmp_path,
        UV_INDEX="internal=http://i/simple http://j/simple",
        UV_EXTRA_INDEX_URL="http://x/simple",
        UV_DEFAULT_INDEX="http://d/simple",
        UV_FIND_LINKS="/w1,/w2",
        UV_INSECURE_HOST="i",
    )
    src = fetch_mod.discover_sources(env)
    assert src.locations() == [
        "/w1", "/w2", "http://i/simple", "http://j/simple", "http://x/simple", "http://d/simple",
    ]  # fmt: skip
    assert "i" in src.trusted_hosts
    env = _env(tmp_path, UV_INDEX_URL="http://old-style/simple")
    assert fetch_mod.discover_sources(env).locations() == ["http://old-style/simple"]
    env = _env(tmp_path, UV_OFFLINE="1", UV_FIND_LINKS="/local http://remote/links")
    assert fetch_mod.discover_sources(env).locations() == ["/local"]


def test_uv_toml_and_tool_uv(fetch_mod: ModuleType, tmp_path: Path) -> None:
    """[[index]] entries (default, explicit, flat) in uv.toml, and [tool.uv] found from PWD."""
    uv_toml = tmp_path / "uv.toml"
    uv_toml.write_text(
        '[[index]]\nname = "a"\nurl = "http://a/simple"\n'
        '[[index]]\nurl = "http://d/simple"\ndefault = true\n'
        '[[index]]\nurl = "http://only-when-named/simple"\nexplicit = true\n'
        '[[index]]\nurl = "/flat"\nformat = "flat"\n'
    )
    env = _env(tmp_path, UV_CONFIG_FILE=str(uv_toml))
    del env["UV_NO_CONFIG"]
    assert fetch_mod.discover_sources(env).locations() == [
        "/flat", "http://a/simple", "http://d/simple",
    ]  # fmt: skip
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.uv]\nindex-url = "http://p/simple"\n')
    env = _env(tmp_path, PWD=str(project / "sub"))
    del env["UV_NO_CONFIG"]
    assert fetch_mod.discover_sources(env).locations() == ["http://p/simple"]


def test_listing_formats(fetch_mod: ModuleType) -> None:
    """PEP 691 JSON and PEP 503 HTML pages, relative URLs and hash fragments."""
    base = "https://idx.example/simple/livekit-plugins-openai/"
    page = {
        "files": [{"filename": FILENAME, "url": "../../f/x.tar.gz", "hashes": {"sha256": "ab"}}]
    }
    (j,) = fetch_mod.parse_listing(
        json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json", base
    )
    assert (j.filename, j.url, j.sha256) == (FILENAME, "https://idx.example/f/x.tar.gz", "ab")
    body = f'<a href="/f/{FILENAME}#sha256=cd" data-yanked="">{FILENAME}</a>'.encode()
    (h,) = fetch_mod.parse_listing(body, "text/html", base)
    assert (h.filename, h.url, h.sha256) == (FILENAME, f"https://idx.example/f/{FILENAME}", "cd")
    assert fetch_mod.is_pinned_sdist("livekit-plugins-openai-1.4.6.tar.gz", NAME, VERSION)
    assert not fetch_mod.is_pinned_sdist("livekit_plugins_openai-1.4.60.tar.gz", NAME, VERSION)
    assert not fetch_mod.is_pinned_sdist("livekit_plugins_openai-1.4.6.zip", NAME, VERSION)


class _JsonIndex:
    """A PEP 691 JSON-only index on 127.0.0.1 needing basic auth, with a switch to go down."""

    def __init__(self, payload: bytes, listed_sha256: str | None) -> None:
        self.payload = payload
        self.listed = listed_sha256
        self.down = False
        self.paths: list[str] = []
        self.auth: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                outer.auth.append(self.headers.get("Authorization"))
                if outer.down:
                    self.send_error(503)
                elif self.path == "/simple/livekit-plugins-openai/":
                    assert "application/vnd.pypi.simple.v1+json" in self.headers["Accept"]
                    hashes = {"sha256": outer.listed} if outer.listed else {}
                    files = [{"filename": FILENAME, "url": f"/files/{FILENAME}", "hashes": hashes}]
                    self._send(json.dumps({"files": files}).encode(), True)
                elif self.path == f"/files/{FILENAME}":
                    self._send(outer.payload, False)
                else:
                    self.send_error(404)

            def _send(self, body: bytes, is_json: bool) -> None:
                self.send_response(200)
                ctype = "application/vnd.pypi.simple.v1+json" if is_json else "application/x-tar"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://user:s%3Acret@127.0.0.1:{self.server.server_address[1]}/simple"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def json_index() -> Iterator[_JsonIndex]:
    payload = b"not really a tarball, but the pinned bytes"
    index = _JsonIndex(payload, hashlib.sha256(payload).hexdigest())
    yield index
    index.close()


def test_fetch_json_index_with_credentials_then_cache(
    fetch_mod: ModuleType, json_index: _JsonIndex, tmp_path: Path
) -> None:
    sha = hashlib.sha256(json_index.payload).hexdigest()
    env = _env(tmp_path, PIP_INDEX_URL=json_index.url)
    (tmp_path / "a").mkdir()
    got = fetch_mod.fetch(NAME, VERSION, sha, tmp_path / "a", env, log=lambda _m: None)
    assert got.read_bytes() == json_index.payload
    assert json_index.paths == ["/simple/livekit-plugins-openai/", f"/files/{FILENAME}"]
    assert json_index.auth == ["Basic " + base64.b64encode(b"user:s:cret").decode()] * 2
    cached = tmp_path / "cache" / "sdist" / sha / FILENAME
    assert cached.read_bytes() == json_index.payload

    json_index.down = True  # second fetch: from the cache, no request
    (tmp_path / "b").mkdir()
    fetch_mod.fetch(NAME, VERSION, sha, tmp_path / "b", env, log=lambda _m: None)
    assert len(json_index.paths) == 2

    cached.write_bytes(b"corrupt")  # a corrupt cache entry is dropped; the index is down
    (tmp_path / "c").mkdir()
    with pytest.raises(fetch_mod.FetchError) as err:
        fetch_mod.fetch(NAME, VERSION, sha, tmp_path / "c", env, log=lambda _m: None)
    assert not cached.exists()
    assert "503" in str(err.value) and "LK_OPENAI_FORK_SDIST=" in str(err.value)
    assert "s%3Acret" not in str(err.value) and "s:cret" not in str(err.value)

    json_index.down = False  # and is fetched again once the index is back
    fetch_mod.fetch(NAME, VERSION, sha, tmp_path / "c", env, log=lambda _m: None)
    assert cached.read_bytes() == json_index.payload


def test_no_cache_variable(fetch_mod: ModuleType, json_index: _JsonIndex, tmp_path: Path) -> None:
    sha = hashlib.sha256(json_index.payload).hexdigest()
    env = _env(tmp_path, PIP_INDEX_URL=json_index.url, LK_OPENAI_FORK_NO_CACHE="1")
    fetch_mod.fetch(NAME, VERSION, sha, tmp_path, env, log=lambda _m: None)
    assert not (tmp_path / "cache").exists()
    assert fetch_mod.cache_root({"HOME": "/h"}) == Path("/h/.cache/livekit-plugins-openai-fork")
    assert fetch_mod.cache_root({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path(
        "/x/livekit-plugins-openai-fork"
    )


def test_wrong_hash_is_a_mismatch(
    fetch_mod: ModuleType, json_index: _JsonIndex, tmp_path: Path
) -> None:
    """The index lists another hash: refused without downloading; so is an unlisted bad file."""
    env = _env(tmp_path, PIP_INDEX_URL=json_index.url, LK_OPENAI_FORK_NO_CACHE="1")
    with pytest.raises(fetch_mod.FetchError, match="sha256 mismatch .* expected 0{64}"):
        fetch_mod.fetch(NAME, VERSION, "0" * 64, tmp_path, env, log=lambda _m: None)
    assert json_index.paths == ["/simple/livekit-plugins-openai/"]
    json_index.listed = None
    with pytest.raises(fetch_mod.FetchError, match="sha256 mismatch"):
        fetch_mod.fetch(NAME, VERSION, "0" * 64, tmp_path, env, log=lambda _m: None)
    assert not list(tmp_path.glob("*.tar.gz"))


def test_find_links_directory_and_missing_file_index(fetch_mod: ModuleType, tmp_path: Path) -> None:
    """A find-links directory is listed; a file:// index without the project is skipped."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / FILENAME).write_bytes(b"sdist bytes")
    sha = hashlib.sha256(b"sdist bytes").hexdigest()
    env = _env(
        tmp_path,
        PIP_INDEX_URL=(tmp_path / "empty-index").as_uri(),
        PIP_FIND_LINKS=str(wheels),
        LK_OPENAI_FORK_NO_CACHE="1",
    )
    (tmp_path / "out").mkdir()
    got = fetch_mod.fetch(NAME, VERSION, sha, tmp_path / "out", env, log=lambda _m: None)
    assert got.read_bytes() == b"sdist bytes"
    (wheels / FILENAME).unlink()
    with pytest.raises(fetch_mod.FetchError) as err:
        fetch_mod.fetch(NAME, VERSION, sha, tmp_path / "out", env, log=lambda _m: None)
    msg = str(err.value)
    assert "not listed" in msg and "LK_OPENAI_FORK_SDIST=/path/to/" + FILENAME in msg
