"""Cut a template release from main: the commit that turns ``[Unreleased]`` into a dated
``[X.Y.Z]`` section of CHANGELOG.md *is* the release, and it is tagged ``vX.Y.Z`` only after the
template's tests passed on it.

    python tools/release.py check 1.2.0    # refuses a version HEAD does not release (see check())
    python tools/release.py tag 1.2.0      # the check, then an annotated tag v1.2.0 on HEAD
    python tools/release.py notes 1.2.0    # the version's CHANGELOG section (the release notes)
    python tools/release.py pending        # "version=" and "commit=" lines: the newest dated, untagged
                                           # version and the commit that dated it (empty: none)

The template's CI (.github/workflows/ci.yml) runs ``pending`` on every push to main; it tags the
release commit it names only after ``make test`` passed on that very commit (the push's own run
when the commit is the one pushed, else a run of its own on that commit). ``make release
VERSION=1.2.0`` does the same for a maintainer: ``check`` (HEAD is the release commit), then
``make test``, then ``tag``. Copier picks the newest
``vX.Y.Z`` tag for ``copier copy`` and ``copier update``, so a tag is what every project made
from the template is offered next. Tags need not travel with a clone: the dated section on main
says which commit each release is, so a lost tag is made again from main alone.
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


def number(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


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
    return sorted(number(tag[1:]) for tag in git("tag", "--list", "v*", root=root).split() if SEMVER.match(tag[1:]))


def newest_dated(root: Path = ROOT) -> str | None:
    """The highest version CHANGELOG.md gives a dated section."""
    dated = [
        version
        for version, (date, _) in sections((root / "CHANGELOG.md").read_text()).items()
        if date and SEMVER.match(version)
    ]
    return max(dated, key=number, default=None)


def release_commit(version: str, root: Path = ROOT) -> str | None:
    """The commit that wrote ``version``'s dated heading into CHANGELOG.md: the release."""
    pattern = rf"^## \[{re.escape(version)}\] - [0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}"
    found = git("log", "--format=%H", "--reverse", "-G", pattern, "--", "CHANGELOG.md", root=root).split()
    return found[0] if found else None


def releasable(version: str, root: Path = ROOT) -> tuple[str, str]:
    """(notes, release commit) of ``version``: its section is complete, a commit dated it, and
    no tag has that version or a higher one."""
    body = notes(version, root)
    tags = released(root)
    if number(version) in tags:
        raise ReleaseError(f"v{version} is already released")
    if tags and number(version) < tags[-1]:
        newest = ".".join(map(str, tags[-1]))
        raise ReleaseError(f"{version} is older than the newest release {newest}: choose a higher version")
    commit = release_commit(version, root)
    if commit is None:
        raise ReleaseError(f"no commit has dated {version}'s section yet: commit CHANGELOG.md first")
    return body, commit


def check(version: str, root: Path = ROOT) -> str:
    """``version``'s notes, if HEAD is its release commit and the tree is clean (make release)."""
    if git("status", "--porcelain", root=root).strip():
        raise ReleaseError("the working tree has uncommitted changes: commit them, then release")
    body, commit = releasable(version, root)
    if commit != git("rev-parse", "HEAD", root=root).strip():
        raise ReleaseError(
            f"HEAD is not the commit that dated {version}'s section ({commit}): a release is that "
            f"commit, tested (git checkout {commit[:12]}, then make release); a fix after it goes into the next version"
        )
    return body


def pending(root: Path = ROOT) -> tuple[str, str] | None:
    """(version, release commit) of the newest dated version no tag has yet, or None."""
    version = newest_dated(root)
    if version is None:
        return None
    try:
        _, commit = releasable(version, root)
    except ReleaseError:
        return None
    return version, commit


def tag(version: str, root: Path = ROOT) -> None:
    body = check(version, root)
    # verbatim: the default cleanup drops every line starting with '#', the '### Security' headings too.
    message = f"v{version}\n\n{body}\n"
    git("tag", "--annotate", "--cleanup=verbatim", f"v{version}", "--message", message, root=root)


def main(argv: list[str]) -> int:
    try:
        if argv == ["pending"]:
            found = pending()
            version, commit = found or ("", "")
            print(f"release: {f'v{version} is due, at {commit}' if found else 'nothing to release'}", file=sys.stderr)
            print(f"version={version}\ncommit={commit}")
            return 0
        if len(argv) != 2 or argv[0] not in {"check", "tag", "notes"}:
            print(__doc__, file=sys.stderr)
            return 2
        command, version = argv
        if command == "notes":
            print(notes(version))
        elif command == "check":
            check(version)
            print(f"HEAD releases {version}")
        else:
            tag(version)
            print(f"tagged v{version}; push it with: git push origin v{version}")
    except ReleaseError as error:
        print(f"release: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
