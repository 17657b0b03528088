"""Post-copy task: make the new project a git repository with a `main` branch, and lock its
dependencies (`uv lock`), so that the first commit already holds the `uv.lock` every make
target and CI job installs from.

A convenience only: `copier copy --skip-tasks` (which needs no `--trust`) gives the same
files; run `git init -b main` and `make lock` yourself then. Without uv, or without access to
the package index, the copy still succeeds and says how to lock later.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def init_repository() -> None:
    git = shutil.which("git")
    if git is None:
        print("git not found: skipped `git init` (run it yourself)")
        return
    inside = subprocess.run([git, "rev-parse", "--is-inside-work-tree"], capture_output=True, check=False)
    if inside.returncode == 0:
        return
    subprocess.run([git, "init", "--quiet", "--initial-branch=main", str(Path.cwd())], check=True)
    print("initialised a git repository (branch main)")


def lock() -> None:
    # On PATH, or installed beside copier (as `make demo` and `pip install copier uv` do).
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        print("uv not found: no uv.lock yet (install uv, then `make lock`)")
        return
    locked = subprocess.run([uv, "lock", "--quiet"], capture_output=True, text=True, check=False)
    if locked.returncode != 0:
        reason = (locked.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"`uv lock` failed ({reason}): no uv.lock yet (run `make lock` when the index is reachable)")
        return
    print("locked the dependencies in uv.lock")


def main() -> int:
    init_repository()
    lock()
    return 0


if __name__ == "__main__":
    sys.exit(main())
