"""Fetch the pinned upstream sdist with the user's index settings, without pip (stdlib only).

Why not ``pip download``: it prepares the metadata of every sdist it downloads, i.e. runs the
upstream sdist's own build backend in a nested isolated environment. That needs hatchling from
the index a second time and inherits the outer frontend's hook variables
(``_PYPROJECT_HOOKS_BACKEND_PATH`` and friends), which broke builds under pip >= 26.3 and
``python -m build``; pip has no option to skip that step for sdists. The pin is a file hash, so
resolving is trivial: read the project page of each configured simple index (PEP 691 JSON or
PEP 503 HTML) or find-links location, download the ``.tar.gz`` of the pinned version and check
its sha256. A backend sees no CLI flags of the frontend, only the environment and config files,
so :func:`discover_sources` reads those of pip and uv (see the README's "Install" section).

A verified download is cached under the user's cache directory, keyed by its sha256
(:func:`cache_root`), and verified again before each reuse.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import hashlib
import html.parser
import json
import netrc
import os
import re
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYPI_SIMPLE = "https://pypi.org/simple/"
SDIST_ENV = "LK_OPENAI_FORK_SDIST"
CACHE_DIR_ENV = "LK_OPENAI_FORK_CACHE_DIR"
NO_CACHE_ENV = "LK_OPENAI_FORK_NO_CACHE"
CACHE_APP = "livekit-plugins-openai-fork"
_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
_TRUE = {"1", "true", "yes", "on", "y"}

Env = Mapping[str, str]


class FetchError(Exception):
    """The pinned sdist could not be obtained; ``str(err)`` is one line."""


def truthy(value: str | None) -> bool:
    """pip's and uv's reading of a boolean environment variable or config value."""
    return value is not None and value.strip().lower() in _TRUE


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Sources:
    """Where to look for the sdist, and how to talk to those places."""

    indexes: list[str] = field(default_factory=list)
    find_links: list[str] = field(default_factory=list)
    no_index: bool = False
    offline: bool = False
    trusted_hosts: set[str] = field(default_factory=set)
    cert: str | None = None
    client_cert: str | None = None
    proxy: str | None = None
    timeout: float = 15.0
    default_index: str | None = None

    def locations(self) -> list[str]:
        """Everything to try, in order: find-links first (usually local), then the indexes."""
        out = list(self.find_links)
        if not self.no_index:
            out += self.indexes
        if self.offline:
            out = [loc for loc in out if not _is_remote(loc)]
        return list(dict.fromkeys(out))


def _is_remote(location: str) -> bool:
    return urllib.parse.urlsplit(location).scheme in ("http", "https")


def load_toml(text: str) -> dict[str, Any]:
    """Parse TOML (``tomllib``; on 3.10 ``tomli``, a pinned build requirement there).

    Raises:
        ValueError: the text is not valid TOML.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib.loads(text)


# --------------------------------------------------------------------------------- pip settings


def pip_config_files(env: Env) -> list[Path]:
    """pip's config files in loading order (later ones override), as ``pip config debug``."""
    conf = "pip.ini" if sys.platform == "win32" else "pip.conf"
    env_file = env.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    home = Path(env.get("HOME") or Path.home())
    files: list[Path] = []
    if sys.platform == "win32":
        program_data = env.get("PROGRAMDATA", r"C:\ProgramData")
        files.append(Path(program_data) / "pip" / conf)
        user = [home / "pip" / conf, Path(env.get("APPDATA", home)) / "pip" / conf]
    elif sys.platform == "darwin":
        files.append(Path("/Library/Application Support/pip") / conf)
        user = [home / ".pip" / conf, home / "Library/Application Support/pip" / conf]
    else:
        xdg_dirs = env.get("XDG_CONFIG_DIRS") or "/etc/xdg"
        files += [Path(d) / "pip" / conf for d in xdg_dirs.split(os.pathsep) if d]
        files.append(Path("/etc") / conf)
        xdg_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        user = [home / ".pip" / conf, xdg_home / "pip" / conf]
    if not (env_file and Path(env_file).exists()):
        files += user
    files.append(Path(sys.prefix) / conf)  # site: the frontend's environment
    if env_file:
        files.append(Path(env_file))
    return files


def pip_settings(env: Env) -> dict[str, str]:
    """pip's effective download options: config files ([global], then [install]), then PIP_*."""
    values: dict[str, str] = {}
    for path in pip_config_files(env):
        if not path.is_file():
            continue
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                for key, value in parser.items(section):
                    values[key.replace("_", "-")] = value
    keys = (
        "index-url", "extra-index-url", "find-links", "no-index", "trusted-host", "cert",
        "client-cert", "proxy", "timeout", "default-timeout",
    )  # fmt: skip
    for key in keys:
        var = "PIP_" + key.upper().replace("-", "_")
        if env.get(var):
            values[key] = env[var]
    return values


# ---------------------------------------------------------------------------------- uv settings


def _uv_files(env: Env) -> list[tuple[Path, bool]]:
    """uv config files, highest precedence first: (path, is_pyproject)."""
    if truthy(env.get("UV_NO_CONFIG")):
        return []
    if env.get("UV_CONFIG_FILE"):
        return [(Path(env["UV_CONFIG_FILE"]), False)]
    files: list[tuple[Path, bool]] = []
    # project level: uv reads it from the directory it runs in; a backend runs in the source
    # tree, but shells export the caller's directory as PWD
    start = env.get("PWD")
    if start:
        for d in [Path(start), *Path(start).parents]:
            if (d / "uv.toml").is_file():
                files.append((d / "uv.toml", False))
                break
            py = d / "pyproject.toml"
            if py.is_file() and "[tool.uv" in py.read_text(encoding="utf-8", errors="replace"):
                files.append((py, True))
                break
    home = Path(env.get("HOME") or Path.home())
    if sys.platform == "win32":
        files.append((Path(env.get("APPDATA", home)) / "uv" / "uv.toml", False))
        files.append((Path(env.get("PROGRAMDATA", r"C:\ProgramData")) / "uv" / "uv.toml", False))
    else:
        xdg_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        files.append((xdg_home / "uv" / "uv.toml", False))
        xdg_dirs = env.get("XDG_CONFIG_DIRS") or "/etc/xdg"
        files += [(Path(d) / "uv" / "uv.toml", False) for d in xdg_dirs.split(os.pathsep) if d]
        files.append((Path("/etc/uv/uv.toml"), False))
    return files


def _uv_tables(env: Env) -> list[dict[str, object]]:
    tables: list[dict[str, object]] = []
    for path, is_pyproject in _uv_files(env):
        if not path.is_file():
            continue
        try:
            data = load_toml(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
            continue
        if is_pyproject:
            tool = data.get("tool")
            data = tool.get("uv", {}) if isinstance(tool, dict) else {}
            if not isinstance(data, dict):
                continue
        tables.append(data)
    return tables


def _str_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _uv_index_entry(entry: str) -> str:
    # UV_INDEX entries may be named: name=https://...
    name, sep, url = entry.partition("=")
    return url if sep and "://" not in name and re.fullmatch(r"[\w.-]+", name) else entry


def uv_settings(env: Env) -> Sources:
    """uv's indexes, find-links and offline flags: ``UV_*`` over project, user, system config."""
    src = Sources()
    default: str | None = None
    first: list[str] = []  # [[index]] / UV_INDEX: tried before the extra and default indexes
    extra: list[str] = []
    tables = _uv_tables(env)
    for table in tables:  # highest precedence first; lists concatenate, scalars: first wins
        entries = table.get("index")
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
                continue
            if entry.get("explicit") is True:
                continue
            if entry.get("format") == "flat":
                src.find_links.append(entry["url"])
            elif entry.get("default") is True:
                default = default or entry["url"]
            else:
                first.append(entry["url"])
        if isinstance(table.get("index-url"), str):
            default = default or str(table["index-url"])
        extra += _str_list(table.get("extra-index-url"))
        src.find_links += _str_list(table.get("find-links"))
        src.trusted_hosts.update(_str_list(table.get("allow-insecure-host")))
        src.no_index = src.no_index or table.get("no-index") is True
        src.offline = src.offline or table.get("offline") is True
    if env.get("UV_INDEX"):
        first = [_uv_index_entry(e) for e in env["UV_INDEX"].split()] + first
    if env.get("UV_EXTRA_INDEX_URL"):
        extra = env["UV_EXTRA_INDEX_URL"].split()
    default = env.get("UV_DEFAULT_INDEX") or env.get("UV_INDEX_URL") or default
    if env.get("UV_FIND_LINKS"):
        src.find_links = [x for x in re.split(r"[,\s]+", env["UV_FIND_LINKS"]) if x]
    if env.get("UV_INSECURE_HOST"):
        src.trusted_hosts.update(env["UV_INSECURE_HOST"].split())
    src.no_index = src.no_index or truthy(env.get("UV_NO_INDEX"))
    src.offline = src.offline or truthy(env.get("UV_OFFLINE"))
    src.indexes = first + extra
    src.default_index = default
    return src


# ----------------------------------------------------------------------------------- combined


def discover_sources(env: Env | None = None) -> Sources:
    """The union of pip's and uv's settings visible to a build backend.

    Every configured index and find-links location is a candidate (the sha256 pin makes the
    choice irrelevant for integrity); PyPI is used only when neither tool names a default index.
    Turning indexes off in either tool (no-index, offline) wins.
    """
    env = os.environ if env is None else env
    pip = pip_settings(env)
    uv = uv_settings(env)
    src = Sources()
    src.find_links = [*pip.get("find-links", "").split(), *uv.find_links]
    src.indexes = [*uv.indexes, *pip.get("extra-index-url", "").split()]
    defaults = [d for d in (uv.default_index, pip.get("index-url")) if d]
    src.indexes += defaults or [PYPI_SIMPLE]
    src.no_index = truthy(pip.get("no-index")) or uv.no_index
    src.offline = uv.offline
    src.trusted_hosts = set(pip.get("trusted-host", "").split()) | uv.trusted_hosts
    src.cert = (
        pip.get("cert")
        or env.get("REQUESTS_CA_BUNDLE")
        or env.get("CURL_CA_BUNDLE")
        or env.get("SSL_CERT_FILE")
        or None
    )
    src.client_cert = pip.get("client-cert") or None
    src.proxy = pip.get("proxy") or None
    timeout = pip.get("timeout") or pip.get("default-timeout") or env.get("UV_HTTP_TIMEOUT")
    with contextlib.suppress(ValueError, TypeError):
        src.timeout = float(timeout) if timeout else src.timeout
    return src


# --------------------------------------------------------------------------------------- I/O


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append((href, dict(attrs).get("data-yanked")))


@dataclass(frozen=True)
class Candidate:
    """A file offered by an index or find-links location."""

    filename: str
    url: str
    sha256: str | None


def parse_listing(body: bytes, content_type: str, base_url: str) -> list[Candidate]:
    """Files of a PEP 691 JSON or PEP 503 HTML project page (or a find-links HTML page)."""
    out: list[Candidate] = []
    if "json" in content_type:
        data = json.loads(body.decode("utf-8"))
        for f in data.get("files", []):
            if not isinstance(f, dict) or not isinstance(f.get("url"), str):
                continue
            hashes = f.get("hashes")
            digest = hashes.get("sha256") if isinstance(hashes, dict) else None
            url = urllib.parse.urljoin(base_url, f["url"])
            name = f.get("filename") or urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
            out.append(Candidate(str(name), url, str(digest) if digest else None))
        return out
    parser = _Links()
    parser.feed(body.decode("utf-8", errors="replace"))
    for href, _yanked in parser.links:
        url = urllib.parse.urljoin(base_url, href)
        path, _, frag = url.partition("#")
        digest = frag[len("sha256=") :] if frag.startswith("sha256=") else None
        name = urllib.parse.unquote(urllib.parse.urlsplit(path).path.rsplit("/", 1)[-1])
        out.append(Candidate(name, path, digest))
    return out


def is_pinned_sdist(filename: str, name: str, version: str) -> bool:
    """Whether ``filename`` is the ``.tar.gz`` sdist of ``name==version``."""
    if not filename.endswith(".tar.gz"):
        return False
    stem = filename[: -len(".tar.gz")]
    dist, sep, ver = stem.rpartition("-")
    return bool(sep) and normalize(dist) == normalize(name) and ver == version


class Http:
    """urllib with pip's TLS, proxy, credential and timeout settings."""

    def __init__(self, src: Sources) -> None:
        self.src = src
        self._auth: dict[str, str] = {}

    def _context(self, host: str) -> ssl.SSLContext:
        if host in self.src.trusted_hosts:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.src.cert and Path(self.src.cert).is_dir():
            ctx = ssl.create_default_context(capath=self.src.cert)
        elif self.src.cert:
            ctx = ssl.create_default_context(cafile=self.src.cert)
        else:
            ctx = ssl.create_default_context()
        if self.src.client_cert:
            ctx.load_cert_chain(self.src.client_cert)
        return ctx

    def _request(self, url: str, accept: str | None) -> urllib.request.Request:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        headers = {"User-Agent": "lk-fork-backend (stdlib urllib)"}
        if accept:
            headers["Accept"] = accept
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            pw = urllib.parse.unquote(parts.password or "")
            self._auth[host] = base64.b64encode(f"{user}:{pw}".encode()).decode()
            netloc = host + (f":{parts.port}" if parts.port else "")
            url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        elif host not in self._auth:
            with contextlib.suppress(OSError, netrc.NetrcParseError):
                found = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
                if found:
                    cred = f"{found[0]}:{found[2] or ''}"
                    self._auth[host] = base64.b64encode(cred.encode()).decode()
        if host in self._auth:
            headers["Authorization"] = "Basic " + self._auth[host]
        return urllib.request.Request(url, headers=headers)

    def get(self, url: str, accept: str | None = None) -> tuple[bytes, str, str]:
        """GET ``url``; returns (body, content type, final URL). Retries transient failures."""
        host = urllib.parse.urlsplit(url).hostname or ""
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.HTTPSHandler(context=self._context(host))
        ]
        if self.src.proxy:
            handlers.append(
                urllib.request.ProxyHandler({"http": self.src.proxy, "https": self.src.proxy})
            )
        opener = urllib.request.build_opener(*handlers)
        req = self._request(url, accept)
        for attempt in range(3):
            try:
                with opener.open(req, timeout=self.src.timeout) as resp:
                    return resp.read(), resp.headers.get("Content-Type", ""), resp.geturl()
            except urllib.error.HTTPError as e:
                if e.code < 500 or attempt == 2:
                    raise
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == 2 or isinstance(getattr(e, "reason", None), ConnectionRefusedError):
                    raise
            time.sleep(0.3 * (attempt + 1))
        raise AssertionError("unreachable")


def _local_path(location: str) -> Path | None:
    parts = urllib.parse.urlsplit(location)
    if parts.scheme == "file":
        return Path(urllib.request.url2pathname(parts.path))
    if parts.scheme == "" or (len(parts.scheme) == 1 and sys.platform == "win32"):
        return Path(location).expanduser()
    return None


def list_location(http: Http, location: str, project: str, is_index: bool) -> list[Candidate]:
    """Candidates offered by one index (its project page) or one find-links location.

    Raises:
        LookupError: the location does not list the project (404, missing directory).
        OSError, ValueError: the location could not be read.
    """
    local = _local_path(location)
    if local is not None:
        target = local / normalize(project) if is_index else local
        if target.is_dir() and (not is_index and not (target / "index.html").is_file()):
            return [
                Candidate(p.name, p.resolve().as_uri(), None)
                for p in sorted(target.iterdir())
                if p.is_file()
            ]
        page = target / "index.html" if target.is_dir() else target
        if not page.is_file():
            raise LookupError("not listed")
        if page.name.endswith(".tar.gz"):  # find-links may name the archive itself
            return [Candidate(page.name, page.resolve().as_uri(), None)]
        return parse_listing(page.read_bytes(), "text/html", page.resolve().as_uri())
    url = location
    if is_index:
        url = location.rstrip("/") + "/" + normalize(project) + "/"
    try:
        body, ctype, final = http.get(url, _ACCEPT if is_index else None)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise LookupError("not listed") from None
        raise OSError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise OSError(str(e.reason)) from None
    if not is_index and url.endswith(".tar.gz"):
        return [Candidate(url.rsplit("/", 1)[-1], url, None)]
    return parse_listing(body, ctype, final)


def _download(http: Http, url: str, dest: Path) -> None:
    local = _local_path(url)
    if local is not None:
        dest.write_bytes(local.read_bytes())
        return
    try:
        body, _, _ = http.get(url)
    except urllib.error.HTTPError as e:
        raise OSError(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise OSError(str(e.reason)) from None
    dest.write_bytes(body)


def _redact(location: str) -> str:
    parts = urllib.parse.urlsplit(location)
    if parts.password is None and parts.username is None:
        return location
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + (parts.hostname or "")))


# -------------------------------------------------------------------------------------- cache


def cache_root(env: Env | None = None) -> Path | None:
    """The sdist cache directory, or ``None`` when ``LK_OPENAI_FORK_NO_CACHE`` is set."""
    env = os.environ if env is None else env
    if truthy(env.get(NO_CACHE_ENV)):
        return None
    if env.get(CACHE_DIR_ENV):
        return Path(env[CACHE_DIR_ENV]).expanduser()
    home = Path(env.get("HOME") or Path.home())
    if sys.platform == "win32":
        return Path(env.get("LOCALAPPDATA") or home / "AppData/Local") / CACHE_APP / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / CACHE_APP
    return Path(env.get("XDG_CACHE_HOME") or home / ".cache") / CACHE_APP


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def _note(message: str) -> None:
    print(f"lk-fork-backend: {message}", file=sys.stderr, flush=True)


def cached_sdist(root: Path, sha256: str) -> Path | None:
    """The cached file with this sha256, verified; a corrupt one is deleted."""
    folder = root / "sdist" / sha256
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.tar.gz")):
        if sha256_of(path) == sha256:
            return path
        _note(f"discarding corrupt cached file {path} (sha256 mismatch)")
        with contextlib.suppress(OSError):
            path.unlink()
    return None


def store_in_cache(root: Path, sha256: str, src: Path) -> None:
    """Copy a verified sdist into the cache (atomically; failures are only reported)."""
    folder = root / "sdist" / sha256
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
        with os.fdopen(fd, "wb") as out:
            out.write(src.read_bytes())
        os.replace(tmp, folder / src.name)
    except OSError as e:
        _note(f"cannot cache the sdist in {folder}: {e}")


# -------------------------------------------------------------------------------------- fetch


def fetch(
    name: str,
    version: str,
    sha256: str,
    dest: Path,
    env: Env | None = None,
    log: Callable[[str], None] = _note,
) -> Path:
    """Download the sdist ``name==version`` with this sha256 into ``dest`` (cache first).

    Raises:
        FetchError: nothing found with that hash; the message lists what each location said and
            names ``LK_OPENAI_FORK_SDIST``. A file with another hash gives a "sha256 mismatch".
    """
    env = os.environ if env is None else env
    root = cache_root(env)
    if root is not None:
        hit = cached_sdist(root, sha256)
        if hit is not None:
            log(f"using cached {hit}")
            target = dest / hit.name
            target.write_bytes(hit.read_bytes())
            if sha256_of(target) == sha256:
                return target
    src = discover_sources(env)
    http = Http(src)
    reasons: list[str] = []
    mismatches: list[str] = []
    find_links = set(src.find_links)
    for location in src.locations():
        where = _redact(location)
        try:
            files = list_location(http, location, name, is_index=location not in find_links)
        except LookupError as e:
            reasons.append(f"{where}: {e}")
            continue
        except (OSError, ValueError) as e:
            reasons.append(f"{where}: {e}")
            continue
        matching = [c for c in files if is_pinned_sdist(c.filename, name, version)]
        if not matching:
            reasons.append(f"{where}: no {name} {version} sdist")
            continue
        for cand in matching:
            if cand.sha256 is not None and cand.sha256.lower() != sha256:
                mismatches.append(f"{_redact(cand.url)} has sha256 {cand.sha256.lower()}")
                continue
            target = dest / cand.filename
            try:
                _download(http, cand.url, target)
            except OSError as e:
                reasons.append(f"{_redact(cand.url)}: {e}")
                continue
            got = sha256_of(target)
            if got != sha256:
                mismatches.append(f"{_redact(cand.url)} has sha256 {got}")
                target.unlink()
                continue
            log(f"downloaded {_redact(cand.url)}")
            if root is not None:
                store_in_cache(root, sha256, target)
            return target
    if mismatches:
        raise FetchError(
            f"sha256 mismatch for {name}=={version} sdist: expected {sha256}, got "
            + "; ".join(mismatches)
        )
    if not src.locations():
        reasons.append("no index or find-links location is enabled (no-index/offline)")
    raise FetchError(
        f"could not download {name}=={version} (sdist sha256 {sha256}): "
        + "; ".join(reasons)
        + f"; to build offline, set {SDIST_ENV}=/path/to/{name.replace('-', '_')}-{version}.tar.gz"
    )
