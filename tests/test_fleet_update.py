"""The generated fleet update (scripts/template_update.py, which the scheduled CI job and
`make template-update` run) and the conflict guard (scripts/check_conflicts.py), against real
git history: a template with two releases, a project at the older one, a bare remote on disk."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
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

- Nothing to do.

"""
HEADERS = Path("src/acme_mcp_server/security/headers.py")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree as v1.0.0, and a hardening fix on top as v1.0.1 with its CHANGELOG."""
    template = template_repo(tmp_path_factory.mktemp("fleet") / "template")
    headers = template / HEADERS_MODULE
    line = '    (b"cache-control", b"no-store"),\n'
    headers.write_text(headers.read_text().replace(line, line + FIX))
    changelog = template / "CHANGELOG.md"
    text = changelog.read_text()
    changelog.write_text(text.replace("## [Unreleased]", "## [Unreleased]\n\n" + CHANGELOG_101.rstrip() + "\n\n", 1))
    commit_all(template, "Permissions-Policy")
    git(template, "tag", "v1.0.1")
    return template


def project_at_v100(template: Path, destination: Path) -> tuple[Path, Path]:
    """A project copied at v1.0.0 and committed, pushed to a bare ``origin`` beside it."""
    project = destination / "project"
    run_copy(str(template), project, defaults=True, unsafe=True, vcs_ref="v1.0.0", quiet=True)
    commit_all(project, "generated")
    remote = destination / "origin.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(remote)], check=True)
    git(project, "remote", "add", "origin", str(remote))
    git(project, "push", "--quiet", "origin", "main")
    return project, remote


def update(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COPIER": COPIER, "UV": UV, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    command = [sys.executable, "scripts/template_update.py", *args]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False)


def outputs(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def guard(project: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "scripts/check_conflicts.py"]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, check=False)


def test_the_update_job_pushes_a_branch_whose_body_puts_the_security_fix_first(template: Path, tmp_path: Path) -> None:
    project, remote = project_at_v100(template, tmp_path)
    result = outputs(update(project, "--push", "origin"))
    assert result == {"version": "v1.0.1", "previous": "v1.0.0", "conflicts": "0", "branch": "template-update"}

    pushed = git(remote, "show", f"template-update:{HEADERS}")
    assert FIX in pushed
    assert git(remote, "log", "-1", "--format=%s", "template-update").strip() == "Update template to v1.0.1"
    assert "_commit: v1.0.1" in git(remote, "show", "template-update:.copier-answers.yml")
    assert git(remote, "rev-parse", "main") == git(project, "rev-parse", "main"), "main is left alone"
    body = (project / ".git" / "template-update.md").read_text()
    assert body.index("### Security (v1.0.1)") < body.index("### Fixed (v1.0.1)")
    assert SECURITY_NOTE in body
    assert "Unreleased" not in body
    assert guard(project).returncode == 0


def test_an_up_to_date_project_gets_no_branch(template: Path, tmp_path: Path) -> None:
    project, remote = project_at_v100(template, tmp_path)
    assert outputs(update(project, "--to", "v1.0.0"))["branch"] == ""
    assert "template-update" not in git(remote, "branch")


def test_a_conflicting_team_edit_is_named_and_the_guard_fails_until_resolved(template: Path, tmp_path: Path) -> None:
    project, _ = project_at_v100(template, tmp_path)
    headers = project / HEADERS
    headers.write_text(
        headers.read_text().replace(
            '    (b"cache-control", b"no-store"),\n', '    (b"cache-control", b"no-store, private"),\n'
        )
    )
    commit_all(project, "our cache policy")

    result = outputs(update(project))
    assert result["conflicts"] == "1"
    body = (project / ".git" / "template-update.md").read_text()
    assert f"- `{HEADERS}`" in body
    refused = guard(project)
    assert refused.returncode == 1
    assert f"{HEADERS}:" in refused.stdout
    text = headers.read_text()
    assert "no-store, private" in text and FIX in text, "both sides are shown"

    # The reviewer keeps both changes and removes the markers.
    kept = [line for line in text.splitlines(keepends=True) if not line.startswith(("<<<<<<< ", "=======", ">>>>>>> "))]
    headers.write_text("".join(line for line in kept if line != '    (b"cache-control", b"no-store"),\n'))
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
