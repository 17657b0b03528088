"""Cut a template release: check CHANGELOG.md has the version, then tag it.

    python tools/release.py check 1.2.0    # refuses a version without a complete CHANGELOG entry
    python tools/release.py tag 1.2.0      # the check, then an annotated tag v1.2.0 on HEAD
    python tools/release.py notes 1.2.0    # the version's CHANGELOG section (the release notes)

`make release VERSION=1.2.0` runs `tag`. Copier picks the newest `vX.Y.Z` tag for `copier copy`
and `copier update`, so a tag is what every project made from the template is offered next.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\](?: - (?P<date>\d{4}-\d{2}-\d{2}))?\s*$", re.MULTILINE)
# Keep a Changelog's kinds of change, and ours: what a project owner must do.
KINDS = ("Security", "Added", "Changed", "Deprecated", "Removed", "Fixed")
UPGRADE = "Upgrading"


class ReleaseError(Exception):
    """A release refused, with the reason in our words."""


def git(*args: str, root: Path = ROOT) -> str:
    result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def sections(changelog: str) -> dict[str, tuple[str | None, str]]:
    """Each release heading's version -> (date, body)."""
    found: dict[str, tuple[str | None, str]] = {}
    headings = list(HEADING.finditer(changelog))
    for index, heading in enumerate(headings):
        end = headings[index + 1].start() if index + 1 < len(headings) else len(changelog)
        found[heading["version"]] = (heading["date"], changelog[heading.end() : end].strip())
    return found


def notes(version: str, root: Path = ROOT) -> str:
    """The body of ``version``'s section, checked: dated, at least one kind of change, and the
    Upgrading part that says what a project owner must do (may say "Nothing to do")."""
    if not SEMVER.match(version):
        raise ReleaseError(f"{version!r} is not a version like 1.2.0 (MAJOR.MINOR.PATCH, no v)")
    path = root / "CHANGELOG.md"
    found = sections(path.read_text())
    if version not in found:
        raise ReleaseError(f"CHANGELOG.md has no '## [{version}] - YYYY-MM-DD' section: write it first")
    date, body = found[version]
    if date is None:
        raise ReleaseError(f"CHANGELOG.md: the {version} heading has no date ('## [{version}] - YYYY-MM-DD')")
    parts = set(re.findall(r"^### (\w+)\s*$", body, re.MULTILINE))
    if not parts & set(KINDS):
        raise ReleaseError(f"CHANGELOG.md: {version} lists no change under any of: {', '.join(KINDS)}")
    if UPGRADE not in parts:
        raise ReleaseError(f"CHANGELOG.md: {version} has no '### {UPGRADE}' part (what a project owner must do)")
    unknown = parts - set(KINDS) - {UPGRADE}
    if unknown:
        raise ReleaseError(f"CHANGELOG.md: {version} has unknown parts {sorted(unknown)}; use {', '.join(KINDS)}")
    return body


def released(root: Path = ROOT) -> list[tuple[int, ...]]:
    return sorted(
        tuple(int(part) for part in tag[1:].split("."))
        for tag in git("tag", "--list", "v*", root=root).split()
        if SEMVER.match(tag[1:])
    )


def check(version: str, root: Path = ROOT) -> str:
    body = notes(version, root)
    tags = released(root)
    wanted = tuple(int(part) for part in version.split("."))
    if wanted in tags:
        raise ReleaseError(f"v{version} is already released")
    if tags and wanted < tags[-1]:
        newest = ".".join(map(str, tags[-1]))
        raise ReleaseError(f"{version} is older than the newest release {newest}: choose a higher version")
    if git("status", "--porcelain", root=root).strip():
        raise ReleaseError("the working tree has uncommitted changes: commit them, then release")
    return body


def tag(version: str, root: Path = ROOT) -> None:
    body = check(version, root)
    git("tag", "--annotate", f"v{version}", "--message", f"v{version}\n\n{body}\n", root=root)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in {"check", "tag", "notes"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, version = argv
    try:
        if command == "notes":
            print(notes(version))
        elif command == "check":
            check(version)
            print(f"{version} can be released")
        else:
            tag(version)
            print(f"tagged v{version}; push it with: git push origin v{version}")
    except ReleaseError as error:
        print(f"release: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
