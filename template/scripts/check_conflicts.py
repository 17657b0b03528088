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

# The lines git and copier write around a conflict. Between them come ours, the common base
# after ``||||||| `` (git's diff3 and zdiff3 styles) and theirs after ``=======``, which are no
# markers of their own (``=======`` alone is also a Markdown heading underline).
OPENING, CLOSING = "<<<<<<< ", ">>>>>>> "
CONFLICT = "unresolved conflict; keep one side, drop the markers"
STRAY = "conflict marker without the rest of its conflict; finish resolving, drop the marker"


def candidate_files(root: Path) -> list[Path]:
    """Tracked files and new ones git would add (ignored files such as .venv are skipped). A
    file with an unresolved conflict is in the index up to three times (base, ours, theirs:
    ``copier update`` records its conflicts so), and is listed once."""
    listed = subprocess.run(  # noqa: S603  # nosec B603 B607
        ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],  # noqa: S607
        capture_output=True,
        check=True,
    ).stdout.decode()
    names = dict.fromkeys(name for name in listed.split("\0") if name)
    return [root / name for name in names if (root / name).is_file()]


def markers(path: Path) -> list[tuple[int, str]]:
    """Each conflict in ``path`` once, as (line, what is wrong): the opening marker of an
    outermost conflict (a conflict nested in one side of another is part of it), or a marker
    left without the rest of its conflict (an opening never closed, a closing never opened)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError):
        return []  # binary or unreadable: git reports conflicts in those itself
    found: list[tuple[int, str]] = []
    opened: list[int] = []  # the opening lines of the conflicts not closed yet, outermost first
    for number, line in enumerate(lines, start=1):
        if line.startswith(OPENING):
            opened.append(number)
        elif line.startswith(CLOSING) and not opened:
            found.append((number, STRAY))
        elif line.startswith(CLOSING):
            start = opened.pop()
            if not opened:
                found.append((start, CONFLICT))
    if opened:
        found.append((opened[0], STRAY))
    return sorted(found)


def findings(root: Path) -> list[str]:
    problems: list[str] = []
    for path in candidate_files(root):
        name = path.relative_to(root).as_posix()
        if path.suffix == ".rej":
            problems.append(f"{name}: rejected hunk of an update; apply it by hand, then delete the file")
            continue
        problems.extend(f"{name}:{line}: {problem}" for line, problem in markers(path))
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
