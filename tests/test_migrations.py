"""Layout migrations: copier.yml's `_migrations` run hooks/migrate.py when an update crosses a
release that moved files, so a team's changes to a moved file reach its new place, once."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import ROOT
from copier import run_copy
from test_update import CACHE_CONTROL, FIX, HEADERS_MODULE, change, commit_all, git, template_repo, tree_without_commit

COPIER = str(Path(sys.executable).parent / "copier")
MIGRATE = ROOT / "hooks" / "migrate.py"
# The synthetic layout change of v1.1.0: the compliance matrix, which teams extend with their
# evidence, moves into a folder of its own.
OLD, NEW = "docs/compliance.md", "docs/compliance/controls.md"
MIGRATION = {
    "version": "v1.1.0",
    "command": [
        "{{ _copier_python }}",
        "{{ _copier_conf.src_path }}/hooks/migrate.py",
        "--answers-file",
        "{{ _copier_conf.answers_file }}",
        "move",
        OLD,
        NEW,
    ],
}
MIGRATED = f"migrate: {OLD} -> {NEW}: "
TEAM_SECTION = "\n## Our evidence\n\n- CC6.1: access reviews every quarter (SEC-123).\n"


def load_migrate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migrate", MIGRATE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_migration(template: Path, entry: dict[str, Any]) -> None:
    config = template / "copier.yml"
    text = config.read_text()
    assert text.count("\n_migrations: []\n") == 1, "copier.yml ships an empty _migrations list"
    listed = f"\n_migrations:\n  - version: {entry['version']}\n    command: {json.dumps(entry['command'])}\n"
    config.write_text(text.replace("\n_migrations: []\n", listed))


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree as v1.0.0; v1.1.0 moves docs/compliance.md to docs/compliance/controls.md
    (every reference follows, its own relative links too) with a `_migrations` entry; v1.1.1 is
    a fix that moves nothing."""
    template = template_repo(tmp_path_factory.mktemp("migrations") / "template")
    moved = template / "template" / f"{NEW}.jinja"
    moved.parent.mkdir(parents=True)
    git(template, "mv", f"template/{OLD}.jinja", f"template/{NEW}.jinja")
    moved.write_text(re.sub(r"\]\((?![a-z]+:|#|/)", "](../", moved.read_text()))
    for path in [template / "copier.yml", *(template / "template").rglob("*")]:
        if path.is_file() and OLD in (text := path.read_text(errors="replace")):
            path.write_text(text.replace(OLD, NEW))
    add_migration(template, MIGRATION)
    commit_all(template, "v1.1.0: the compliance matrix moves to docs/compliance/")
    git(template, "tag", "v1.1.0")
    change(template, [(HEADERS_MODULE, CACHE_CONTROL, CACHE_CONTROL + FIX)])
    commit_all(template, "v1.1.1: Permissions-Policy")
    git(template, "tag", "v1.1.1")
    return template


def copy_project(template: Path, destination: Path, ref: str) -> Path:
    run_copy(str(template), destination, defaults=True, skip_tasks=True, vcs_ref=ref, quiet=True)
    git(destination, "init", "--quiet", "--initial-branch=main")
    commit_all(destination, f"generated at {ref}")
    return destination


def copier_update(project: Path, ref: str, *, trust: bool = True) -> subprocess.CompletedProcess[str]:
    command = [COPIER, "update", "--defaults", "--conflict", "inline", "--vcs-ref", ref]
    command += ["--trust"] if trust else []
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600, check=False)


def migrate_by_hand(project: Path, *operations: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(MIGRATE), *operations]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=120, check=False)


def state(project: Path) -> tuple[dict[str, bytes], str]:
    """Every file and git's view of them (index included)."""
    return tree_without_commit(project), git(project, "status", "--porcelain")


def test_an_update_across_the_move_carries_the_teams_changes_once(releases: Path, tmp_path: Path) -> None:
    project = copy_project(releases, tmp_path / "project", "v1.0.0")
    (project / OLD).write_text((project / OLD).read_text() + TEAM_SECTION)
    commit_all(project, "our evidence")

    updated = copier_update(project, "v1.1.0")
    assert updated.returncode == 0, updated.stderr[-3000:]
    assert updated.stdout.count(MIGRATED) == 1, updated.stdout
    assert f"{MIGRATED}moved your changes\n" in updated.stdout
    assert not (project / OLD).exists()

    # Everything is the new release, and the moved file is the new release's with the team's section.
    fresh = tree_without_commit(copy_project(releases, tmp_path / "fresh", "v1.1.0"))
    files = tree_without_commit(project)
    assert sorted(files) == sorted(fresh)
    assert [name for name in fresh if name != NEW and files[name] != fresh[name]] == []
    assert files[NEW] == fresh[NEW] + TEAM_SECTION.encode()
    assert b"](../threat-model.md)" in files[NEW], "the release's own change to the moved file is kept"
    assert not any(OLD.encode() in content for content in files.values()), "no reference to the old path"
    assert "R  docs/compliance.md -> docs/compliance/controls.md" in git(project, "status", "--porcelain")

    # By hand, twice: nothing changes.
    before = state(project)
    for _ in range(2):
        again = migrate_by_hand(project, "move", OLD, NEW)
        assert again.returncode == 0, again.stderr
        assert again.stdout == f"{MIGRATED}nothing to do (already moved, or not part of this project)\n"
        assert state(project) == before

    # An update that does not cross v1.1.0 runs no migration.
    commit_all(project, "template v1.1.0")
    patched = copier_update(project, "v1.1.1")
    assert patched.returncode == 0, patched.stderr[-3000:]
    assert "migrate:" not in patched.stdout + patched.stderr
    assert FIX in (project / "src" / "acme_mcp_server" / "security" / "headers.py").read_text()
    assert (project / NEW).read_text().endswith(TEAM_SECTION)


def test_without_trust_copier_refuses_an_update_across_a_migration(releases: Path, tmp_path: Path) -> None:
    project = copy_project(releases, tmp_path / "project", "v1.0.0")
    refused = copier_update(project, "v1.1.0", trust=False)
    assert refused.returncode == 4
    assert "Template uses potentially unsafe feature: migrations." in refused.stderr
    assert "--trust" in refused.stderr
    assert git(project, "status", "--porcelain") == ""
    assert (project / OLD).is_file()

    # Only the update across the migration needs trust: the template has no tasks.
    later = copy_project(releases, tmp_path / "later", "v1.1.0")
    patched = copier_update(later, "v1.1.1", trust=False)
    assert patched.returncode == 0, patched.stderr[-3000:]
    assert FIX in (later / "src" / "acme_mcp_server" / "security" / "headers.py").read_text()


@pytest.mark.parametrize("source", ["shipped", "v1.1.0"])
def test_every_migration_is_gated_by_a_release_and_runs_the_script(releases: Path, source: str) -> None:
    root = ROOT if source == "shipped" else releases
    entries = yaml.safe_load((root / "copier.yml").read_text())["_migrations"]
    assert isinstance(entries, list)
    assert source == "shipped" or entries, "the synthetic release has its entry"
    migrate = load_migrate()
    for entry in entries:
        assert set(entry) == {"version", "command"}, "the default stage (after the update) and no condition"
        assert re.fullmatch(r"v\d+\.\d+\.\d+", entry["version"]), entry
        assert entry["command"][:4] == MIGRATION["command"][:4], entry
        assert migrate.parse(entry["command"][4:])


# hooks/migrate.py on its own, in a small git project made from a one-file template.


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A project from a template with notes/a.md, notes/b.md and c.md (tag v1), committed, with
    the team's own notes/mine.md beside them."""
    template = tmp_path / "template"
    (template / "template" / "notes").mkdir(parents=True)
    (template / "copier.yml").write_text("_subdirectory: template\nname:\n  type: str\n  default: x\n")
    (template / "template" / "{{_copier_conf.answers_file}}.jinja").write_text("{{ _copier_answers | to_nice_yaml }}")
    (template / "template" / "notes" / "a.md.jinja").write_text("# A {{ name }}\n\none\ntwo\nthree\n")
    (template / "template" / "notes" / "b.md").write_text("# B\n")
    (template / "template" / "c.md").write_text("# C\n\nalpha\nbeta\ngamma\n")
    git(template, "init", "--quiet", "--initial-branch=main")
    commit_all(template, "v1")
    git(template, "tag", "v1")
    project = copy_project(template, tmp_path / "project", "v1")
    (project / "notes" / "mine.md").write_text("ours\n")
    commit_all(project, "our note")
    return project


def test_move_renames_a_file_that_is_still_there_and_a_second_run_does_nothing(small: Path) -> None:
    moved = migrate_by_hand(small, "move", "c.md", "docs/c.md")
    assert moved.stdout == "migrate: c.md -> docs/c.md: moved\n"
    assert (small / "docs" / "c.md").read_text() == "# C\n\nalpha\nbeta\ngamma\n"
    assert not (small / "c.md").exists()
    assert "R  c.md -> docs/c.md" in git(small, "status", "--porcelain")
    before = state(small)
    again = migrate_by_hand(small, "move", "c.md", "docs/c.md")
    assert again.stdout == "migrate: c.md -> docs/c.md: nothing to do (already moved, or not part of this project)\n"
    assert state(small) == before


def test_move_leaves_both_files_when_both_exist(small: Path) -> None:
    (small / "docs").mkdir()
    (small / "docs" / "c.md").write_text("the team's own\n")
    before = state(small)
    both = migrate_by_hand(small, "move", "c.md", "docs/c.md")
    assert both.returncode == 0
    assert "both exist; left both as they are: merge c.md into docs/c.md yourself" in both.stdout
    assert state(small) == before


def update_moves(project: Path, old: str, new: str, release: str) -> None:
    """What `copier update` leaves when a release moved OLD to NEW: OLD deleted (not staged),
    the release's NEW written."""
    (project / old).unlink()
    (project / new).parent.mkdir(parents=True, exist_ok=True)
    (project / new).write_text(release)


def test_move_keeps_the_teams_file_when_the_project_had_the_new_path_already(small: Path) -> None:
    (small / "c.md").write_text("# C\n\nalpha (ours)\n")
    (small / "docs").mkdir()
    (small / "docs" / "c.md").write_text("our own docs/c.md\n")
    commit_all(small, "our files")
    update_moves(small, "c.md", "docs/c.md", "what the update made of docs/c.md\n")
    before = state(small)
    for _ in range(2):
        both = migrate_by_hand(small, "move", "c.md", "docs/c.md")
        assert "both exist; left both as they are" in both.stdout, both.stderr
        assert (small / "c.md").read_text() == "# C\n\nalpha (ours)\n", "the team's old file is back"
        assert (small / "docs" / "c.md").read_text() == "what the update made of docs/c.md\n"
    assert state(small)[0] == {**before[0], "c.md": b"# C\n\nalpha (ours)\n"}


def test_move_merges_the_teams_changes_into_the_releases_file(small: Path) -> None:
    (small / "c.md").write_text("# C\n\nalpha\nbeta\ngamma\ndelta (ours)\n")
    commit_all(small, "our line")
    update_moves(small, "c.md", "docs/c.md", "# C, moved\n\nalpha\nbeta\ngamma\n")
    moved = migrate_by_hand(small, "move", "c.md", "docs/c.md")
    assert moved.stdout == "migrate: c.md -> docs/c.md: moved your changes\n", moved.stderr
    assert (small / "docs" / "c.md").read_text() == "# C, moved\n\nalpha\nbeta\ngamma\ndelta (ours)\n"
    status = git(small, "status", "--porcelain")
    assert "D  c.md" in status or "R  c.md -> docs/c.md" in status
    before = state(small)
    assert "nothing to do" in migrate_by_hand(small, "move", "c.md", "docs/c.md").stdout
    assert state(small) == before


def test_move_leaves_conflict_markers_where_both_changed_a_line(small: Path) -> None:
    (small / "c.md").write_text("# C\n\nalpha\nBETA (ours)\ngamma\n")
    commit_all(small, "our change")
    update_moves(small, "c.md", "docs/c.md", "# C\n\nalpha\nbeta (the release's)\ngamma\n")
    moved = migrate_by_hand(small, "move", "c.md", "docs/c.md")
    assert "moved your changes; 1 conflict(s) in docs/c.md: resolve the markers" in moved.stdout
    text = (small / "docs" / "c.md").read_text()
    assert "<<<<<<< before updating\nBETA (ours)\n=======\nbeta (the release's)\n>>>>>>> after updating\n" in text
    status = git(small, "status", "--porcelain")
    assert "D  c.md" in status and "?? docs/" in status, "the conflicted file is left unstaged"


def test_move_keeps_the_releases_file_when_the_team_had_not_changed_it(small: Path) -> None:
    update_moves(small, "c.md", "docs/c.md", "# C, moved\n\nalpha\nbeta\ngamma\n")
    moved = migrate_by_hand(small, "move", "c.md", "docs/c.md")
    assert moved.stdout == "migrate: c.md -> docs/c.md: moved (you had not changed it: the release's version)\n"
    assert (small / "docs" / "c.md").read_text() == "# C, moved\n\nalpha\nbeta\ngamma\n"


def test_move_takes_a_folder_file_by_file(small: Path) -> None:
    (small / "notes" / "a.md").write_text((small / "notes" / "a.md").read_text() + "four (ours)\n")
    commit_all(small, "our line")
    # The update removed the template's files of notes/ and wrote them under docs/notes/; the
    # team's own notes/mine.md stays where it was.
    update_moves(small, "notes/a.md", "docs/notes/a.md", "# A x\n\none\ntwo\nthree\n")
    update_moves(small, "notes/b.md", "docs/notes/b.md", "# B (moved)\n")
    moved = migrate_by_hand(small, "move", "notes", "docs/notes")
    assert moved.stdout.splitlines() == [
        "migrate: notes/a.md -> docs/notes/a.md: moved your changes",
        "migrate: notes/b.md -> docs/notes/b.md: moved (you had not changed it: the release's version)",
        "migrate: notes/mine.md -> docs/notes/mine.md: moved",
    ], moved.stderr
    assert (small / "docs" / "notes" / "a.md").read_text().endswith("three\nfour (ours)\n")
    assert (small / "docs" / "notes" / "mine.md").read_text() == "ours\n"
    assert not (small / "notes").exists()
    before = state(small)
    assert "nothing to do" in migrate_by_hand(small, "move", "notes", "docs/notes").stdout
    assert state(small) == before


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "no operation given"),
        (["copy", "a", "b"], "unknown operation 'copy'"),
        (["move", "a"], "move takes 2 relative paths"),
        (["move", "/etc/passwd", "b"], "move takes 2 relative paths"),
        (["move", "a", "../outside"], "paths stay inside the project"),
    ],
)
def test_a_malformed_operation_is_refused_before_anything_moves(small: Path, words: list[str], message: str) -> None:
    before = state(small)
    refused = migrate_by_hand(small, *words)
    assert refused.returncode == 1
    assert message in refused.stderr
    assert state(small) == before
