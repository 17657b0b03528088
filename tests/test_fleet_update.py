"""The generated fleet update (scripts/template_update.py, which the scheduled CI job and
`make template-update` run) and the conflict guard (scripts/check_conflicts.py), against real
git history: a template with two (or three) releases, a project at the oldest, a bare remote on
disk, and clones of it for the team and for each CI run."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, UV
from copier import run_copy
from test_update import FIX, HEADERS_MODULE, commit_all, git, template_repo

COPIER = str(Path(sys.executable).parent / "copier")
SECURITY_NOTE = "- Every response carries `Permissions-Policy: ()`."
CHANGELOG_101 = f"""## [1.0.1] - 2026-12-05

### Security

{SECURITY_NOTE}

### Fixed

- A typo in the docs.

### Upgrading

- `<PREFIX>REQUEST_HEAD_TIMEOUT_SECONDS` may be lowered to 5.

"""
CHANGELOG_102 = """## [1.0.2] - 2026-12-06

### Changed

- `<PREFIX>MAX_REQUEST_HEAD_BYTES` defaults to 8 KiB.

### Upgrading

- Nothing to do.

"""
HEADERS = Path("src/acme_mcp_server/security/headers.py")
SECURITY_LINE = "Security fixes reach projects through `make template-update`."
CACHE_LINE = '    (b"cache-control", b"no-store"),\n'
TEAM_CACHE_LINE = '    (b"cache-control", b"no-store, private"),\n'
MARKERS = ("<<<<<<< ", "||||||| ", "=======", ">>>>>>> ")


def release(template: Path, tag: str, changelog: str) -> None:
    """Commit the working tree of ``template`` with ``changelog`` as its newest section, tag it."""
    path = template / "CHANGELOG.md"
    text = path.read_text()
    path.write_text(text.replace("## [Unreleased]", "## [Unreleased]\n\n" + changelog.rstrip() + "\n\n", 1))
    commit_all(template, tag)
    git(template, "tag", tag)


def release_v101(template: Path) -> None:
    """A hardening fix: a header added right after the line a team may have changed."""
    headers = template / HEADERS_MODULE
    headers.write_text(headers.read_text().replace(CACHE_LINE, CACHE_LINE + FIX))
    release(template, "v1.0.1", CHANGELOG_101)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree as v1.0.0, and a hardening fix on top as v1.0.1 with its CHANGELOG."""
    template = template_repo(tmp_path_factory.mktemp("fleet") / "template")
    release_v101(template)
    return template


@pytest.fixture(scope="module")
def template3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1.0.0, v1.0.1 as above, and v1.0.2, which changes a file no team edits here."""
    template = template_repo(tmp_path_factory.mktemp("fleet3") / "template")
    release_v101(template)
    security = template / "template" / "SECURITY.md.jinja"
    security.write_text(security.read_text() + f"\n{SECURITY_LINE}\n")
    release(template, "v1.0.2", CHANGELOG_102)
    return template


# The copies at v1.0.0, by the tree of the template's v1.0.0: the fixtures' templates build the
# same v1.0.0 from this working tree (in commits of their own), so one copy serves them all.
COPIES_AT_V100: dict[str, Path] = {}


def copy_at_v100(template: Path) -> Path:
    """The copy at v1.0.0 of ``template``: made once per v1.0.0 tree, the same for every test."""
    tree = git(template, "rev-parse", "v1.0.0^{tree}").strip()
    if tree not in COPIES_AT_V100:
        copy = Path(tempfile.mkdtemp(prefix="fleet-v1.0.0-")) / "project"
        atexit.register(shutil.rmtree, copy.parent, True)
        run_copy(str(template), copy, defaults=True, unsafe=True, vcs_ref="v1.0.0", quiet=True)
        COPIES_AT_V100[tree] = copy
    return COPIES_AT_V100[tree]


def project_at_v100(template: Path, destination: Path) -> tuple[Path, Path]:
    """A project copied at v1.0.0 and committed, pushed to a bare ``origin`` beside it."""
    project = destination / "project"
    shutil.copytree(copy_at_v100(template), project, symlinks=True)
    answers = project / ".copier-answers.yml"  # the copy may be of another fixture's template
    source = yaml.safe_load(answers.read_text())["_src_path"]
    answers.write_text(answers.read_text().replace(f"_src_path: {source}\n", f"_src_path: {template}\n"))
    assert yaml.safe_load(answers.read_text())["_src_path"] == str(template)
    commit_all(project, "generated")
    remote = destination / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(remote)], check=True)
    git(project, "remote", "add", "origin", str(remote))
    git(project, "push", "--quiet", "origin", "main")
    return project, remote


def update(project: Path, *args: str, uv: str = UV, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    """The script as make runs it; ``python``: the interpreter (make's is the project's venv)."""
    env = {**os.environ, "COPIER": COPIER, "UV": uv, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    command = [python, "scripts/template_update.py", *args]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False)


def outputs(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def guard(project: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "scripts/check_conflicts.py"]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)


def our_cache_policy(project: Path) -> None:
    """The team changes the line next to which v1.0.1 adds its header, on main."""
    headers = project / HEADERS
    headers.write_text(headers.read_text().replace(CACHE_LINE, TEAM_CACHE_LINE))
    commit_all(project, "our cache policy")


def resolve(headers: Path) -> None:
    """The reviewer keeps both changes (the team's cache policy, the template's new header)."""
    lines = headers.read_text().splitlines(keepends=True)
    headers.write_text("".join(line for line in lines if not line.startswith(MARKERS) and line != CACHE_LINE))


def clone(remote: Path, destination: Path, branch: str = "main") -> Path:
    """A fresh clone: a teammate's, or the checkout of a CI run (every branch fetched)."""
    subprocess.run(["git", "clone", "--quiet", "--branch", branch, str(remote), str(destination)], check=True)
    git(destination, "config", "user.name", "teammate")
    git(destination, "config", "user.email", "teammate@example.com")
    return destination


def head(repository: Path, ref: str = "template-update") -> str:
    return git(repository, "rev-parse", ref).strip()


def is_ancestor(repository: Path, commit: str, ref: str) -> bool:
    command = ["git", "-C", str(repository), "merge-base", "--is-ancestor", commit, ref]
    return subprocess.run(command, check=False).returncode == 0


def body_of(project: Path) -> str:
    return " ".join((project / ".git" / "template-update.md").read_text().split())


def test_the_update_job_pushes_a_branch_whose_body_puts_the_security_fix_first(template: Path, tmp_path: Path) -> None:
    project, remote = project_at_v100(template, tmp_path)
    result = outputs(update(project, "--push", "origin"))
    assert result == {"version": "v1.0.1", "previous": "v1.0.0", "conflicts": "0", "branch": "template-update"}

    pushed = git(remote, "show", f"template-update:{HEADERS}")
    assert FIX in pushed
    message = git(remote, "log", "-1", "--format=%B", "template-update")
    assert message.startswith("Update template to v1.0.1\n"), message
    assert "\nTemplate-Update: v1.0.1\n" in message, "the script's own commits are marked"
    assert "_commit: v1.0.1" in git(remote, "show", "template-update:.copier-answers.yml")
    assert git(remote, "rev-parse", "main") == git(project, "rev-parse", "main"), "main is left alone"
    body = (project / ".git" / "template-update.md").read_text()
    assert body.index("### Security (v1.0.1)") < body.index("### Fixed (v1.0.1)")
    assert SECURITY_NOTE in body
    assert "Unreleased" not in body
    # The CHANGELOG's <PREFIX> is this project's own environment prefix (package_name + "_").
    assert "- `ACME_MCP_SERVER_REQUEST_HEAD_TIMEOUT_SECONDS` may be lowered to 5." in body
    assert "<PREFIX>" not in body
    assert guard(project).returncode == 0


def test_an_up_to_date_project_gets_no_branch(template: Path, tmp_path: Path) -> None:
    project, remote = project_at_v100(template, tmp_path)
    assert outputs(update(project, "--to", "v1.0.0"))["branch"] == ""
    assert "template-update" not in git(remote, "branch")


def test_a_conflicting_team_edit_is_named_and_the_guard_fails_until_resolved(template: Path, tmp_path: Path) -> None:
    project, _ = project_at_v100(template, tmp_path)
    headers = project / HEADERS
    our_cache_policy(project)

    result = outputs(update(project))
    assert result["conflicts"] == "1"
    body = (project / ".git" / "template-update.md").read_text()
    assert f"- `{HEADERS}`" in body
    refused = guard(project)
    assert refused.returncode == 1
    assert f"{HEADERS}:" in refused.stdout
    text = headers.read_text()
    assert "no-store, private" in text and FIX in text, "both sides are shown"

    resolve(headers)
    assert guard(project).returncode == 0


def test_the_guard_fails_on_a_rejected_hunk_and_on_markers_in_any_text_file(template: Path, tmp_path: Path) -> None:
    project, _ = project_at_v100(template, tmp_path)
    (project / "config" / "policy.toml.rej").write_text("@@ -1 +1 @@\n")
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\n<<<<<<< before updating\nours\n=======\ntheirs\n>>>>>>> after updating\n")
    refused = guard(project)
    assert refused.returncode == 1
    assert "config/policy.toml.rej: rejected hunk" in refused.stdout
    assert "README.md:" in refused.stdout
    # A Markdown heading underline alone is no conflict.
    readme.write_text("Title\n=======\n")
    (project / "config" / "policy.toml.rej").unlink()
    assert guard(project).returncode == 0


def test_the_update_runs_the_copier_this_repository_pins() -> None:
    """One copier version: the template's own dev pin is the one generated projects update with."""
    pinned = re.search(r'"copier==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    makefile = re.search(r"^COPIER_VERSION := (\S+)$", (ROOT / "template" / "Makefile.jinja").read_text(), re.MULTILINE)
    assert pinned and makefile
    assert makefile[1] == pinned[1]


def test_a_resolution_the_team_pushed_survives_the_next_runs(template3: Path, tmp_path: Path) -> None:
    """The update job leaves a conflict; the team resolves it on the branch and pushes; the job
    runs again (no newer release, then a newer one): the resolution stays on the remote branch."""
    project, remote = project_at_v100(template3, tmp_path)
    our_cache_policy(project)
    git(project, "push", "--quiet", "origin", "main")
    first = outputs(update(project, "--to", "v1.0.1", "--push", "origin"))
    assert first == {"version": "v1.0.1", "previous": "v1.0.0", "conflicts": "1", "branch": "template-update"}

    team = clone(remote, tmp_path / "team", "template-update")
    resolve(team / HEADERS)
    commit_all(team, "keep our cache policy and the new header")
    git(team, "push", "--quiet", "origin", "template-update")
    resolution = head(team)
    resolved = (team / HEADERS).read_text()

    # No newer release: the branch already holds v1.0.1 and the resolution; nothing is redone.
    # (The GitHub workflow's way: the checkout fetched every branch, the push is a later step.)
    ci = clone(remote, tmp_path / "ci-1")
    again = outputs(update(ci, "--to", "v1.0.1", "--push", "origin", "--no-fetch", "--defer-push"))
    assert again == {"version": "v1.0.1", "previous": "v1.0.0", "conflicts": "0", "branch": "template-update"}
    assert outputs(update(ci, "--push-deferred")) == {}
    assert head(remote) == resolution
    assert "already holds v1.0.1 and 1 commit of yours: this run added nothing" in body_of(ci)

    # A newer release: added on top of the resolution (GitLab's way: fetch, update, push later).
    ci = clone(remote, tmp_path / "ci-2")
    newer = outputs(update(ci, "--push", "origin", "--defer-push"))
    assert newer == {"version": "v1.0.2", "previous": "v1.0.0", "conflicts": "0", "branch": "template-update"}
    assert head(remote) == resolution, "nothing is pushed before --push-deferred"
    outputs(update(ci, "--push-deferred"))
    assert is_ancestor(remote, resolution, "template-update"), "the team's commit is kept"
    assert git(remote, "rev-parse", "template-update~1").strip() == resolution, "a plain push on top"
    assert git(remote, "show", f"template-update:{HEADERS}") == resolved, "its resolution is intact"
    assert not any(line.startswith(MARKERS) for line in resolved.splitlines())
    assert SECURITY_LINE in git(remote, "show", "template-update:SECURITY.md"), "v1.0.2 is in"
    assert "_commit: v1.0.2" in git(remote, "show", "template-update:.copier-answers.yml")
    assert "\nTemplate-Update: v1.0.2\n" in git(remote, "log", "-1", "--format=%B", "template-update")
    assert guard(ci).returncode == 0, "no marker came back anywhere"
    body = body_of(ci)
    assert "This update (v1.0.1 → v1.0.2) was added on top of 1 commit of yours on `template-update`" in body
    assert "- `ACME_MCP_SERVER_MAX_REQUEST_HEAD_BYTES` defaults to 8 KiB." in body
    assert SECURITY_NOTE in body, "the body covers everything the request brings to main: v1.0.0 → v1.0.2"


def test_a_branch_with_unresolved_conflicts_gets_the_next_release_on_a_branch_of_its_own(
    template3: Path, tmp_path: Path
) -> None:
    project, remote = project_at_v100(template3, tmp_path)
    our_cache_policy(project)
    git(project, "push", "--quiet", "origin", "main")
    assert outputs(update(project, "--to", "v1.0.1", "--push", "origin"))["conflicts"] == "1"
    team = clone(remote, tmp_path / "team", "template-update")
    (team / "NOTES.md").write_text("Resolving the headers conflict tomorrow.\n")
    commit_all(team, "notes")
    git(team, "push", "--quiet", "origin", "template-update")
    held = head(team)

    ci = clone(remote, tmp_path / "ci")
    result = outputs(update(ci, "--push", "origin"))
    assert result == {"version": "v1.0.2", "previous": "v1.0.0", "conflicts": "1", "branch": "template-update-v1.0.2"}
    assert head(remote) == held, "the team's branch is left as it is"
    assert head(remote, "template-update-v1.0.2~1") == head(remote, "main"), "made from the base"
    assert "_commit: v1.0.2" in git(remote, "show", "template-update-v1.0.2:.copier-answers.yml")
    body = body_of(ci)
    assert "`template-update` holds 1 commit of yours and still has unresolved conflicts" in body
    assert "on a new branch, `template-update-v1.0.2`" in body


def test_a_branch_of_only_the_updates_own_commits_is_made_again(template3: Path, tmp_path: Path) -> None:
    project, remote = project_at_v100(template3, tmp_path)
    outputs(update(project, "--to", "v1.0.1", "--push", "origin"))
    first = head(remote)
    refused = update(project, "--push", "origin")
    assert refused.returncode == 2
    assert "you are on template-update: run the update from the branch it is for" in refused.stderr

    # Nothing changed since: the branch is left as it is (no new commit, no push).
    git(project, "checkout", "--quiet", "main")
    outputs(update(project, "--to", "v1.0.1", "--push", "origin"))
    assert head(remote) == first

    # main moved on and v1.0.2 is out: the branch is made again from the new main.
    git(project, "checkout", "--quiet", "main")
    (project / "README.md").write_text((project / "README.md").read_text() + "\nOur own note.\n")
    commit_all(project, "a note")
    git(project, "push", "--quiet", "origin", "main")
    assert outputs(update(project, "--push", "origin"))["version"] == "v1.0.2"
    assert head(remote, "template-update~1") == head(remote, "main")
    assert not is_ancestor(remote, first, "template-update"), "the old update was replaced"
    assert "_commit: v1.0.2" in git(remote, "show", "template-update:.copier-answers.yml")


def test_a_branch_merged_by_squash_is_made_again_not_added_to(template3: Path, tmp_path: Path) -> None:
    """The team resolved on the branch and squash-merged it: its commits are not in main by
    ancestry, but merging the branch would change nothing, so the next release starts afresh."""
    project, remote = project_at_v100(template3, tmp_path)
    our_cache_policy(project)
    git(project, "push", "--quiet", "origin", "main")
    outputs(update(project, "--to", "v1.0.1", "--push", "origin"))
    team = clone(remote, tmp_path / "team", "template-update")
    resolve(team / HEADERS)
    commit_all(team, "keep our cache policy and the new header")
    git(team, "push", "--quiet", "origin", "template-update")
    git(team, "checkout", "--quiet", "main")
    git(team, "merge", "--quiet", "--squash", "origin/template-update")
    commit_all(team, "Update template to v1.0.1 (#12)")
    git(team, "push", "--quiet", "origin", "main")

    ci = clone(remote, tmp_path / "ci")
    result = outputs(update(ci, "--push", "origin"))
    assert result == {"version": "v1.0.2", "previous": "v1.0.1", "conflicts": "0", "branch": "template-update"}
    assert head(remote, "template-update~1") == head(remote, "main")
    assert "on top of" not in body_of(ci)


def test_a_push_that_lands_during_the_update_is_never_overwritten(template3: Path, tmp_path: Path) -> None:
    project, remote = project_at_v100(template3, tmp_path)
    outputs(update(project, "--to", "v1.0.1", "--push", "origin"))
    git(project, "checkout", "--quiet", "main")
    team = clone(remote, tmp_path / "team", "template-update")
    # A teammate pushes to the branch while the update runs (here: while it runs `uv lock`).
    meanwhile = tmp_path / "uv-meanwhile.sh"
    meanwhile.write_text(
        f'git -C "{team}" commit --quiet --allow-empty -m "pushed meanwhile" &&\n'
        f'git -C "{team}" push --quiet origin template-update || exit 1\n'
        f'exec "{UV}" "$@"\n'
    )

    # The branch holds only the update's commit: it is to be replaced, with a lease that refuses.
    refused = update(project, "--push", "origin", uv=f"sh {meanwhile}")
    assert refused.returncode == 2, refused.stderr
    assert "origin/template-update changed while the update ran" in refused.stderr
    assert "nothing was overwritten" in refused.stderr
    assert "Traceback" not in refused.stderr
    theirs = head(team)
    assert head(remote) == theirs

    # Now it holds a teammate's commit: the update goes on top, and a plain push is refused too
    # when another commit lands between the update and its deferred push.
    git(project, "checkout", "--quiet", "main")
    on_top = outputs(update(project, "--push", "origin", "--defer-push"))
    assert on_top["branch"] == "template-update"
    git(team, "commit", "--quiet", "--allow-empty", "-m", "pushed before the deferred push")
    git(team, "push", "--quiet", "origin", "template-update")
    refused = update(project, "--push-deferred")
    assert refused.returncode == 2, refused.stderr
    assert "origin/template-update changed while the update ran" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert head(remote) == head(team)

    # Run again, as the message says: every teammate's commit is kept.
    git(project, "checkout", "--quiet", "main")
    assert outputs(update(project, "--push", "origin"))["version"] == "v1.0.2"
    assert is_ancestor(remote, head(team), "template-update")
    assert is_ancestor(remote, theirs, "template-update")


def test_the_guard_names_each_conflict_of_a_real_update_once(template: Path, tmp_path: Path) -> None:
    """``copier update --conflict inline`` records a conflicted file in the index three times
    (base, ours, theirs) and, with git's diff3 style, writes a base section too: one finding."""
    project, _ = project_at_v100(template, tmp_path)
    our_cache_policy(project)
    diff3 = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "merge.conflictStyle", "GIT_CONFIG_VALUE_0": "diff3"}
    command = [COPIER, "update", "--trust", "--defaults", "--skip-answered", "--conflict", "inline"]
    subprocess.run(
        [*command, "--vcs-ref", "v1.0.1", "--quiet"], cwd=project, env=os.environ | diff3, check=True, timeout=600
    )
    assert len(git(project, "ls-files", "--stage", str(HEADERS)).splitlines()) == 3
    text = (project / HEADERS).read_text()
    assert "||||||| last update" in text
    opening = text.splitlines().index("<<<<<<< before updating") + 1

    refused = guard(project)
    assert refused.returncode == 1
    assert refused.stdout.splitlines() == [f"{HEADERS}:{opening}: unresolved conflict; keep one side, drop the markers"]
    assert "1 unresolved conflict(s)" in refused.stderr


NESTED = """x = [
<<<<<<< before updating
<<<<<<< before updating
    "ours",
=======
    "base",
=======
    "newer",
>>>>>>> after updating
    "theirs",
>>>>>>> after updating
]
"""


def test_the_guard_counts_nested_separate_and_half_removed_conflicts(template: Path, tmp_path: Path) -> None:
    """A second update over a file still holding markers nests them (the shape copier wrote
    here): one conflict. Two conflicts are two; a marker left alone is one."""
    project, _ = project_at_v100(template, tmp_path)
    nested = project / "nested.py"
    nested.write_text(NESTED)
    assert guard(project).stdout.splitlines() == ["nested.py:2: unresolved conflict; keep one side, drop the markers"]
    nested.write_text(NESTED + NESTED.replace("x =", "y ="))
    assert [line.split(": ")[0] for line in guard(project).stdout.splitlines()] == ["nested.py:2", "nested.py:14"]
    nested.write_text("x = [\n    'ours',\n>>>>>>> after updating\n]\n")
    left = guard(project)
    assert left.returncode == 1
    assert left.stdout.splitlines() == [
        "nested.py:3: conflict marker without the rest of its conflict; finish resolving, drop the marker"
    ]
    nested.write_text("x = [\n<<<<<<< before updating\n    'ours',\n]\n")
    assert guard(project).stdout.startswith("nested.py:2: conflict marker without the rest")
