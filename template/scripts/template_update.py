"""Bring this project to the newest release of its template, and of each template applied on top
of it, on a branch, for review; or change an answer, on a branch of its own.

``make template-update`` runs it locally; the scheduled CI job runs it with ``--push origin``
and opens (or updates) one pull or merge request from the branch, with the body this writes.

    python scripts/template_update.py [--to vX.Y.Z] [--branch template-update] [--body FILE]
                                      [--push REMOTE [--no-fetch] [--defer-push]]
    python scripts/template_update.py --data NAME=VALUE [--data ...] [--answers-branch template-answers]
                                      [--push REMOTE [--no-fetch] [--defer-push]]
    python scripts/template_update.py --push-deferred

Layers: this template records its answers in ``.copier-answers.yml`` (the layer ``base``); a
template applied on top of it (an organisation's layer) in ``.copier-answers.<name>.yml``. An
update brings ``base`` to its newest release tag ``vX.Y.Z`` (or ``--to``), then each layer, by
name, to its own newest release; a layer whose source has no release tag yet is skipped, with
a note. It stops when every layer is there already. Then it chooses where the update goes,
without ever dropping a commit the script did not make. Its own commits carry the trailers
``Template-Update: vX.Y.Z`` (base), ``Template-Update-Layer: <name> vX.Y.Z`` (each layer) and
``Template-Update-Tree: <tree>`` (a commit amended since has another tree and is no longer its
own). With ``--push``, the branch is fetched from the remote first (``--no-fetch``: the caller
fetched it, e.g. a full checkout).

- The branch holds commits of the team that the base (the commit this runs on) lacks: the
  update is added on top of them: ``copier update`` from the releases the branch records, and
  the push is a plain one, never forced. If that branch still holds conflict markers, the
  update goes to a new branch named for the releases (``template-update-vX.Y.Z``,
  ``template-update-<layer>-vX.Y.Z``), made from the base, and the team's branch is left as it is.
- The branch holds only the script's commits, or nothing the base lacks (merged): it is made
  again from the base and pushed with ``--force-with-lease`` on the head seen at the fetch, so a
  push that lands meanwhile is refused, never overwritten (exit 2). Already made from this base
  for these releases: left as it is.

The update itself: ``copier update`` of each layer to its tag with conflicts written inline,
``uv lock`` once, one commit; the body: each layer's versions, then the CHANGELOG sections of
every layer between the base's release and the target, all security fixes first, ``<PREFIX>``
shown as this project's environment prefix, what happened to the team's commits, and the files
left with conflicts (the request is then a draft, and the conflict guard,
``scripts/check_conflicts.py``, fails until they are resolved); the request's title goes beside
it (``<body>.title``: ``Update template to vX.Y.Z, org to vA.B.C``). Prints ``key=value`` lines
(``version``, ``previous``, ``conflicts``, ``branch`` for base; ``<layer>_version``,
``<layer>_previous`` for each layer) that CI appends to its step outputs. ``--defer-push``
records the push in ``.git/template-update.push`` instead, for ``--push-deferred`` to make later
(GitHub: a later step, the one holding the token, after ``make check``).

``--data NAME=VALUE`` changes answers instead, at the release the project is on (``copier update
--vcs-ref=:current:``), on the branch ``template-answers``: ``uv lock``, one commit, and a body
naming each changed answer (old → new) and what the project's checks ask for next (the policy
rules the server would refuse at start-up). An unknown name or a value the template refuses
changes nothing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess  # nosec B404
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from check_conflicts import findings

ANSWERS = Path(".copier-answers.yml")
# The answers files of templates applied on top of this one: .copier-answers.<name>.yml.
LAYER_ANSWERS = ".copier-answers.*.yml"
BASE = "base"
RELEASE_TAG = re.compile(r"v(\d+)\.(\d+)\.(\d+)")
# The shortcuts copier accepts for a template's address.
SHORTCUTS = {"gh:": "https://github.com/", "gl:": "https://gitlab.com/"}
# Commands, overridable: make passes the pinned copier through uv (``uv tool run``).
COPIER = shlex.split(os.environ.get("COPIER", "copier"))
UV = shlex.split(os.environ.get("UV", "uv"))
COPIER_FLAGS = ("--trust", "--defaults", "--skip-answered", "--conflict", "inline")
# A CHANGELOG release heading: ``## [1.2.0] - 2026-12-04`` (Keep a Changelog).
RELEASE_HEADING = re.compile(r"\[?v?(\d+\.\d+\.\d+)\]?")
# The template's CHANGELOG names settings as ``<PREFIX>NAME``; a project reads ``ACME_NAME``.
PREFIX = "<PREFIX>"
# The trailers that mark the script's own commits: the releases, the answers, the tree committed.
RELEASE_TRAILER, LAYER_TRAILER, TREE_TRAILER = "Template-Update", "Template-Update-Layer", "Template-Update-Tree"
ANSWERS_TRAILER = "Template-Answers"
# The deferred push, as --defer-push records it. --push-deferred runs the copy of this script on
# the update branch, which may be a newer release's: later releases read this format too.
PLAN_FORMAT = 1
TREE_LINE = re.compile(rf"^{TREE_TRAILER}: ([0-9a-f]{{40,64}})$", re.MULTILINE)
POLICY = Path("config/policy.toml")


class UpdateError(Exception):
    """Something the person running the update must fix; the message says what."""


class NoReleaseError(UpdateError):
    """The template has no release tag to update to."""


@dataclass(frozen=True)
class Release:
    tag: str
    number: tuple[int, int, int]


@dataclass(frozen=True)
class Layer:
    """A template this project was made from: this one (``base``) or one applied on top of it."""

    name: str
    answers: Path


@dataclass(frozen=True)
class Plan:
    """Where one layer goes: from the release the base records (``current``) to ``target``."""

    layer: Layer
    source: str
    current: str
    target: Release


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


def changelog_between(
    changelog: str, previous: Release | None, target: Release, label: str
) -> tuple[list[str], list[str]]:
    """The CHANGELOG sections after ``previous`` up to ``target``, newest first, as the Security
    parts and the rest, each headed ``### <kind> (<label>vX.Y.Z)``."""
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
            (security if kind == "Security" else rest).append(f"### {kind} ({label}{found.tag})\n{body.strip()}\n")
    return security, rest


def template_files(source: str, ref: str, *names: str) -> dict[str, str]:
    """Files at the root of the template's repository at ``ref``; those it lacks are left out."""
    with tempfile.TemporaryDirectory() as scratch:
        if release(ref):
            run("git", "clone", "--quiet", "--no-checkout", "--depth", "1", "--branch", ref, git_url(source), scratch)
            commit = "HEAD"
        else:  # copier records a commit after the last tag as vX.Y.Z-N-g<commit>
            run("git", "clone", "--quiet", "--no-checkout", git_url(source), scratch)
            commit = ref.rsplit("-g", 1)[-1]
        found = {}
        for name in names:
            shown = subprocess.run(  # noqa: S603  # nosec B603 B607
                ["git", "-C", scratch, "show", f"{commit}:{name}"],  # noqa: S607
                capture_output=True,
                text=True,
                check=False,
            )
            if shown.returncode == 0:
                found[name] = shown.stdout
        return found


def answers_in(text: str) -> dict[str, str]:
    """The answers copier recorded (``key: value`` lines it writes itself); a list's ``- item``
    lines below its key as ``[a, b]``."""
    found: dict[str, str] = {}
    key = ""
    items: list[str] = []
    for line in text.splitlines():
        if line.startswith("- ") and key:
            items.append(line[2:].strip().strip("'\""))
            found[key] = f"[{', '.join(items)}]"
        elif ":" in line and not line.startswith(("#", " ")):
            key, _, value = line.partition(":")
            found[key], items = value.strip().strip("'\""), []
    return found


def recorded(key: str, answers: Path = ANSWERS) -> str:
    """A value copier recorded in an answers file of the working tree."""
    found = answers_in(answers.read_text(encoding="utf-8")).get(key)
    if found is None:
        raise UpdateError(f"{answers} has no {key}: was this project made with copier?")
    return found


def recorded_at(commit: str, key: str, answers: Path = ANSWERS) -> str:
    """A value recorded in an answers file at ``commit``; empty when that commit lacks it."""
    if not succeeds("git", "cat-file", "-e", f"{commit}:{answers.as_posix()}"):
        return ""
    return answers_in(run("git", "show", f"{commit}:{answers.as_posix()}")).get(key, "")


def layers() -> list[Layer]:
    """This template's answers first, then each layer's by name: the order updates apply them."""
    found = sorted(Path().glob(LAYER_ANSWERS))
    return [Layer(BASE, ANSWERS)] + [
        Layer(path.name.removeprefix(".copier-answers.").removesuffix(".yml"), path) for path in found
    ]


def plan(layer: Layer, to: str | None) -> Plan:
    source, current = recorded("_src_path", layer.answers), recorded("_commit", layer.answers)
    available = releases(source)
    if to:
        target = release(to)
        if target is None or target not in available:
            raise UpdateError(f"--to {to}: not a release tag of {source} (vX.Y.Z)")
    elif available:
        target = available[-1]
    else:
        raise NoReleaseError(f"{source} has no release tags (vX.Y.Z) to update to")
    return Plan(layer, source, current, target)


def plans(to: str | None) -> tuple[list[Plan], list[str]]:
    """Each layer's plan (``--to`` is base's), and a note for each layer skipped: one whose
    template has no release yet (for base itself that is an error)."""
    found: list[Plan] = []
    skipped: list[str] = []
    for layer in layers():
        try:
            found.append(plan(layer, to if layer.name == BASE else None))
        except NoReleaseError as exc:
            if layer.name == BASE:
                raise
            skipped.append(f"{layer.name} (`{layer.answers}`) was skipped: {exc}.")
    return found, skipped


def behind(plans: list[Plan]) -> list[Plan]:
    """The plans whose layer, in the working tree, records a release older than the target (a
    layer whose answers file the tree lacks has nothing to update there)."""
    return [
        plan
        for plan in plans
        if plan.layer.answers.is_file() and not reached(recorded("_commit", plan.layer.answers), plan.target)
    ]


def labelled(plans: list[Plan], versions: Iterable[str]) -> str:
    """``v1.0.1`` for this template alone; ``base v1.0.1, org v0.2.0`` with layers."""
    versions = list(versions)
    if len(plans) == 1:
        return versions[0]
    return ", ".join(f"{plan.layer.name} {version}" for plan, version in zip(plans, versions, strict=True))


def recorded_now(plans: list[Plan]) -> list[str]:
    return [recorded("_commit", plan.layer.answers) if plan.layer.answers.is_file() else "-" for plan in plans]


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
    """The remote's branches ``branch`` and ``branch-*`` as they are now; those deleted there
    are dropped here."""
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


def save_step(message: str) -> None:
    """Commit what a step wrote: copier refuses to update a dirty tree, so each layer's update
    is committed before the next one runs; ``commit`` folds these into one."""
    run("git", "add", "-A")
    run("git", "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify", "-m", message)


def apply(plans: list[Plan]) -> tuple[list[Plan], list[str]]:
    """``copier update`` of each layer behind its target, in order, then ``uv lock`` once: the
    layers it moved, and the files left with conflicts."""
    moved = behind(plans)
    for plan in moved:
        answers = plan.layer.answers.as_posix()
        run(*COPIER, "update", *COPIER_FLAGS, "--answers-file", answers, "--vcs-ref", plan.target.tag)
        save_step(f"template update step: {plan.layer.name} {plan.target.tag}")
    run(*UV, "lock")
    return moved, conflicted_files()


def commit(start: str, title: str, trailers: list[str]) -> str:
    """One commit on ``start`` of everything since (the layers' steps, uv.lock), marked as the
    script's own by the trailers and the tree they describe."""
    run("git", "reset", "--quiet", "--soft", start)
    run("git", "add", "-A")
    tree = run("git", "write-tree").strip()
    marks = "\n".join([*trailers, f"{TREE_TRAILER}: {tree}"])
    run("git", "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify", "-m", title, "-m", marks)
    return run("git", "rev-parse", "HEAD").strip()


def update_commit(start: str, plans: list[Plan]) -> tuple[str, list[str]]:
    """The update of every layer behind its target, committed on ``start``; the trailers record
    the release of each layer (``base`` as ``Template-Update``, as before layers existed)."""
    moved, conflicts = apply(plans)
    title = update_title(moved) + (" (conflicts to resolve)" if conflicts else "")
    trailers = [
        f"{RELEASE_TRAILER}: {version}" if plan.layer.name == BASE else f"{LAYER_TRAILER}: {plan.layer.name} {version}"
        for plan, version in zip(plans, recorded_now(plans), strict=True)
    ]
    return commit(start, title, trailers), conflicts


def update_title(moved: list[Plan]) -> str:
    """``Update template to vX.Y.Z, org to vA.B.C``: the commit's title, and the request's."""
    names = [("template" if p.layer.name == BASE else p.layer.name) + f" to {p.target.tag}" for p in moved]
    return f"Update {', '.join(names)}"


def write_review(body_file: Path, title: str, text: str) -> None:
    """The request's description, and its title beside it (``<body>.title``, for CI: a title
    holds spaces, which the ``key=value`` outputs a shell sources cannot)."""
    body_file.write_text(text, encoding="utf-8")
    body_file.with_suffix(".title").write_text(title + "\n", encoding="utf-8")


def plural(count: int) -> str:
    return f"{count} commit{'s' if count != 1 else ''} of yours"


def versions_part(plans: list[Plan], moved: list[Plan], skipped: list[str]) -> tuple[list[str], list[str]]:
    """The body's first line (from which release to which), and with layers a heading for each
    (where its answers are, where it comes from) above the changes."""
    if len(plans) == 1 and not skipped:
        return [f"Template update {plans[0].current or 'an unreleased version'} → {plans[0].target.tag}.", ""], []
    moves = [f"{p.layer.name} {p.current or 'unreleased'} → {p.target.tag}" for p in moved]
    lines = []
    for plan in plans:
        what = "this project's template" if plan.layer.name == BASE else "a template applied on top of it"
        if plan in moved:
            lines += [f"## {plan.layer.name}: {plan.current or 'unreleased'} → {plan.target.tag}", ""]
        else:
            lines += [f"## {plan.layer.name}: {plan.current} (unchanged)", ""]
        lines += [f"{what.capitalize()}: `{plan.layer.answers}`, from `{plan.source}`.", ""]
    if skipped:
        lines += ["## Skipped", "", *(f"- {note}" for note in skipped), ""]
    lines += ["## What changed, security fixes first", ""]
    return [f"Template update: {', '.join(moves)}.", ""], lines


def release_notes(plans: list[Plan], moved: list[Plan], prefix: str) -> str:
    """Every moved layer's CHANGELOG sections between the base's release and the target: all
    Security parts first, then the rest, each labelled with its layer and release."""
    security: list[str] = []
    rest: list[str] = []
    for plan in moved:
        label = "" if len(plans) == 1 else f"{plan.layer.name} "
        changelog = template_files(plan.source, plan.target.tag, "CHANGELOG.md").get("CHANGELOG.md", "")
        found = changelog_between(changelog, release(plan.current), plan.target, label)
        security += found[0]
        rest += found[1]
    return "\n".join([*security, *rest]).replace(PREFIX, prefix)


def conflicts_part(conflicts: list[str]) -> list[str]:
    if not conflicts:
        return []
    return [
        "**Conflicts to resolve** (keep one side of each, remove the markers; CI fails until then):",
        *(f"- `{name}`" for name in conflicts),
        "",
    ]


def body(versions: tuple[list[str], list[str]], notes: str, conflicts: list[str], branch_note: str) -> str:
    title, per_layer = versions
    lines = [*title]
    if branch_note:
        lines += [branch_note, ""]
    lines += conflicts_part(conflicts)
    lines += per_layer
    lines += [notes or "The template's CHANGELOG has no entry for these versions.", ""]
    lines += ["Made by `scripts/template_update.py`: `copier update`, then `uv lock`."]
    return "\n".join(lines)


def starting_point(*branches: str) -> str:
    """The commit the change is made from (the base), once the checkout allows it."""
    if run("git", "status", "--porcelain").strip():
        raise UpdateError("the working tree has uncommitted changes: commit or stash them first")
    here = run("git", "branch", "--show-current").strip()
    if any(here == branch or here.startswith(f"{branch}-") for branch in branches):
        raise UpdateError(f"you are on {here}: run the update from the branch it is for (e.g. main)")
    plan_file().unlink(missing_ok=True)  # a push deferred by an earlier run is not this one's
    return run("git", "rev-parse", "HEAD").strip()


def output_key(name: str) -> str:
    """A layer's name as a key CI can read (GitHub step outputs, a sourced shell file)."""
    return re.sub(r"\W", "_", name)


def goal(plan: Plan, moved: list[Plan]) -> str:
    """The release a layer is at once the update is made: its target, or where it is already."""
    return plan.target.tag if plan in moved else plan.current


def outputs(plans: list[Plan], moved: list[Plan], branch: str, conflicts: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for plan in plans:
        version = goal(plan, moved)
        if plan.layer.name == BASE:
            found |= {"version": version, "previous": plan.current, "conflicts": str(len(conflicts)), "branch": branch}
        else:
            key = output_key(plan.layer.name)
            found |= {f"{key}_version": version, f"{key}_previous": plan.current}
    return found


def update(args: argparse.Namespace) -> dict[str, str]:
    base = starting_point(args.branch, args.answers_branch)
    all_plans, skipped = plans(args.to)
    for note in skipped:
        print(f"template update: {note}", file=sys.stderr)
    moved = behind(all_plans)
    if not moved:
        newest = "the newest release" if len(all_plans) == 1 else "the newest releases"
        print(f"template update: already at {labelled(all_plans, recorded_now(all_plans))}, {newest}", file=sys.stderr)
        return outputs(all_plans, [], "", [])

    if args.push and not args.no_fetch:
        fetch(args.push, args.branch)
    branch = inspect(args.branch, base, args.push)
    note = ""
    if branch.head and branch.theirs:
        switch(branch.name, branch.head)
        if conflicted_files() and behind(all_plans):
            held = branch
            suffix = "-".join(p.target.tag if p.layer.name == BASE else f"{p.layer.name}-{p.target.tag}" for p in moved)
            branch = inspect(f"{args.branch}-{suffix}", base, args.push)
            note = (
                f"`{held.name}` holds {plural(held.theirs)} and still has unresolved conflicts, so this "
                f"update is on a new branch, `{branch.name}`, made from the base; `{held.name}` was left as "
                "it is: carry over what you need from it, and close its request once this one is merged."
            )
            switch(branch.name, branch.head if branch.theirs and branch.head else base)

    if branch.head and branch.theirs:
        head, conflicts, kept = on_top_of_theirs(branch, branch.head, all_plans)
        note = f"{note}\n\n{kept}".strip()
        force = False
    elif (
        branch.head
        and succeeds("git", "merge-base", "--is-ancestor", base, branch.head)
        and all(recorded_at(branch.head, "_commit", p.layer.answers) == goal(p, moved) for p in all_plans)
    ):
        # Made by an earlier run from this same base for these releases: nothing to redo.
        switch(branch.name, branch.head)
        head, conflicts, force = branch.head, conflicted_files(), True
    else:
        switch(branch.name, base)
        head, conflicts = update_commit(base, all_plans)
        force = True

    prefix = recorded("package_name").upper() + "_"
    notes = release_notes(all_plans, moved, prefix)
    text = body(versions_part(all_plans, moved, skipped), notes, conflicts, note)
    write_review(args.body, update_title(moved), text)
    deliver(args, branch, head, force=force)
    return outputs(all_plans, moved, branch.name, conflicts)


def on_top_of_theirs(branch: Branch, theirs: str, plans: list[Plan]) -> tuple[str, list[str], str]:
    """The update added to a branch holding the team's commits (head ``theirs``), from the
    releases that branch records."""
    switch(branch.name, theirs)
    start = recorded_now(plans)
    if not behind(plans):
        held = labelled(plans, start)
        return (
            theirs,
            conflicted_files(),
            f"`{branch.name}` already holds {held} and {plural(branch.theirs)}: this run added nothing.",
        )
    head, conflicts = update_commit(theirs, plans)
    targets = labelled(plans, (p.target.tag for p in plans))
    kept = (
        f"This update ({labelled(plans, start)} → {targets}) was added on top of {plural(branch.theirs)} on "
        f"`{branch.name}`; nothing of yours was changed or dropped. It ran from {labelled(plans, start)}, the "
        f"release{'s' if len(plans) > 1 else ''} that branch records."
    )
    return head, conflicts, kept


def deliver(args: argparse.Namespace, branch: Branch, head: str, *, force: bool) -> None:
    """Push the branch now, record the push for --push-deferred, or leave it local (no --push)."""
    if not args.push:
        return
    planned = {"remote": args.push, "branch": branch.name, "commit": head, "seen": branch.seen, "force": force}
    planned |= {"format": PLAN_FORMAT}
    if args.defer_push:
        plan_file().write_text(json.dumps(planned), encoding="utf-8")
    else:
        print(f"template update: {push(planned)}", file=sys.stderr)


# Answer changes (--data): at the release the project is on, on a branch of their own.


def questions(copier_yml: str) -> dict[str, str]:
    """The questions a copier.yml asks, name → type: its top-level keys, less settings
    (``_name``) and values it computes itself (``when: false``)."""
    asked = {}
    for block in re.split(r"^(?=[A-Za-z_])", copier_yml, flags=re.MULTILINE):
        name, colon, rest = block.partition(":")
        if not colon or not re.fullmatch(r"[A-Za-z]\w*", name) or re.search(r"^\s+when:\s*false\s*$", rest, re.M):
            continue
        kind = re.search(r"^\s+type:\s*(\w+)", rest, re.MULTILINE)
        asked[name] = kind[1] if kind else "str"
    return asked


def asked_by(layer: Layer) -> dict[str, str]:
    """The questions of the layer's template at the release the project records."""
    source, ref = recorded("_src_path", layer.answers), recorded("_commit", layer.answers)
    files = template_files(source, ref, "copier.yml", "copier.yaml")
    return questions(files.get("copier.yml") or files.get("copier.yaml", ""))


def owner(pairs: dict[str, str]) -> tuple[Layer, dict[str, str]]:
    """The layer whose template asks every question named (base first), and its questions."""
    asked: dict[Layer, dict[str, str]] = {}
    owners: dict[str, Layer] = {}
    for layer in layers():
        asked[layer] = asked_by(layer)
        owners |= {name: layer for name in pairs if name in asked[layer] and name not in owners}
        if len(owners) == len(pairs):
            break
    unknown = [name for name in pairs if name not in owners]
    if unknown:
        allowed = "; ".join(f"{layer.name}: {', '.join(sorted(names))}" for layer, names in asked.items())
        raise UpdateError(
            f"no template of this project asks {', '.join(unknown)}. The answers you can change: {allowed}"
        )
    found = {owners[name] for name in pairs}
    if len(found) > 1:
        raise UpdateError("these answers belong to different templates: change one template's answers at a time")
    layer = found.pop()
    return layer, asked[layer]


def refusal(stderr: str, pairs: dict[str, str], asked: dict[str, str]) -> str:
    """Copier's refusal of a value (the last line of its traceback), said in the project's terms."""
    said = stderr.strip().rpartition("ValueError: ")[2] if "ValueError: " in stderr else ""
    choice = re.fullmatch(r"Invalid choice for '(\w+)': .* is not in \[(.*)\]", said, re.DOTALL)
    if choice and choice[1] in pairs:
        allowed = ", ".join(re.findall(r"'([^']*)'", choice[2]))
        return f"{choice[1]}={pairs[choice[1]]} is not allowed: {choice[1]} is one of {allowed}"
    invalid = re.fullmatch(r"Validation error for question '(\w+)': (.*)", said, re.DOTALL)
    if invalid and invalid[1] in pairs:
        return f"{invalid[1]}={pairs[invalid[1]]} is not allowed: {invalid[2].strip()}"
    if said:
        given = " ".join(f"{name}={value}" for name, value in pairs.items())
        kinds = ", ".join(f"{name} takes a {asked[name]}" for name in pairs if asked.get(name, "str") != "str")
        return f"the template refused {given}: {said}" + (f" ({kinds})" if kinds else "")
    return f"copier update failed:\n{stderr.strip()}"


def copier_change(layer: Layer, pairs: dict[str, str], asked: dict[str, str]) -> None:
    """``copier update`` at the recorded release with the new answers; copier checks every
    answer before it writes, so a refused value leaves the tree as it was."""
    data = [part for name, value in pairs.items() for part in ("--data", f"{name}={value}")]
    command = [*COPIER, "update", *COPIER_FLAGS, "--answers-file", layer.answers.as_posix(), "--vcs-ref=:current:"]
    result = subprocess.run([*command, *data], capture_output=True, text=True, check=False)  # noqa: S603  # nosec B603
    if result.returncode != 0:
        raise UpdateError(refusal(result.stderr, pairs, asked))


def check_policy() -> None:
    """``--check-policy``: each rule of the tool policy (config/policy.toml and config/policy.d)
    whose principals no caller of this server can match, as start-up refuses it
    (``Policy.check_callers``), one line each. Runs in a fresh interpreter, on the project's code
    as the change left it."""
    package = recorded("package_name")
    sys.path.insert(0, "src")
    policy = importlib.import_module(f"{package}.security.policy")
    settings = importlib.import_module(f"{package}.settings.base")
    # The callers start-up allows for (service.assemble): certificates where the server asks for
    # them or federated peers present theirs, bearer tokens where the OAuth part serves.
    kinds: set[str] = set()
    if settings.CLIENT_CERTIFICATES or importlib.util.find_spec(f"{package}.peer"):
        kinds.add(policy.CERTIFICATE)
    if importlib.util.find_spec(f"{package}.security.oauth"):
        kinds.add(policy.TOKEN)
    try:
        loaded = policy.Policy.load(POLICY)
    except policy.PolicyError as exc:
        print(exc)
        return
    # One rule at a time, so that every refused rule is named, not only the first, each by the
    # file and index it was written at (config/policy.toml, or a file of config/policy.d).
    for origin, rule in zip(loaded.origins, loaded.document.allow, strict=True):
        try:
            policy.Policy(policy.PolicyDocument(allow=[rule]), origin[0], origins=[origin]).check_callers(kinds)
        except policy.PolicyError as exc:
            print(exc)


def policy_refusals() -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--check-policy"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603  # nosec B603
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return [
            f"the policy check could not run ({last}): `make install`, then `make dev` once shows what start-up says"
        ]
    return [line for line in result.stdout.splitlines() if line.strip()]


def answers_changed(before: dict[str, str], after: dict[str, str]) -> dict[str, tuple[str, str]]:
    names = sorted(name for name in before.keys() | after.keys() if not name.startswith("_"))
    return {name: (before.get(name, ""), after.get(name, "")) for name in names if before.get(name) != after.get(name)}


def answers_body(
    layer: Layer, version: str, changed: dict[str, tuple[str, str]], follow_up: list[str], conflicts: list[str]
) -> str:
    lines = [f"Template answers changed at {version} (`{layer.answers}`, the {layer.name} template):", ""]
    lines += [f"- `{name}`: {old or '(not set)'} → {new or '(not set)'}" for name, (old, new) in changed.items()]
    lines += ["", *conflicts_part(conflicts), "**What the project's checks ask for next:**", ""]
    lines += [f"- {step}" for step in follow_up]
    lines += ["", "Made by `scripts/template_update.py --data`: `copier update --vcs-ref=:current:`, then `uv lock`."]
    return "\n".join(lines)


def follow_up_steps(layer: Layer, pairs: dict[str, str], after: dict[str, str], lock_changed: bool) -> list[str]:
    steps = [
        f"`{name}` is not recorded: its question is asked only with other answers (its `when`)"
        for name in pairs
        if name not in after
    ]
    steps += [f"Fix the tool policy: the server refuses to start with `{line}`" for line in policy_refusals()]
    # copier update renders a layer's files again only when the layer itself changes: what a layer
    # wrote from this template's answers (_external_data) still shows the old ones.
    steps += [
        f"Check what the {other.name} layer wrote from the old answers (`{other.answers}`): copier leaves it as it was"
        for other in layers()
        if layer.name == BASE and other.name != BASE
    ]
    if lock_changed:
        steps.append("`uv.lock` changed (the answer adds or drops dependencies): `make install`")
    steps.append("`make check` on this branch before you merge it; review the whole diff")
    return steps


def change_answers(args: argparse.Namespace) -> dict[str, str]:
    base = starting_point(args.branch, args.answers_branch)
    pairs = dict(pair.split("=", 1) for pair in args.data)
    layer, asked = owner(pairs)
    before = answers_in(layer.answers.read_text(encoding="utf-8"))
    version = before.get("_commit", "")
    unchanged = {"version": recorded("_commit"), "previous": recorded("_commit"), "conflicts": "0", "branch": ""}
    if all(before.get(name) == value for name, value in pairs.items()):
        print("template update: these answers are recorded already: nothing to change", file=sys.stderr)
        return unchanged

    if args.push and not args.no_fetch:
        fetch(args.push, args.answers_branch)
    branch = inspect(args.answers_branch, base, args.push)
    if branch.head and branch.theirs:
        raise UpdateError(
            f"{branch.name} holds {plural(branch.theirs)}: merge it (or delete it) before the next answer change"
        )
    copier_change(layer, pairs, asked)  # here, on the base: a refused value has changed nothing
    if not run("git", "status", "--porcelain").strip():
        print("template update: the template renders these answers as before: nothing to change", file=sys.stderr)
        return unchanged
    run("git", "add", "-A")  # conflicts leave the index unmerged, which no checkout takes along
    switch(branch.name, base)  # the same commit: copier's changes come along
    run(*UV, "lock")
    conflicts = conflicted_files()
    after = answers_in(layer.answers.read_text(encoding="utf-8"))
    changed = answers_changed(before, after)
    lock_changed = bool(run("git", "status", "--porcelain", "--", "uv.lock").strip())
    follow_up = follow_up_steps(layer, pairs, after, lock_changed)
    given = " ".join(f"{name}={value}" for name, value in pairs.items())
    title = f"Change template answers: {given}"
    marked = title + (" (conflicts to resolve)" if conflicts else "")
    head = commit(base, marked, [f"{ANSWERS_TRAILER}: {layer.name} {given}"])
    write_review(args.body, title, answers_body(layer, version, changed, follow_up, conflicts))
    for step in follow_up:
        print(f"template update: next: {step}", file=sys.stderr)
    deliver(args, branch, head, force=True)
    return unchanged | {"conflicts": str(len(conflicts)), "branch": branch.name, "answers": ",".join(changed)}


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


def data_pair(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z]\w*=.*", text, re.DOTALL):
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=VALUE, e.g. auth_mode=oauth")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--to", help="a release tag of the template; default: the newest")
    parser.add_argument("--branch", default="template-update", help="the branch the update is committed on")
    parser.add_argument("--data", action="append", type=data_pair, metavar="NAME=VALUE", help="change an answer")
    parser.add_argument("--answers-branch", default="template-answers", help="the branch an answer change goes on")
    parser.add_argument("--push", metavar="REMOTE", help="fetch the branch from there, push it there (CI: origin)")
    parser.add_argument("--no-fetch", action="store_true", help="with --push: the caller fetched the branch")
    parser.add_argument("--defer-push", action="store_true", help="with --push: record the push for --push-deferred")
    parser.add_argument("--push-deferred", action="store_true", help="make the push an earlier --defer-push recorded")
    parser.add_argument("--body", type=Path, default=Path(".git/template-update.md"), help="where the PR body goes")
    parser.add_argument("--check-policy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if (args.no_fetch or args.defer_push) and not args.push:
        parser.error("--no-fetch and --defer-push go with --push REMOTE")
    if args.data and args.to:
        parser.error("--data changes answers at the release the project is on: update first (--to), then change them")
    try:
        if args.check_policy:
            check_policy()
            return 0
        if args.push_deferred:
            print(f"template update: {push_deferred()}", file=sys.stderr)
            return 0
        outputs = change_answers(args) if args.data else update(args)
    except UpdateError as exc:
        print(f"template update: {exc}", file=sys.stderr)
        return 2
    for key, value in outputs.items():
        print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
