"""How a realtime session opens its websocket, shared by both realtime sessions.

The GA session (``realtime_model.py``) and the preview one (``realtime_model_beta.py``) open
their connection through :func:`open_websocket`: it takes the credentials
(:class:`Credentials`: an API key, a static Entra token, or a token provider called for every
websocket) and turns a failed handshake into one error a user can act on
(:class:`RealtimeHandshakeError` for a refusal, an ``APIConnectionError`` for an unreachable
host), retryable or not. ``with_azure`` checks its arguments with :func:`resolve_credentials`,
:func:`azure_base_url` and :func:`azure_protocol`. Everything but :func:`open_websocket` and
:meth:`Credentials.token` is pure.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any, Union
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp

from livekit.agents import APIConnectionError, APIError, APIStatusError

__all__ = [
    "AzureADTokenProvider",
    "Credentials",
    "ProtocolChoice",
    "RealtimeHandshakeError",
    "azure_base_url",
    "azure_protocol",
    "connection_error",
    "handshake_error",
    "open_websocket",
    "resolve_credentials",
    "retry_delay",
]

# the openai SDK's AsyncAzureADTokenProvider: a callable returning a token or an awaitable of one
AzureADTokenProvider = Callable[[], Union[str, Awaitable[str]]]  # noqa: UP007 - a runtime alias

# the longest Retry-After honoured: aclose() waits for the sleep of a retrying connection
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

    async def token(self) -> str | None:
        """The bearer token for a new websocket: the provider's, else the static one.

        A sync provider runs in a worker thread (azure-identity's may block for seconds on a
        cache miss), an async one is awaited: neither holds the event loop.

        Raises:
            APIConnectionError: The provider raised or returned no token (retryable).
        """
        provider = self.token_provider
        if provider is None:
            return self.entra_token
        name = provider_name(provider)
        try:
            if _is_async(provider):
                result: Any = await provider()  # type: ignore[misc]
            else:
                result = await asyncio.to_thread(provider)
                if inspect.isawaitable(result):
                    result = await result
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
            is not callable, or no credential at all.
    """
    if azure_ad_token_provider is not None:
        given = [n for n, v in (("api_key", api_key), ("entra_token", entra_token)) if v]
        if given:
            raise ValueError(
                f"with_azure(): pass either azure_ad_token_provider or {' / '.join(given)}, "
                "not both"
            )
        if not callable(azure_ad_token_provider):
            raise ValueError(
                "with_azure(): azure_ad_token_provider must be a callable returning a token "
                f"(or an awaitable of one), not {_kind(azure_ad_token_provider)}"
            )
        return Credentials(token_provider=azure_ad_token_provider)
    api_key = api_key or env.get("AZURE_OPENAI_API_KEY")
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
    return f"a {type(value).__module__}.{type(value).__qualname__}".replace("builtins.", "")


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
    if parts.query or parts.fragment or azure_endpoint.rstrip().endswith("?"):
        raise ValueError(
            f"azure_endpoint {_shown(azure_endpoint)} has a query: pass the resource endpoint, "
            f"{_ENDPOINT_FORM} (no path or query); the protocol comes from api_version, the "
            "deployment from azure_deployment"
        )
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    if scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(
            f"azure_endpoint {_shown(azure_endpoint)} is not an https URL: pass the resource "
            f"endpoint, {_ENDPOINT_FORM} (no path or query)"
        )
    path = parts.path.rstrip("/")
    for suffix in _API_PATHS:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    return f"{scheme}://{parts.netloc}{path}/openai"


@dataclass(frozen=True)
class ProtocolChoice:
    """Which Azure realtime protocol ``with_azure`` uses, and why.

    Attributes:
        api_version: The preview protocol's api-version; ``None``: the GA protocol.
        why: The reason, for errors (``"... because ..."``).
        from_env: Whether ``OPENAI_API_VERSION`` chose it (no ``api_version`` argument).
    """

    api_version: str | None
    why: str
    from_env: bool

    @property
    def warning(self) -> str | None:
        """What to warn about once: the environment selected the deprecated preview protocol."""
        if not self.from_env:
            return None
        return (
            f"with_azure(): OPENAI_API_VERSION={self.api_version} in the environment selected "
            "Azure's deprecated preview realtime protocol (RealtimeModelBeta); for the GA "
            "protocol (/openai/v1/realtime) unset OPENAI_API_VERSION and pass no api_version"
        )


def azure_protocol(api_version: str | None, env: Mapping[str, str]) -> ProtocolChoice:
    """The protocol of a ``with_azure`` call: ``api_version``, else ``OPENAI_API_VERSION``."""
    if api_version:
        return ProtocolChoice(
            api_version,
            f"the preview (beta) realtime protocol, because api_version `{api_version}` was given",
            from_env=False,
        )
    from_env = env.get("OPENAI_API_VERSION")
    if from_env:
        return ProtocolChoice(
            from_env,
            "the preview (beta) realtime protocol, because the OPENAI_API_VERSION environment "
            f"variable is `{from_env}` (no api_version argument; unset it for the GA protocol)",
            from_env=True,
        )
    return ProtocolChoice(
        None,
        "the GA realtime protocol, because no api_version was given (neither the argument "
        "nor OPENAI_API_VERSION)",
        from_env=False,
    )


# -------------------------------------------------------------------------------- handshake


def _shown(url: str) -> str:
    """``url`` as errors show it: host and path, and only the query parameters in
    ``_SHOWN_QUERY`` (no credentials, even a gateway's)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k in _SHOWN_QUERY]
    shown = f"{parts.netloc}{parts.path}"
    return f"{shown}?{urlencode(query)}" if query else shown


def _status_text(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), capped at
    ``MAX_RETRY_AFTER``; ``None`` when absent or unreadable."""
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
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def handshake_error(
    status: int, url: str, headers: Mapping[str, str] | None = None
) -> RealtimeHandshakeError:
    """The error of a handshake the service answered with ``status``."""
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
    """The (retryable) error of a handshake that got no HTTP answer: refused, DNS, timeout."""
    host = urlsplit(url).netloc
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
    """How long to wait before the next attempt: the service's ``Retry-After``, else
    ``default`` (the connect options' backoff)."""
    retry_after = getattr(error, "retry_after", None)
    return default if retry_after is None else max(retry_after, default)


async def open_websocket(
    http: aiohttp.ClientSession,
    url: str,
    credentials: Credentials,
    *,
    headers: Mapping[str, str],
    timeout: float,
) -> aiohttp.ClientWebSocketResponse:
    """Open the realtime websocket at ``url``, authenticated by ``credentials``.

    A 401 with a token provider asks it again and retries once when the token changed (one
    that rotated since it was cached).

    Raises:
        RealtimeHandshakeError: The service refused the handshake (fatal or retryable).
        APIConnectionError: The host is unreachable or the token provider failed (retryable).
    """
    token = await credentials.token()
    try:
        return await _handshake(http, url, {**headers, **credentials.headers(token)}, timeout)
    except RealtimeHandshakeError as e:
        if e.status_code != 401 or credentials.token_provider is None:
            raise
        fresh = await credentials.token()
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
