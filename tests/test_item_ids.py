"""Local item ids the service cannot take as they are.

The service takes ids of at most 32 characters made of ASCII letters, digits, ``_`` and ``-``
(livekit/agents#1717); any other local id is mapped to a stable short one, whatever characters
it holds (a lone surrogate cannot be encoded as UTF-8). See
``tests/test_regressions.py`` for how regression tests run on upstream.
"""

from __future__ import annotations

import contextlib

import pytest
from fake_azure import FakeAzureRealtimeServer
from sync_helpers import (
    ChatContextSyncError,
    assert_summary_under_short_id,
    beta_session,
    error_codes,
    sent_since,
    sync,
    text_ctx,
)

SURROGATE_ID = "x" * 40 + "\ud800"


@pytest.mark.regression(fails_on=("1.4.6.post2", "1.4.6"))
async def test_long_id_with_lone_surrogate_synced_under_short_id(
    fake_azure: FakeAzureRealtimeServer,
) -> None:
    """A long id holding a lone surrogate is synced under a short id, like any long id.

    No ``UnicodeEncodeError`` (nor ``ChatContextSyncError``): the other items of the context
    are synced, and the next sync of the same context sends nothing. Both protocols.
    """
    ctx = text_ctx(
        ("sys_1", "system", "TEST"),
        (SURROGATE_ID, "user", "summary of the previous agent"),
        ("user_1", "user", "hello"),
    )
    async with beta_session(fake_azure) as (sess, _):
        try:
            await sync(sess, ctx)
        except UnicodeEncodeError as e:
            pytest.fail(f"the sync raised {e!r}")
        except ChatContextSyncError as e:  # the other accepted outcome, not the preferred one
            pytest.fail(f"the sync refused the item: {e}")
        assert error_codes(fake_azure) == []
        assert_summary_under_short_id(fake_azure)

        start = len(fake_azure.received)
        await sync(sess, ctx)
        assert sent_since(fake_azure, start) == []
        assert error_codes(fake_azure) == []


@pytest.mark.regression(fails_on=("1.4.6.post5", "1.4.6"))
@pytest.mark.parametrize("item_id", ["1fddfc578808/fnc_0", "agent.summary", "résumé"])
async def test_short_id_with_a_character_the_service_refuses_synced_under_a_wire_id(
    fake_azure: FakeAzureRealtimeServer, item_id: str
) -> None:
    """A short id with a ``/``, a ``.`` or a non-ASCII letter (which the service refuses: "string
    does not match pattern") is synced under a wire id like a long one: no server error, the
    other items synced, and the next sync of the same context sends nothing. Both protocols."""
    ctx = text_ctx(
        ("sys_1", "system", "TEST"),
        (item_id, "user", "summary of the previous agent"),
        ("user_1", "user", "hello"),
    )
    async with beta_session(fake_azure) as (sess, _):
        with contextlib.suppress(ChatContextSyncError):  # 1.4.6.post5: the service refused it
            await sync(sess, ctx)
        assert error_codes(fake_azure) == []
        assert_summary_under_short_id(fake_azure)

        start = len(fake_azure.received)
        await sync(sess, ctx)
        assert sent_since(fake_azure, start) == []
