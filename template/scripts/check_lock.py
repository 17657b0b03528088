"""Fail, in one line that names the fix, while uv.lock is missing or no longer matches
pyproject.toml.

Only ``make lock`` resolves uv.lock (and ``make install`` when there is none yet): no other
target re-resolves it behind your back, so the lock you commit is the one you reviewed.
``copier copy`` writes no lock, and ``copier update`` (a template release, or a changed answer
such as ``auth_mode``) can change the dependencies in pyproject.toml: every make target that
runs the project's tools checks this first, CI too.

    python3 scripts/check_lock.py        # exit 0, or 1 with the reason and the fix
"""

from __future__ import annotations

import os
import shlex
import subprocess  # nosec B404
import sys
from pathlib import Path

UV = shlex.split(os.environ.get("UV", "uv"))
# What `uv lock --check` says when the lock no longer satisfies pyproject.toml.
STALE = "needs to be updated"
FIX = "run `make lock`, then commit uv.lock"


def problem(project: Path) -> str | None:
    if not (project / "uv.lock").is_file():
        return f"uv.lock is missing (copier writes none): {FIX}"
    try:
        checked = subprocess.run(  # noqa: S603  # nosec B603
            [*UV, "lock", "--check"], cwd=project, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return f"{UV[0]} not found: install uv (`make doctor` says where), then run this again"
    if checked.returncode == 0:
        return None
    if STALE in checked.stderr:
        return f"uv.lock does not match pyproject.toml (an edit or `copier update` changed it): {FIX}"
    reason = (checked.stderr.strip().splitlines() or ["no output"])[-1]
    return f"could not check uv.lock against pyproject.toml ({reason})"


def main() -> int:
    found = problem(Path.cwd())
    if found:
        print(found, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
