"""Bring this project to the newest release of its template, on a branch, for review.

``make template-update`` runs it locally; the scheduled CI job runs it with ``--push origin``
and opens (or updates) one pull or merge request from the branch, with the body this writes.

    python scripts/template_update.py [--to vX.Y.Z] [--branch template-update] [--body FILE]
                                      [--push REMOTE [--no-fetch] [--defer-push]]
    python scripts/template_update.py --push-deferred

Steps: read ``.copier-answers.yml``; find the template's newest release tag ``vX.Y.Z`` (or take
``--to``); stop if the project is there already. Then choose where the update goes, without
ever dropping a commit the script did not make. Its own commits carry the trailers
``Template-Update: vX.Y.Z`` and ``Template-Update-Tree: <tree>`` (a commit amended since has
another tree and is no longer its own). With ``--push``, the branch is fetched from the remote
first (``--no-fetch``: the caller fetched it, e.g. a full checkout).

- The branch holds commits of the team that the base (the commit this runs on) lacks: the
  update is added on top of them: ``copier update`` from the release the branch records, and
  the push is a plain one, never forced. If that branch still holds conflict markers, the
  update goes to a new branch named for the release (``template-update-vX.Y.Z``), made from
  the base, and the team's branch is left as it is.
- The branch holds only the script's commits, or nothing the base lacks (merged): it is made
  again from the base and pushed with ``--force-with-lease`` on the head seen at the fetch, so a
  push that lands meanwhile is refused, never overwritten (exit 2). Already made from this base
  for this release: left as it is.

The update itself: ``copier update`` to the tag with conflicts written inline, ``uv lock``,
commit; the body: the template's CHANGELOG sections between the base's release and the
target, security fixes first, ``<PREFIX>`` shown as this project's environment prefix, what
happened to the team's commits, and the files left with conflicts (the request is then a
draft, and the conflict guard, ``scripts/check_conflicts.py``, fails until they are resolved).
Prints ``key=value`` lines (``version``, ``previous``, ``conflicts``, ``branch``) that CI
appends to its step outputs. ``--defer-push`` records the push in ``.git/template-update.push``
instead, for ``--push-deferred`` to make later (GitHub: a later step, the one holding the
token, after ``make check``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess  # nosec B404
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# The template's CHANGELOG names settings as ``<PREFIX>NAME``; a project reads ``ACME_NAME``.
PREFIX = "<PREFIX>"
# The trailers that mark the script's own commits: the release, and the tree it committed.
RELEASE_TRAILER, TREE_TRAILER = "Template-Update", "Template-Update-Tree"
# The deferred push, as --defer-push records it. --push-deferred runs the copy of this script on
# the update branch, which may be a newer release's: later releases read this format too.
PLAN_FORMAT = 1
TREE_LINE = re.compile(rf"^{TREE_TRAILER}: ([0-9a-f]{{40,64}})$", re.MULTILINE)


class UpdateError(Exception):
    """Something the person running the update must fix; the message says what."""


@dataclass(frozen=True)
class Release:
    tag: str
    number: tuple[int, int, int]


@dataclass(frozen=True)
class Branch:
    """An update branch as the script found it."""

    name: str
    head: str | None  # where an update on it continues from; None: there is no such branch
    seen: str | None  # its head on the remote at the fetch (the lease); None: not there
    theirs: int  # commits on it, not in the base, that the script did not make


def run(*command: str, cwd: Path | None = None) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)  # noqa: S603  # nosec B603
    if result.returncode != 0:
        raise UpdateError(f"{' '.join(command[:3])} failed:\n{result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def succeeds(*command: str) -> bool:
    return subprocess.run(command, capture_output=True, check=False).returncode == 0  # noqa: S603  # nosec B603


def commit_of(ref: str) -> str | None:
    found = subprocess.run(  # noqa: S603  # nosec B603 B607
        ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or None


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


def reached(version: str, target: Release) -> bool:
    found = release(version)
    return found is not None and found.number >= target.number


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


def body(previous: str, target: Release, notes: str, conflicts: list[str], branch_note: str) -> str:
    lines = [f"Template update {previous} → {target.tag}.", ""]
    if branch_note:
        lines += [branch_note, ""]
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


def recorded(key: str, answers: str | None = None) -> str:
    """A value copier recorded in the answers file (``key: value`` lines it writes itself), in
    the working tree or in the text given."""
    text = ANSWERS.read_text(encoding="utf-8") if answers is None else answers
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return value.strip().strip("'\"")
    raise UpdateError(f"{ANSWERS} has no {key}: was this project made with copier?")


def recorded_at(commit: str, key: str) -> str:
    return recorded(key, run("git", "show", f"{commit}:{ANSWERS.as_posix()}"))


def conflicted_files() -> list[str]:
    return sorted({problem.split(":", 1)[0] for problem in findings(Path.cwd())})


def commits_by_others(exclude: str, head: str) -> int:
    """How many commits ``exclude..head`` holds that the script did not make: a commit of its
    own carries the tree trailer, and its tree is still that one."""
    log = run("git", "log", "--format=%H%x1f%T%x1f%B%x1e", f"{exclude}..{head}")
    count = 0
    for entry in filter(str.strip, log.split("\x1e")):
        _, tree, message = entry.strip("\n").split("\x1f", 2)
        trailer = TREE_LINE.search(message)
        count += not (trailer and trailer[1] == tree)
    return count


def merged_into(base: str, head: str) -> bool:
    """Whether ``head`` brings nothing the base lacks, however it was merged (merge commit,
    rebase, squash): merging it into the base changes no file."""
    try:
        merged_tree = run("git", "merge-tree", "--write-tree", base, head).split()[0]
    except UpdateError:
        return False  # conflicts (so not merged), or a git older than 2.38
    return merged_tree == run("git", "rev-parse", f"{base}^{{tree}}").strip()


def fetch(remote: str, branch: str) -> None:
    """The remote's update branches (``branch`` and ``branch-vX.Y.Z``) as they are now; those
    deleted there are dropped here."""
    refspec = f"+refs/heads/{branch}*:refs/remotes/{remote}/{branch}*"
    run("git", "fetch", "--quiet", "--prune", "--no-tags", remote, refspec)


def inspect(name: str, base: str, remote: str | None) -> Branch:
    """Where an update on ``name`` would continue from: the remote's branch, or the local one
    where it holds commits of the team the remote lacks (``make template-update`` run by hand)."""
    local = commit_of(f"refs/heads/{name}")
    seen = commit_of(f"refs/remotes/{remote}/{name}") if remote else None
    head = seen
    if local and local != seen and (seen is None or commits_by_others(seen, local)):
        if seen and not succeeds("git", "merge-base", "--is-ancestor", seen, local):
            raise UpdateError(
                f"the local branch {name} and {remote}/{name} both hold commits the other lacks: "
                "merge or rebase one onto the other, push, then run the update again"
            )
        head = local
    if head is None:
        return Branch(name, None, seen, 0)
    theirs = commits_by_others(base, head)
    if theirs and merged_into(base, head):
        theirs = 0
    return Branch(name, head, seen, theirs)


def switch(name: str, start: str) -> None:
    run("git", "checkout", "--quiet", "-B", name, start)


def copier_update(target: Release) -> list[str]:
    run(*COPIER, "update", "--trust", "--defaults", "--skip-answered", "--conflict", "inline", "--vcs-ref", target.tag)
    run(*UV, "lock")
    return conflicted_files()


def commit(target: Release, conflicts: list[str]) -> str:
    run("git", "add", "-A")
    tree = run("git", "write-tree").strip()
    title = f"Update template to {target.tag}" + (" (conflicts to resolve)" if conflicts else "")
    trailers = f"{RELEASE_TRAILER}: {target.tag}\n{TREE_TRAILER}: {tree}"
    run("git", "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify", "-m", title, "-m", trailers)
    return run("git", "rev-parse", "HEAD").strip()


def plural(count: int) -> str:
    return f"{count} commit{'s' if count != 1 else ''} of yours"


def update(args: argparse.Namespace) -> dict[str, str]:
    if run("git", "status", "--porcelain").strip():
        raise UpdateError("the working tree has uncommitted changes: commit or stash them first")
    here = run("git", "branch", "--show-current").strip()
    if here == args.branch or here.startswith(f"{args.branch}-v"):
        raise UpdateError(f"you are on {here}: run the update from the branch it is for (e.g. main)")
    base = run("git", "rev-parse", "HEAD").strip()
    plan_file().unlink(missing_ok=True)  # a push deferred by an earlier run is not this one's
    source, current = recorded("_src_path"), recorded("_commit")
    prefix = recorded("package_name").upper() + "_"
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

    if args.push and not args.no_fetch:
        fetch(args.push, args.branch)
    branch = inspect(args.branch, base, args.push)
    note = ""
    if branch.head and branch.theirs:
        switch(branch.name, branch.head)
        if conflicted_files() and not reached(recorded("_commit"), target):
            held = branch
            branch = inspect(f"{args.branch}-{target.tag}", base, args.push)
            note = (
                f"`{held.name}` holds {plural(held.theirs)} and still has unresolved conflicts, so this "
                f"update is on a new branch, `{branch.name}`, made from the base; `{held.name}` was left as "
                "it is: carry over what you need from it, and close its request once this one is merged."
            )
            switch(branch.name, branch.head if branch.theirs and branch.head else base)

    if branch.head and branch.theirs:
        switch(branch.name, branch.head)
        start = recorded("_commit")
        if reached(start, target):
            head = branch.head
            conflicts = conflicted_files()
            kept = f"`{branch.name}` already holds {start} and {plural(branch.theirs)}: this run added nothing."
        else:
            conflicts = copier_update(target)
            head = commit(target, conflicts)
            kept = (
                f"This update ({start} → {target.tag}) was added on top of {plural(branch.theirs)} on "
                f"`{branch.name}`; nothing of yours was changed or dropped. It ran from {start}, the release "
                "that branch records."
            )
        note = f"{note}\n\n{kept}".strip()
        force = False
    elif (
        branch.head
        and succeeds("git", "merge-base", "--is-ancestor", base, branch.head)
        and recorded_at(branch.head, "_commit") == target.tag
    ):
        # Made by an earlier run from this same base for this release: nothing to redo.
        switch(branch.name, branch.head)
        head, conflicts, force = branch.head, conflicted_files(), True
    else:
        switch(branch.name, base)
        conflicts = copier_update(target)
        head, force = commit(target, conflicts), True

    notes = changelog_between(template_changelog(source, target.tag), previous, target).replace(PREFIX, prefix)
    args.body.write_text(body(current or "an unreleased version", target, notes, conflicts, note), encoding="utf-8")
    if args.push:
        planned = {"remote": args.push, "branch": branch.name, "commit": head, "seen": branch.seen, "force": force}
        planned |= {"format": PLAN_FORMAT}
        if args.defer_push:
            plan_file().write_text(json.dumps(planned), encoding="utf-8")
        else:
            print(f"template update: {push(planned)}", file=sys.stderr)
    return {"version": target.tag, "previous": current, "conflicts": str(len(conflicts)), "branch": branch.name}


def plan_file() -> Path:
    return Path(run("git", "rev-parse", "--git-dir").strip()) / "template-update.push"


def push(planned: dict[str, Any]) -> str:
    """Push the update's head: forced only with a lease on the head seen at the fetch (the
    branch held nothing but the script's commits), a plain push on top of the team's commits.
    Either is refused when someone pushed to the branch since the fetch."""
    remote, branch, head, seen = (str(planned[key] or "") for key in ("remote", "branch", "commit", "seen"))
    if head == seen:
        return f"{remote}/{branch} already at {head[:12]}: nothing to push"
    command = ["git", "push", "--quiet"]
    if planned["force"]:
        command.append(f"--force-with-lease=refs/heads/{branch}:{seen}")
    result = subprocess.run(  # noqa: S603  # nosec B603
        [*command, remote, f"{head}:refs/heads/{branch}"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        was = f"at {seen[:12]}" if seen else "absent"
        if "rejected" in result.stderr or "stale info" in result.stderr:
            raise UpdateError(
                f"{remote}/{branch} changed while the update ran (it was {was} at the fetch): someone pushed "
                "to it since, and nothing was overwritten. Run the update again: it keeps their commits."
            )
        raise UpdateError(f"git push to {remote} failed:\n{result.stderr.strip()}")
    how = "with a lease on the head seen at the fetch" if planned["force"] else "on top of it, not forced"
    return f"pushed {branch} to {remote} ({how})"


def push_deferred() -> str:
    path = plan_file()
    if not path.is_file():
        raise UpdateError(f"no push was deferred ({path} is missing): run the update with --defer-push first")
    planned = json.loads(path.read_text(encoding="utf-8"))
    if planned.get("format") != PLAN_FORMAT:
        raise UpdateError(f"{path} was written by another version of this script: run the update again")
    pushed = push(planned)
    path.unlink()
    return pushed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", help="a release tag of the template; default: the newest")
    parser.add_argument("--branch", default="template-update", help="the branch the update is committed on")
    parser.add_argument("--push", metavar="REMOTE", help="fetch the branch from there, push it there (CI: origin)")
    parser.add_argument("--no-fetch", action="store_true", help="with --push: the caller fetched the branch")
    parser.add_argument("--defer-push", action="store_true", help="with --push: record the push for --push-deferred")
    parser.add_argument("--push-deferred", action="store_true", help="make the push an earlier --defer-push recorded")
    parser.add_argument("--body", type=Path, default=Path(".git/template-update.md"), help="where the PR body goes")
    args = parser.parse_args()
    if (args.no_fetch or args.defer_push) and not args.push:
        parser.error("--no-fetch and --defer-push go with --push REMOTE")
    try:
        if args.push_deferred:
            print(f"template update: {push_deferred()}", file=sys.stderr)
            return 0
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
