"""The Quix Streams peer's own venv (.venv-quix): created once, reused while its pins match.

quixstreams 3.28.1 needs confluent-kafka < 2.13, pydantic < 2.14 and pydantic-settings < 2.16;
qmsflow pins newer ones, so the peer (bench.quix_peer) cannot run in .venv. Its venv holds
quixstreams and the fastavro version qmsflow pins (the same decoder on both sides), and records
what it was made with in a marker file: a changed pin makes a new venv.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-quix"
#: the peer's version (issue 16 point 7); newer ones may change the state layout measured
QUIX_VERSION = "3.28.1"
#: written last by a successful creation: the requirements the venv was made with
_MARKER = "bench-requirements.txt"


def pinned_version(pyproject: str, package: str) -> str:
    """The `package==X` version pinned in pyproject's [project] dependencies.

    Raises ValueError when the package is not pinned with `==`.
    """
    dependencies = tomllib.loads(pyproject)["project"]["dependencies"]
    pattern = re.compile(rf"^{re.escape(package)}(\[[^\]]*\])?\s*==\s*([^\s;,]+)", re.IGNORECASE)
    for dependency in dependencies:
        match = pattern.match(dependency.strip())
        if match:
            return match[2]
    raise ValueError(f"pyproject.toml: expected {package}==<version> in dependencies, found none")


def requirements(pyproject: str) -> list[str]:
    """What the peer's venv installs: quixstreams and qmsflow's fastavro."""
    return [f"quixstreams=={QUIX_VERSION}", f"fastavro=={pinned_version(pyproject, 'fastavro')}"]


def _python() -> str | None:
    # the project's Python (Makefile's PYTHON); quixstreams 3.28.1 has wheels for it
    return shutil.which("python3.11")


def quix_python(echo: Callable[[str], None] = print, venv: Path = VENV) -> Path | str:
    """The peer venv's python, creating the venv first if needed; or why there is none.

    A venv whose marker lists other requirements, or that cannot import quixstreams, is
    rebuilt. A failed creation leaves no half-made venv behind.
    """
    wanted = "\n".join(requirements((ROOT / "pyproject.toml").read_text("utf-8"))) + "\n"
    python = venv / "bin" / "python"
    marker = venv / _MARKER
    if marker.exists() and marker.read_text("utf-8") == wanted and _imports(python):
        return python
    base = _python()
    if base is None:
        return "not measured: python3.11 not found to create .venv-quix"
    shutil.rmtree(venv, ignore_errors=True)
    echo(f"creating {venv.name} ({', '.join(wanted.split())}); once, then reused")
    try:
        _step(echo, [base, "-m", "venv", str(venv)])
        _step(echo, [str(python), "-m", "pip", "install", "--upgrade", "pip"], quiet=True)
        _step(echo, [str(python), "-m", "pip", "install", *wanted.split()])
    except (OSError, subprocess.SubprocessError, RuntimeError) as error:
        shutil.rmtree(venv, ignore_errors=True)
        return f"not measured: creating {venv.name} failed: {error}"
    if not _imports(python):
        shutil.rmtree(venv, ignore_errors=True)
        return f"not measured: {venv.name} was created but cannot import quixstreams"
    marker.write_text(wanted, "utf-8")
    return python


def _imports(python: Path) -> bool:
    if not python.exists():
        return False
    check = [str(python), "-c", "import quixstreams, fastavro"]
    return subprocess.run(check, capture_output=True, timeout=120).returncode == 0


def _step(echo: Callable[[str], None], command: list[str], quiet: bool = False) -> None:
    """Run a command, echoing its output lines (pip's progress) unless `quiet`."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    tail: list[str] = []
    for line in process.stdout:
        tail = [*tail[-19:], line.rstrip()]
        if not quiet:
            echo(f"    {line.rstrip()}")
    # no timeout here: pip gives up on a stalled index itself (its --timeout, 15 s a read)
    if process.wait() != 0:
        last = "; ".join(x for x in tail[-3:] if x)
        raise RuntimeError(f"`{' '.join(command[:4])} …` exited with {process.returncode}: {last}")
