#!/usr/bin/env python3
"""Zero-dependency entry point: needs only Python 3.10+ (stdlib) on a fresh machine.

    python3 dev.py test [NOX_ARGS...]   build the wheel, run the test suite against it (floor and
                                        latest dependency sets) and check the patch series
    python3 dev.py demo [ARGS...]       run examples/agent_switch_demo.py against the built wheel
                                        (the fake server, both protocols, unless Azure is set)
    python3 dev.py live [ARGS...]       opt-in live check on Azure (tools/live_check.py); without
                                        AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_API_KEY and
                                        AZURE_OPENAI_DEPLOYMENT one line says so (exit 0)
    python3 dev.py series OUTDIR        write the complete backport series (patches/series plus
                                        one patch per module of src/) for `git am` into OUTDIR
    python3 dev.py SESSION [SESSION...] [-- POSARGS]   run any nox session(s), e.g. `lint`

The first run creates ``.bootstrap/`` (a stdlib venv) holding pinned nox and uv; later runs reuse
it. Everything else (the wheel, test environments) is managed by ``noxfile.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BOOTSTRAP = ROOT / ".bootstrap"
TOOLS = ["nox==2026.10.20", "uv==0.13.9"]
TEST_SESSIONS = ["tests", "patches"]

USAGE = __doc__ or ""


def _bin(name: str) -> Path:
    sub = "Scripts" if os.name == "nt" else "bin"
    suffix = ".exe" if os.name == "nt" else ""
    return BOOTSTRAP / sub / f"{name}{suffix}"


def bootstrap() -> Path:
    """Create or refresh ``.bootstrap/`` with the pinned tools; return its python."""
    python = _bin("python")
    stamp = BOOTSTRAP / "tools.txt"
    wanted = "\n".join(TOOLS) + "\n"
    if python.exists() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    print(f"dev.py: bootstrapping {BOOTSTRAP} ({', '.join(TOOLS)})", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(BOOTSTRAP)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *TOOLS],
        check=True,
    )
    stamp.write_text(wanted)
    return python


def nox_command(argv: list[str]) -> list[str]:
    """Translate dev.py's arguments into a nox command line (without the interpreter)."""
    if not argv:
        raise SystemExit(USAGE)
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return ["--list"]  # and the sessions, exit 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "test":
        return ["-s", *TEST_SESSIONS, *rest]
    if cmd in ("demo", "live"):
        if rest[:1] == ["--"]:  # `dev.py demo -- ARGS` as for other sessions
            rest = rest[1:]
        return ["-s", cmd, "--", *rest]
    if cmd == "series":
        if rest[:1] == ["--"]:
            rest = rest[1:]
        # OUTDIR is relative to the caller's directory; nox runs from the repository
        return ["-s", cmd, "--", *(str(Path(a).resolve()) for a in rest)]
    sessions = []
    while rest and not rest[0].startswith("-"):
        sessions.append(rest.pop(0))
    return ["-s", cmd, *sessions, *rest]


def main(argv: list[str]) -> int:
    """Bootstrap, then hand over to nox; returns nox's exit code."""
    if sys.version_info < (3, 10):  # noqa: UP036 - dev.py may be started by an older python3
        print("dev.py: Python 3.10 or newer is required", file=sys.stderr)
        return 2
    args = nox_command(argv)
    python = bootstrap()
    env = dict(os.environ)
    # nox's uv backend and the build pipeline find the pinned uv here
    env["PATH"] = str(_bin("python").parent) + os.pathsep + env.get("PATH", "")
    full = [str(python), "-m", "nox", "--noxfile", str(ROOT / "noxfile.py"), *args]
    print("dev.py: " + " ".join(full[1:]), flush=True)
    return subprocess.run(full, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
