"""How a realtime session opens its websocket, shared by both realtime sessions.

The GA session (``realtime_model.py``) and the preview one (``realtime_model_beta.py``) open
their connection through :func:`open_websocket`: it takes the credentials
(:class:`Credentials`: an API key, a static Entra token, or a token provider called for every
websocket) and turns a failed handshake into one error a user can act on
(:class:`RealtimeHandshakeError` for a refusal, an ``APIConnectionError`` for an unreachable
host), retryable or not. ``with_azure`` checks its arguments with :func:`resolve_credentials`
and :func:`azure_base_url`. Everything but :func:`open_websocket` and :meth:`Credentials.token`
is pure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
import ipaddress
import math
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Protocol, Union
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

import aiohttp

from livekit.agents import APIConnectionError, APIConnectOptions, APIError, APIStatusError

from ..log import logger

__all__ = [
    "AzureADTokenProvider",
    "Credentials",
    "RealtimeHandshakeError",
    "RetryDecision",
    "azure_base_url",
    "check_credentials",
    "cleartext_warning",
    "connect",
    "connection_error",
    "handshake_error",
    "open_websocket",
    "parse_retry_after",
    "provider_name",
    "resolve_credentials",
    "retry_decision",
    "retry_delay",
    "warn_cleartext_once",
    "warn_once",
]

# the openai SDK's AsyncAzureADTokenProvider: a callable returning a token or an awaitable of one
AzureADTokenProvider = Callable[[], Union[str, Awaitable[str]]]  # noqa: UP007 - a runtime alias

# the longest Retry-After honoured (aclose() does not wait for it: see RetryDecision.wait)
MAX_RETRY_AFTER = 30.0
# query parameters shown in errors; the rest of a query (a gateway's key?) is left out
_SHOWN_QUERY = ("api-version", "deployment", "model")
# the suffixes of an endpoint given with its API path (the resource endpoint is what is meant)
_API_PATHS = ("/openai/v1/realtime", "/openai/realtime", "/openai/v1", "/openai")
_ENDPOINT_FORM = "https://<resource>.openai.azure.com"

# what to check when the service refuses a handshake with a status no retry can fix
_CHECK = {
    400: "check the protocol and api-version (the GA path /openai/v1/realtime takes no "
    "api-version, the preview path /openai/realtime needs one)",
    401: "check the key or token (api_key or AZURE_OPENAI_API_KEY, entra_token, "
    "azure_ad_token_provider and its scope) and that a GA connection gets no api-version",
    403: "check that the key or token may use this resource (Entra ID: a role such as "
    "Cognitive Services OpenAI User; the resource's network rules)",
    404: "check the endpoint (the resource endpoint, " + _ENDPOINT_FORM + ", no path), the "
    "deployment name, and the protocol: "
    "a GA deployment takes no api_version (nor OPENAI_API_VERSION), a preview one needs one",
}


class RealtimeHandshakeError(APIStatusError):
    """The service answered the websocket handshake with an HTTP error status.

    Retryable for 429 and 5xx (``retry_after``: the seconds the service asked to wait, if it
    said), fatal for 400, 401, 403 and 404. ``str()`` is the one-line message.
    """

    def __init__(self, message: str, *, status_code: int, retry_after: float | None) -> None:
        super().__init__(message, status_code=status_code, retryable=_retryable(status_code))
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


# ------------------------------------------------------------------------------- credentials


class SessionOptions(Protocol):
    """What :func:`connect` reads of a session's options (the same names on both protocols).

    Options that have an ``azure_ad_token_provider`` field also give :func:`connect` that provider.
    """

    api_key: str | None
    entra_token: str | None
    is_azure: bool
    conn_options: APIConnectOptions


@dataclass(frozen=True)
class Credentials:
    """What a session authenticates with: exactly one of the three for Azure.

    Attributes:
        api_key: Sent as ``api-key`` (Azure) or ``Authorization: Bearer`` (OpenAI).
        entra_token: A static Entra ID token, sent as ``Authorization: Bearer``.
        token_provider: Called for every websocket; its token is sent as a bearer token.
        is_azure: Whether the service is Azure OpenAI.
    """

    api_key: str | None = None
    entra_token: str | None = None
    token_provider: AzureADTokenProvider | None = None
    is_azure: bool = True

    @classmethod
    def of(cls, opts: SessionOptions) -> Credentials:
        """The credentials of a session's options (either protocol)."""
        # options without an ``azure_ad_token_provider`` field have no provider
        provider: AzureADTokenProvider | None = getattr(opts, "azure_ad_token_provider", None)
        return cls(
            api_key=opts.api_key,
            entra_token=opts.entra_token,
            token_provider=provider,
            is_azure=opts.is_azure,
        )

    async def token(self, timeout: float | None = None) -> str | None:
        """The bearer token for a new websocket: the provider's, else the static one.

        A sync provider runs in a worker thread (azure-identity's may block for seconds on a
        cache miss); an awaitable it returns, or an async provider's, is awaited on the loop:
        neither holds the event loop.

        Args:
            timeout: The seconds the provider has to return a token (the connect timeout).

        Raises:
            APIConnectionError: The provider raised, returned no token string or none within
                ``timeout`` (retryable).
        """
        provider = self.token_provider
        if provider is None:
            return self.entra_token
        name = provider_name(provider)
        try:
            result: Any = await asyncio.wait_for(_ask(provider), timeout)
        except asyncio.TimeoutError:
            raise APIConnectionError(
                f"realtime connection failed: azure_ad_token_provider {name} returned no token "
                f"within {timeout:g} s (timeout)",
                retryable=True,
            ) from None
        except _ProviderError as e:
            raise APIConnectionError(
                f"realtime connection failed: azure_ad_token_provider {name} {e}", retryable=True
            ) from e.__cause__
        except Exception as e:
            raise APIConnectionError(
                f"realtime connection failed: azure_ad_token_provider {name} raised "
                f"{type(e).__name__}: {e}",
                retryable=True,
            ) from e
        if not isinstance(result, str) or not result:
            raise APIConnectionError(
                f"realtime connection failed: azure_ad_token_provider {name} returned "
                f"{_kind(result)}, not a token string",
                retryable=True,
            )
        if _has_control_character(result):
            raise APIConnectionError(
                f"realtime connection failed: azure_ad_token_provider {name} returned a token "
                "with a control character (a newline?), which no HTTP header may carry",
                retryable=True,
            )
        return result

    def headers(self, token: str | None) -> dict[str, str]:
        """The authentication headers of a handshake carrying ``token`` (see :meth:`token`)."""
        if not self.is_azure:
            return {"Authorization": f"Bearer {self.api_key}"}
        out = {}
        if token:
            out["Authorization"] = f"Bearer {token}"
        if self.api_key:
            out["api-key"] = self.api_key
        return out


def resolve_credentials(
    *,
    api_key: str | None,
    entra_token: str | None,
    azure_ad_token_provider: AzureADTokenProvider | None,
    env: Mapping[str, str],
) -> Credentials:
    """The credentials of ``with_azure``: the arguments, else ``AZURE_OPENAI_API_KEY``.

    With a token provider, ``AZURE_OPENAI_API_KEY`` is not read (as with 1.4.6's
    ``entra_token``, the explicit credential wins).

    Raises:
        ValueError: A provider together with ``api_key`` or ``entra_token``, a provider that
            is not callable, a key or token with a control character, or no credential at all.
    """
    check_credentials("with_azure()", api_key, entra_token, azure_ad_token_provider)
    if azure_ad_token_provider is not None:
        return Credentials(token_provider=azure_ad_token_provider)
    if not api_key:
        api_key = env.get("AZURE_OPENAI_API_KEY")
        check_credentials("with_azure()", api_key, None, None, key_name="AZURE_OPENAI_API_KEY")
    if api_key is None and entra_token is None:
        raise ValueError(
            "Missing credentials. Please pass one of `api_key`, `entra_token`, "
            "`azure_ad_token_provider`, or the `AZURE_OPENAI_API_KEY` environment variable."
        )
    return Credentials(api_key=api_key, entra_token=entra_token)


def provider_name(provider: object) -> str:
    """How errors name a token provider: its qualified name, else its type's."""
    name = getattr(provider, "__qualname__", None) or type(provider).__qualname__
    return "'" + name.rsplit("<locals>.", 1)[-1] + "'"


def _is_async(provider: object) -> bool:
    call = getattr(provider, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(provider) or inspect.iscoroutinefunction(call)


def _kind(value: object) -> str:
    if value is None or value == "":
        return repr(value)
    name = f"{type(value).__module__}.{type(value).__qualname__}".replace("builtins.", "")
    return ("an " if name[0] in "aeiou" else "a ") + name


class _ProviderError(Exception):
    """What a provider did wrong, said after its name (``returned ...``)."""


async def _ask(provider: AzureADTokenProvider) -> object:
    """The provider's result: an async one's awaited; a sync one's from a worker thread, and
    awaited on the loop if it is an awaitable."""
    if _is_async(provider):
        return await provider()  # type: ignore[misc]
    result = await _in_thread(provider)
    if not inspect.isawaitable(result):
        return result
    if asyncio.isfuture(result) and result.get_loop() is not asyncio.get_running_loop():
        raise _ProviderError(
            "returned a future of another event loop, not a token string or an awaitable "
            "this loop can await (create it with asyncio.run_coroutine_threadsafe on this loop, "
            "or make the provider async)"
        )
    return await result


# sync providers run in threads of their own: one that never returns must not take the
# loop's default executor, which DNS lookups (getaddrinfo) of every session need
_PROVIDER_THREADS = 8
_provider_executor: concurrent.futures.ThreadPoolExecutor | None = None
# one call of a provider at a time per loop: a retry waits for a stuck call, never adds one
_provider_calls: dict[tuple[int, int], asyncio.Lock] = {}


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _provider_executor
    if _provider_executor is None:
        _provider_executor = concurrent.futures.ThreadPoolExecutor(
            _PROVIDER_THREADS, thread_name_prefix="azure_ad_token_provider"
        )
    return _provider_executor


async def _in_thread(provider: Callable[[], object]) -> object:
    """``provider()`` in a worker thread, one call of it at a time (a later call waits for
    one in flight, even one whose caller gave up); a coroutine it returns after the caller
    stopped waiting (timed out, the session closed) is closed, never left unawaited."""
    loop = asyncio.get_running_loop()
    key = (id(loop), id(provider))
    in_flight = _provider_calls.setdefault(key, asyncio.Lock())
    await in_flight.acquire()
    outcome: asyncio.Future[object] = loop.create_future()
    context = contextvars.copy_context()

    def deliver(result: object, error: BaseException | None) -> None:
        in_flight.release()
        if outcome.done():  # abandoned: nothing will await it
            if inspect.iscoroutine(result):
                result.close()
        elif error is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(result)

    def work() -> None:
        result: object = None
        error: BaseException | None = None
        try:
            result = context.run(provider)
        except Exception as e:
            error = e
        try:
            loop.call_soon_threadsafe(deliver, result, error)
        except RuntimeError:  # the loop is closed: its lock goes with it
            _provider_calls.pop(key, None)
            if inspect.iscoroutine(result):
                result.close()

    try:
        _executor().submit(work)
    except BaseException:
        in_flight.release()
        raise
    return await outcome


def _has_control_character(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def check_credentials(
    where: str,
    api_key: str | None,
    entra_token: str | None,
    azure_ad_token_provider: AzureADTokenProvider | None,
    *,
    key_name: str = "api_key",
) -> None:
    """Refuse credentials no handshake could carry, naming the argument (never its value).

    Args:
        where: The call, for the message (``"with_azure()"``, ``"RealtimeModel()"``).
        api_key: The key given (or ``key_name``'s value from the environment).
        entra_token: The static token given.
        azure_ad_token_provider: The token provider given.
        key_name: How the message names ``api_key`` (``AZURE_OPENAI_API_KEY`` when read from
            the environment).

    Raises:
        ValueError: A provider together with a key or token, a provider that is not
            callable, or a key or token with a control character (a pasted newline).
    """
    if azure_ad_token_provider is not None:
        given = [n for n, v in (("api_key", api_key), ("entra_token", entra_token)) if v]
        if given:
            raise ValueError(
                f"{where}: pass either azure_ad_token_provider or {' / '.join(given)}, not both"
            )
        if not callable(azure_ad_token_provider):
            raise ValueError(
                f"{where}: azure_ad_token_provider must be a callable returning a token "
                f"(or an awaitable of one), not {_kind(azure_ad_token_provider)}"
            )
    for name, value in ((key_name, api_key), ("entra_token", entra_token)):
        if value and _has_control_character(value):
            raise ValueError(
                f"{where}: {name} has a control character (a newline or tab pasted with it?), "
                "which no HTTP header may carry: strip it"
            )


# ------------------------------------------------------------------------- endpoint, protocol


def azure_base_url(azure_endpoint: str) -> str:
    """The base URL (``<endpoint>/openai``) of an ``azure_endpoint``.

    The resource endpoint is expected; one given with an API path (``/openai``, ``/openai/v1``,
    ``/openai/realtime``, ``/openai/v1/realtime``) means the same. Any host works (Azure's
    resource domains, sovereign clouds, a gateway; a gateway's own path prefix is kept).

    Raises:
        ValueError: The endpoint has a query or fragment (a pasted websocket URL), or is not an
            http(s) URL with a host.
    """
    parts = urlsplit(azure_endpoint.strip())
    expected = f"pass the resource endpoint, {_ENDPOINT_FORM} (no path or query)"
    if parts.fragment or azure_endpoint.rstrip().endswith("#"):
        raise ValueError(f"azure_endpoint {_shown(azure_endpoint)} has a #fragment: {expected}")
    if parts.query or azure_endpoint.rstrip().endswith("?"):
        raise ValueError(
            f"azure_endpoint {_shown(azure_endpoint)} has a query: {expected}; the protocol "
            "comes from api_version, the deployment from azure_deployment"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"azure_endpoint {_shown(azure_endpoint)} carries a user or password: {expected}; "
            "credentials go in api_key, entra_token or azure_ad_token_provider"
        )
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    if scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"azure_endpoint {_shown(azure_endpoint)} is not an https URL: {expected}")
    path = parts.path.rstrip("/")
    if "/openai/deployments/" in path + "/":
        raise ValueError(
            f"azure_endpoint {_shown(azure_endpoint)} has a deployment path: {expected}; the "
            "deployment goes in azure_deployment"
        )
    for suffix in _API_PATHS:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return f"{scheme}://{parts.netloc}{path}/openai"


def cleartext_warning(base_url: str) -> str | None:
    """What to warn about once: an ``http://`` endpoint that is not loopback (the key or token
    would cross the network in cleartext); ``None`` when there is nothing to say."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "ws") or _is_loopback(parts.hostname or ""):
        return None
    return (
        f"azure_endpoint {_host(parts)} is http://: the key or token goes over the network in "
        "cleartext; use https://"
    )


def warn_cleartext_once(base_url: str) -> None:
    """Warn once about an ``http://`` endpoint off loopback (see :func:`cleartext_warning`)."""
    warn_once(cleartext_warning(base_url))


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# warnings already given (once per process)
_warned: set[str] = set()


def warn_once(message: str | None) -> None:
    """Log ``message`` as a warning the first time this process sees it."""
    if message and message not in _warned:
        _warned.add(message)
        logger.warning(message)


# -------------------------------------------------------------------------------- handshake


def _shown(url: str) -> str:
    """``url`` as errors show it: host (no user or password) and path, and only the query
    parameters in ``_SHOWN_QUERY`` (no credentials, even a gateway's)."""
    parts = urlsplit(url.strip())
    query = [(k, v) for k, v in parse_qsl(parts.query) if k in _SHOWN_QUERY]
    shown = f"{_host(parts)}{parts.path}"
    return f"{shown}?{urlencode(query)}" if query else shown


def _host(parts: SplitResult) -> str:
    """``hostname[:port]`` of a URL: never its user or password."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


def _status_text(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Args:
        value: The header's value, if any.
        now: The current time (epoch seconds) an HTTP date is measured from; default: now.

    Returns:
        The seconds, at least 0 and at most ``MAX_RETRY_AFTER``; ``None`` when absent or
        unreadable (``nan``, ``inf`` included).
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def handshake_error(
    status: int, url: str, headers: Mapping[str, str] | None = None
) -> RealtimeHandshakeError:
    """The error of a handshake the service answered with an HTTP error status.

    Args:
        status: The HTTP status of the answer.
        url: The websocket URL (shown without credentials).
        headers: The answer's headers (``Retry-After`` is read).

    Returns:
        A fatal error saying what to check (400, 401, 403, 404, other 4xx), or a retryable one
        (408, 429, 5xx) carrying the ``Retry-After`` seconds.
    """
    where = f"{_status_text(status)} from {_shown(url)}"
    retry_after = parse_retry_after((headers or {}).get("Retry-After"))
    if status in _CHECK:
        message = f"realtime connection refused: {where}; {_CHECK[status]}"
    elif _retryable(status):
        wait = f" (Retry-After {retry_after:g} s)" if retry_after is not None else ""
        message = f"realtime connection failed: {where}{wait}; the service is busy or failing"
    else:
        message = f"realtime connection refused: {where}; check the endpoint ({_ENDPOINT_FORM})"
    return RealtimeHandshakeError(message, status_code=status, retry_after=retry_after)


def connection_error(error: BaseException, url: str, timeout: float) -> APIConnectionError:
    """The error of a handshake that got no HTTP answer.

    Args:
        error: What the attempt raised (a timeout, a connector error, another client error).
        url: The websocket URL (only its host is shown).
        timeout: The connect timeout, for the message.

    Returns:
        A retryable error naming the host and the cause (refused, DNS, timeout).
    """
    host = _host(urlsplit(url))
    if isinstance(error, asyncio.TimeoutError):
        cause = f"no answer within {timeout:g} s (timeout)"
    elif isinstance(error, aiohttp.ClientConnectorError):
        os_error = error.os_error
        if isinstance(os_error, socket.gaierror):
            cause = f"host name not resolved (DNS: {os_error.strerror})"
        elif isinstance(os_error, ConnectionRefusedError):
            cause = "connection refused"
        else:
            cause = os_error.strerror or str(os_error) or type(os_error).__name__
    else:
        cause = f"{type(error).__name__}: {error}"
    return APIConnectionError(
        f"realtime connection failed: cannot reach {host} ({cause}); check the endpoint "
        "and the network",
        retryable=True,
    )


def retry_delay(error: APIError, default: float) -> float:
    """How long to wait before the next connection attempt.

    Args:
        error: The failed attempt's error (a ``RealtimeHandshakeError`` may carry the
            service's ``Retry-After``).
        default: The connect options' backoff for this attempt.

    Returns:
        The seconds: the service's ``Retry-After`` if longer than ``default``, else ``default``.
    """
    retry_after = getattr(error, "retry_after", None)
    return default if retry_after is None else max(retry_after, default)


@dataclass(frozen=True)
class RetryDecision:
    """What a session does after a failed connection attempt (see :func:`retry_decision`).

    Attributes:
        failure: Give up: the session's fatal error; ``None``: retry.
        delay: Retry after these seconds.
        warning: Retry: what to log.
    """

    failure: APIError | None
    delay: float = 0.0
    warning: str = ""

    async def wait(self, closing: asyncio.Event) -> None:
        """Wait ``delay`` seconds, or less when ``closing`` is set (the session closes)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(closing.wait(), self.delay)


def retry_decision(error: APIError, attempt: int, options: APIConnectOptions) -> RetryDecision:
    """Whether a session retries its connection after ``error``, and when.

    Args:
        error: The failed attempt's error.
        attempt: How many retries came before this attempt (0: the first attempt failed).
        options: The session's connect options (``max_retry``, the backoff).

    Returns:
        Give up with ``error`` when it is not retryable, or with an error saying how many
        attempts failed once the retries are used up; else retry after the backoff (or the
        service's longer ``Retry-After``).
    """
    if not error.retryable:
        return RetryDecision(failure=error)
    if attempt >= options.max_retry:
        if attempt == 0:
            return RetryDecision(failure=error)
        return RetryDecision(
            failure=APIConnectionError(
                f"OpenAI Realtime API connection failed after {attempt + 1} attempts: {error}",
                retryable=False,
            )
        )
    delay = retry_delay(error, options._interval_for_retry(attempt))
    return RetryDecision(
        failure=None,
        delay=delay,
        warning=f"OpenAI Realtime API connection failed, retrying in {delay}s: {error}",
    )


async def connect(
    http: aiohttp.ClientSession,
    url: str,
    opts: SessionOptions,
    headers: Mapping[str, str],
    closing: asyncio.Event,
) -> aiohttp.ClientWebSocketResponse | None:
    """A session's websocket at ``url`` (see :func:`open_websocket`), unless it closes first.

    Args:
        http: The model's HTTP session.
        url: The websocket URL.
        opts: The session's options: its credentials and connect timeout.
        headers: The handshake's headers besides authentication.
        closing: Set when the session closes: the attempt (a token provider's call, the
            handshake) is abandoned and no websocket is left open.

    Returns:
        The websocket; ``None`` when the session closed first.

    Raises:
        RealtimeHandshakeError: The service refused the handshake (fatal or retryable).
        APIConnectionError: The host is unreachable, the token provider failed (retryable),
            or the handshake failed in a way no retry fixes.
    """
    if closing.is_set():
        return None
    attempt = asyncio.ensure_future(
        open_websocket(
            http, url, Credentials.of(opts), headers=headers, timeout=opts.conn_options.timeout
        )
    )
    closed = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait((attempt, closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
        if not attempt.done():
            attempt.cancel()
    if not closing.is_set():
        return attempt.result()
    # the session closed while connecting: nothing opened now may outlive it
    await asyncio.wait((attempt,))
    if not attempt.cancelled() and attempt.exception() is None:
        await attempt.result().close()
    return None


async def open_websocket(
    http: aiohttp.ClientSession,
    url: str,
    credentials: Credentials,
    *,
    headers: Mapping[str, str],
    timeout: float,
) -> aiohttp.ClientWebSocketResponse:
    """Open the realtime websocket at ``url``, authenticated by ``credentials``.

    The token provider and the handshake each have ``timeout`` seconds. A 401 with a token
    provider asks it again and retries once when the token changed (one that rotated since it
    was cached).

    Raises:
        RealtimeHandshakeError: The service refused the handshake (fatal or retryable).
        APIConnectionError: The host is unreachable or the token provider failed (retryable),
            or the handshake raised something else (fatal, with its cause).
    """
    token = await credentials.token(timeout)
    try:
        return await _handshake(http, url, {**headers, **credentials.headers(token)}, timeout)
    except RealtimeHandshakeError as e:
        if e.status_code != 401 or credentials.token_provider is None:
            raise
        fresh = await credentials.token(timeout)
        if fresh == token:
            raise
    # the token rotated since the provider handed it out: once more with the new one
    return await _handshake(http, url, {**headers, **credentials.headers(fresh)}, timeout)


async def _handshake(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], timeout: float
) -> aiohttp.ClientWebSocketResponse:
    try:
        return await asyncio.wait_for(http.ws_connect(url=url, headers=headers), timeout)
    except aiohttp.WSServerHandshakeError as e:
        raise handshake_error(e.status, url, e.headers) from None
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        raise connection_error(e, url, timeout) from None
    except Exception as e:
        # not the network nor the service (a header aiohttp refuses, ...): no retry fixes it
        raise APIConnectionError(
            f"realtime connection failed: the handshake with {_host(urlsplit(url))} raised "
            f"{type(e).__name__}: {e}",
            retryable=False,
        ) from e
