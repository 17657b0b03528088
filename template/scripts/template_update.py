"""Bring this project to the newest release of its template, on a branch, for review.

``make template-update`` runs it locally; the scheduled CI job runs it with ``--push origin``
and opens (or updates) one pull or merge request from the branch, with the body this writes.

    python scripts/template_update.py [--to vX.Y.Z] [--branch template-update]
                                      [--push REMOTE] [--body FILE]

Steps: read ``.copier-answers.yml``; find the template's newest release tag ``vX.Y.Z`` (or take
``--to``); stop if the project is there already; on ``--branch`` (reset to the current commit),
``copier update`` to that tag with conflicts written inline, re-lock with ``uv lock``, commit;
write the body: the template's CHANGELOG sections between the two versions, security fixes
first, and the files left with conflicts (the request is then a draft, and the conflict guard,
``scripts/check_conflicts.py``, fails until they are resolved). Prints ``key=value`` lines
(``version``, ``previous``, ``conflicts``, ``branch``) that CI appends to its step outputs.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess  # nosec B404
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from check_conflicts import findings

ANSWERS = Path(".copier-answers.yml")
RELEASE_TAG = re.compile(r"v(\d+)\.(\d+)\.(\d+)")
# The shortcuts copier accepts for a template's address.
SHORTCUTS = {"gh:": "https://github.com/", "gl:": "https://gitlab.com/"}
# Commands, overridable: make passes the pinned copier through uv (``uv tool run``).
COPIER = shlex.split(os.environ.get("COPIER", "copier"))
UV = shlex.split(os.environ.get("UV", "uv"))
# A CHANGELOG release heading: ``## [1.2.0] - 2026-12-04`` (Keep a Changelog).
RELEASE_HEADING = re.compile(r"\[?v?(\d+\.\d+\.\d+)\]?")


class UpdateError(Exception):
    """Something the person running the update must fix; the message says what."""


@dataclass(frozen=True)
class Release:
    tag: str
    number: tuple[int, int, int]


def run(*command: str, cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)  # noqa: S603  # nosec B603
    if result.returncode != 0:
        raise UpdateError(f"{' '.join(command[:3])} failed:\n{result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def git_url(source: str) -> str:
    for prefix, url in SHORTCUTS.items():
        if source.startswith(prefix):
            return url + source.removeprefix(prefix)
    return source


def release(tag: str) -> Release | None:
    match = RELEASE_TAG.fullmatch(tag)
    return Release(tag, (int(match[1]), int(match[2]), int(match[3]))) if match else None


def releases(source: str) -> list[Release]:
    """The template's release tags, oldest first (pre-releases and other tags are ignored)."""
    listed = run("git", "ls-remote", "--tags", "--refs", git_url(source))
    tags = (line.rsplit("refs/tags/", 1)[-1] for line in listed.splitlines())
    return sorted((found for tag in tags if (found := release(tag))), key=lambda r: r.number)


def changelog_between(changelog: str, previous: Release | None, target: Release) -> str:
    """The CHANGELOG sections after ``previous`` up to ``target``, newest first, with every
    release's Security part gathered at the top."""
    sections = re.split(r"^## ", changelog, flags=re.MULTILINE)[1:]
    security: list[str] = []
    rest: list[str] = []
    for section in sections:
        heading, _, text = section.partition("\n")
        number = RELEASE_HEADING.match(heading)
        found = release(f"v{number[1]}") if number else None
        if found is None or found.number > target.number or (previous and found.number <= previous.number):
            continue
        parts = re.split(r"^### ", text, flags=re.MULTILINE)
        for part in parts[1:]:
            kind, _, body = part.partition("\n")
            kind = kind.strip()
            (security if kind == "Security" else rest).append(f"### {kind} ({found.tag})\n{body.strip()}\n")
    return "\n".join([*security, *rest])


def body(previous: str, target: Release, notes: str, conflicts: list[str]) -> str:
    lines = [f"Template update {previous} → {target.tag}.", ""]
    if conflicts:
        lines += [
            "**Conflicts to resolve** (keep one side of each, remove the markers; CI fails until then):",
            *(f"- `{name}`" for name in conflicts),
            "",
        ]
    lines += [notes or "The template's CHANGELOG has no entry for these versions.", ""]
    lines += ["Made by `scripts/template_update.py`: `copier update`, then `uv lock`."]
    return "\n".join(lines)


def template_changelog(source: str, tag: str) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        run("git", "clone", "--quiet", "--depth", "1", "--branch", tag, git_url(source), scratch)
        changelog = Path(scratch, "CHANGELOG.md")
        return changelog.read_text(encoding="utf-8") if changelog.is_file() else ""


def recorded(key: str) -> str:
    """A value copier recorded in the answers file (``key: value`` lines it writes itself)."""
    for line in ANSWERS.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return value.strip().strip("'\"")
    raise UpdateError(f"{ANSWERS} has no {key}: was this project made with copier?")


def conflicted_files() -> list[str]:
    return sorted({problem.split(":", 1)[0] for problem in findings(Path.cwd())})


def update(args: argparse.Namespace) -> dict[str, str]:
    if run("git", "status", "--porcelain").strip():
        raise UpdateError("the working tree has uncommitted changes: commit or stash them first")
    source, current = recorded("_src_path"), recorded("_commit")
    available = releases(source)
    if args.to:
        target = release(args.to)
        if target is None or target not in available:
            raise UpdateError(f"--to {args.to}: not a release tag of {source} (vX.Y.Z)")
    elif available:
        target = available[-1]
    else:
        raise UpdateError(f"{source} has no release tags (vX.Y.Z) to update to")
    previous = release(current)
    if previous and previous.number >= target.number:
        return {"version": current, "previous": current, "conflicts": "0", "branch": ""}

    run("git", "checkout", "--quiet", "-B", args.branch)
    run(*COPIER, "update", "--trust", "--defaults", "--skip-answered", "--conflict", "inline", "--vcs-ref", target.tag)
    run(*UV, "lock")
    conflicts = conflicted_files()
    run("git", "add", "-A")
    title = f"Update template to {target.tag}" + (" (conflicts to resolve)" if conflicts else "")
    run("git", "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify", "-m", title)
    notes = changelog_between(template_changelog(source, target.tag), previous, target)
    args.body.write_text(body(current or "an unreleased version", target, notes, conflicts), encoding="utf-8")
    if args.push:
        run("git", "push", "--quiet", "--force", args.push, f"{args.branch}:{args.branch}")
    return {"version": target.tag, "previous": current, "conflicts": str(len(conflicts)), "branch": args.branch}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", help="a release tag of the template; default: the newest")
    parser.add_argument("--branch", default="template-update", help="the branch the update is committed on")
    parser.add_argument("--push", metavar="REMOTE", help="push the branch there (CI: origin)")
    parser.add_argument("--body", type=Path, default=Path(".git/template-update.md"), help="where the PR body goes")
    args = parser.parse_args()
    try:
        outputs = update(args)
    except UpdateError as exc:
        print(f"template update: {exc}", file=sys.stderr)
        return 2
    if not outputs["branch"]:
        print(f"template update: already at {outputs['version']}, the newest release", file=sys.stderr)
    for key, value in outputs.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
