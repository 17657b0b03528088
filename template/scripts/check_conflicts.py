"""Fail while a merge or a ``copier update`` is half resolved: conflict markers in any file
git would commit, or ``*.rej`` files that ``copier update --conflict rej`` leaves.

``copier update`` exits 0 even when it leaves conflicts, and a marker in Markdown, TOML or YAML
is no syntax error to any other check, so this runs in ``make lint``, pre-commit and CI.

    python scripts/check_conflicts.py        # one line per finding; exit 1 if there is any
"""

from __future__ import annotations

import subprocess  # nosec B404
import sys
from pathlib import Path

# Lines git and copier write around each side of a conflict (``=======`` alone is a Markdown
# heading underline, so it counts only between the other two).
OPENING, SEPARATOR, CLOSING = "<<<<<<< ", "=======", ">>>>>>> "


def candidate_files(root: Path) -> list[Path]:
    """Tracked files and new ones git would add (ignored files such as .venv are skipped)."""
    listed = subprocess.run(  # noqa: S603  # nosec B603 B607
        ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],  # noqa: S607
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [root / name for name in listed.split("\0") if name and (root / name).is_file()]


def markers(path: Path) -> list[int]:
    """Line numbers of the opening markers of each conflict in ``path``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError):
        return []  # binary or unreadable: git reports conflicts in those itself
    found: list[int] = []
    opened: int | None = None
    separated = False
    for number, line in enumerate(lines, start=1):
        if line.startswith(OPENING):
            opened, separated = number, False
        elif opened is not None and line.rstrip() == SEPARATOR:
            separated = True
        elif opened is not None and separated and line.startswith(CLOSING):
            found.append(opened)
            opened = None
    return found


def findings(root: Path) -> list[str]:
    problems: list[str] = []
    for path in candidate_files(root):
        name = path.relative_to(root).as_posix()
        if path.suffix == ".rej":
            problems.append(f"{name}: rejected hunk of an update; apply it by hand, then delete the file")
            continue
        problems.extend(
            f"{name}:{line}: unresolved conflict; keep one side, drop the markers" for line in markers(path)
        )
    return problems


def main() -> int:
    problems = findings(Path.cwd())
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} unresolved conflict(s): resolve them before committing", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
