"""The generated update (scripts/template_update.py) over two layers, this template and an
organisation's template applied on top of it (answers in .copier-answers.org.yml), and the
answer changes it makes as reviewed changes (--data), against real git history on disk."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import UV, project_venv
from copier import run_copy
from test_fleet_update import (
    HEADERS,
    SECURITY_NOTE,
    body_of,
    clone,
    guard,
    head,
    outputs,
    project_at_v100,
    release_v101,
    update,
)
from test_update import FIX, commit_all, git, template_repo

LAYER_COPIER = """\
_subdirectory: template
_answers_file: .copier-answers.org.yml
_external_data:
  base: .copier-answers.yml

org_team:
  type: str
  help: The team that owns this server
  default: platform
"""
ANSWERS_TEMPLATE = "# Changes here will be overwritten by Copier\n{{ _copier_answers|to_nice_yaml -}}\n"
# The layer's own file: it reads the base template's answers (_external_data).
ORG_TOML = """\
# Organisation settings for {{ _external_data.base.package_name }}.
owner = "{{ org_team }}"
region = "eu"

# Kept as the organisation sets them:
retention_days = 30
log_format = "json"
support = "platform@example.com"
tier = "standard"
pager = "none"
audit_sink = "syslog"
"""
ORG_SECURITY = '- Audit events go to the SIEM (`audit_sink = "siem"`), not to local syslog.'
ORG_CHANGELOG_010 = """# Changelog

## [Unreleased]

## [0.1.0] - 2026-11-01

### Added

- The organisation layer: config/org.toml.
"""
ORG_CHANGELOG_020 = f"""## [0.2.0] - 2026-12-06

### Security

{ORG_SECURITY}

### Changed

- `<PREFIX>ORG_REGION` overrides `region` at start-up.

"""
ORG_TOML_PATH = Path("config/org.toml")
TEAM_DOCSTRING = ('"""The HTTP edge: a request id', '"""The HTTP edge (ours): a request id')
TEAM_REGION = ('region = "eu"', 'region = "us"')
TEAM_RULE = """
[[allow]]
description = "Our payments service may refund."
principals = ["spiffe://mcp.example.com/payments"]
tools = ["refund"]
"""


def tagged_repository(destination: Path, files: dict[str, str], tag: str | None) -> Path:
    for name, text in files.items():
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        (destination / name).write_text(text)
    commit_all(destination, tag or "untagged")
    if tag:
        git(destination, "tag", tag)
    return destination


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This template: the working tree as v1.0.0, a hardening fix as v1.0.1."""
    template = template_repo(tmp_path_factory.mktemp("layers") / "template")
    release_v101(template)
    return template


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An organisation's layer: v0.1.0 writes config/org.toml; v0.2.0 sends audit events to
    the SIEM (a Security entry in its CHANGELOG)."""
    layer = tmp_path_factory.mktemp("org-layer") / "layer"
    files = {
        "copier.yml": LAYER_COPIER,
        "CHANGELOG.md": ORG_CHANGELOG_010,
        "template/{{_copier_conf.answers_file}}.jinja": ANSWERS_TEMPLATE,
        "template/config/org.toml.jinja": ORG_TOML,
    }
    tagged_repository(layer, files, "v0.1.0")
    changelog = ORG_CHANGELOG_010.replace("## [Unreleased]\n", f"## [Unreleased]\n\n{ORG_CHANGELOG_020.rstrip()}\n")
    files = {"CHANGELOG.md": changelog, "template/config/org.toml.jinja": ORG_TOML.replace('"syslog"', '"siem"')}
    return tagged_repository(layer, files, "v0.2.0")


@pytest.fixture(scope="module")
def untagged_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A layer whose repository has no release tag yet."""
    files = {
        "copier.yml": "_subdirectory: template\n_answers_file: .copier-answers.corp.yml\n",
        "template/{{_copier_conf.answers_file}}.jinja": ANSWERS_TEMPLATE,
        "template/CORP.md": "Corporate notes.\n",
    }
    return tagged_repository(tmp_path_factory.mktemp("corp-layer") / "layer", files, None)


def layered_project(template: Path, layer: Path, destination: Path) -> tuple[Path, Path]:
    """A project at v1.0.0 with the layer applied at v0.1.0 on top, committed and pushed."""
    project, remote = project_at_v100(template, destination)
    run_copy(str(layer), project, defaults=True, unsafe=True, vcs_ref="v0.1.0", quiet=True)
    commit_all(project, "the organisation layer")
    git(project, "push", "--quiet", "origin", "main")
    return project, remote


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: {old!r}"
    path.write_text(text.replace(old, new))


def test_one_run_brings_both_layers_keeps_the_teams_edits_and_puts_both_security_sections_first(
    template: Path, layer: Path, tmp_path: Path
) -> None:
    project, remote = layered_project(template, layer, tmp_path)
    assert "acme_mcp_server" in (project / ORG_TOML_PATH).read_text(), "the layer read the base's answers"
    edit(project / HEADERS, *TEAM_DOCSTRING)
    edit(project / ORG_TOML_PATH, *TEAM_REGION)
    commit_all(project, "our edits, in a file of each template")
    git(project, "push", "--quiet", "origin", "main")

    started = time.monotonic()
    result = outputs(update(project, "--push", "origin"))
    print(f"update time for both layers: {time.monotonic() - started:.1f} s")
    assert result == {
        "version": "v1.0.1",
        "previous": "v1.0.0",
        "conflicts": "0",
        "branch": "template-update",
        "org_version": "v0.2.0",
        "org_previous": "v0.1.0",
    }

    # One commit on main, with both releases and the team's edits in it.
    assert head(remote, "template-update~1") == head(remote, "main")
    headers = git(remote, "show", f"template-update:{HEADERS}")
    assert FIX in headers and TEAM_DOCSTRING[1] in headers
    org = git(remote, "show", f"template-update:{ORG_TOML_PATH}")
    assert 'audit_sink = "siem"' in org and TEAM_REGION[1] in org
    assert "_commit: v1.0.1" in git(remote, "show", "template-update:.copier-answers.yml")
    assert "_commit: v0.2.0" in git(remote, "show", "template-update:.copier-answers.org.yml")
    assert git(remote, "ls-tree", "--name-only", "template-update", "uv.lock").strip() == "uv.lock", "locked once"
    message = git(remote, "log", "-1", "--format=%B", "template-update")
    assert message.startswith("Update template to v1.0.1, org to v0.2.0\n"), message
    assert "\nTemplate-Update: v1.0.1\nTemplate-Update-Layer: org v0.2.0\nTemplate-Update-Tree: " in message
    assert guard(project).returncode == 0

    # The review text: a heading per layer, then every Security section (both layers), then the rest.
    text = (project / ".git" / "template-update.md").read_text()
    assert text.startswith("Template update: base v1.0.0 → v1.0.1, org v0.1.0 → v0.2.0.\n")
    title = (project / ".git" / "template-update.title").read_text()
    assert title == "Update template to v1.0.1, org to v0.2.0\n", "the request's title, for CI"
    assert "## base: v1.0.0 → v1.0.1" in text and "## org: v0.1.0 → v0.2.0" in text
    # (This template's v1.0.1 section also holds what its CHANGELOG has under Unreleased.)
    sections = [line for line in text.splitlines() if line.startswith("### ")]
    security = [line for line in sections if line.startswith("### Security ")]
    assert sections[: len(security)] == security, "every Security section comes first"
    assert security[0] == "### Security (base v1.0.1)" and security[-1] == "### Security (org v0.2.0)"
    assert {"### Fixed (base v1.0.1)", "### Changed (org v0.2.0)"} <= set(sections)
    assert text.index(SECURITY_NOTE) < text.index(ORG_SECURITY) < text.index("### Fixed (base v1.0.1)")
    assert SECURITY_NOTE in text and ORG_SECURITY in text
    assert "`ACME_MCP_SERVER_ORG_REGION` overrides" in text, "<PREFIX> in the layer's CHANGELOG too"
    assert "0.1.0" not in "".join(sections), "only what the update brings"

    # The next run, with nothing newer: the branch is left as it is.
    git(project, "checkout", "--quiet", "main")
    pushed = head(remote)
    again = outputs(update(project, "--push", "origin"))
    assert again["branch"] == "template-update"
    assert head(remote) == pushed


def test_a_release_of_the_layer_alone_gets_a_branch_and_an_untagged_layer_is_skipped(
    template: Path, layer: Path, untagged_layer: Path, tmp_path: Path
) -> None:
    project, remote = layered_project(template, layer, tmp_path)
    run_copy(str(untagged_layer), project, defaults=True, unsafe=True, vcs_ref="HEAD", quiet=True)
    commit_all(project, "the corporate layer")

    # This template stays at v1.0.0 (--to): only the layer has a release to bring.
    ran = update(project, "--to", "v1.0.0")
    result = outputs(ran)
    assert result["branch"] == "template-update"
    assert (result["version"], result["previous"]) == ("v1.0.0", "v1.0.0")
    assert (result["org_version"], result["org_previous"]) == ("v0.2.0", "v0.1.0")
    assert "corp_version" not in result
    assert f"corp (`.copier-answers.corp.yml`) was skipped: {untagged_layer} has no release tags" in ran.stderr

    message = git(project, "log", "-1", "--format=%B", "template-update")
    assert message.startswith("Update org to v0.2.0\n"), message
    assert "\nTemplate-Update: v1.0.0\nTemplate-Update-Layer: org v0.2.0\n" in message
    assert 'audit_sink = "siem"' in (project / ORG_TOML_PATH).read_text()
    assert FIX not in (project / HEADERS).read_text(), "this template was not updated"
    body = body_of(project)
    assert "## base: v1.0.0 (unchanged)" in body
    assert "## org: v0.1.0 → v0.2.0" in body
    assert (project / ".git" / "template-update.title").read_text() == "Update org to v0.2.0\n"
    assert "### Security (org v0.2.0)" in body
    assert "was skipped" in body
    assert "template-update" not in git(remote, "branch"), "no --push: nothing pushed"

    # Once the layer is merged, nothing is left to do for it.
    git(project, "checkout", "--quiet", "main")
    git(project, "merge", "--quiet", "--ff-only", "template-update")
    assert outputs(update(project, "--to", "v1.0.0"))["branch"] == ""


def test_a_layer_update_the_team_added_to_is_kept_and_the_next_release_goes_on_top(
    template: Path, layer: Path, tmp_path: Path
) -> None:
    """The trailers mark the layer's update as the script's own (made again, not added to);
    once a teammate pushes to the branch, the next release goes on top, with a plain push."""
    project, remote = layered_project(template, layer, tmp_path)
    first = outputs(update(project, "--to", "v1.0.0", "--push", "origin"))
    assert (first["branch"], first["org_version"]) == ("template-update", "v0.2.0")
    git(project, "checkout", "--quiet", "main")
    team = clone(remote, tmp_path / "team", "template-update")
    edit(team / ORG_TOML_PATH, *TEAM_REGION)
    commit_all(team, "our region, on the update branch")
    git(team, "push", "--quiet", "origin", "template-update")
    theirs = head(team)

    ci = clone(remote, tmp_path / "ci")
    result = outputs(update(ci, "--push", "origin", "--defer-push"))
    assert (result["version"], result["org_version"], result["branch"]) == ("v1.0.1", "v0.2.0", "template-update")
    outputs(update(ci, "--push-deferred"))
    assert git(remote, "rev-parse", "template-update~1").strip() == theirs, "a plain push on top of theirs"
    org = git(remote, "show", f"template-update:{ORG_TOML_PATH}")
    assert TEAM_REGION[1] in org and 'audit_sink = "siem"' in org
    assert "_commit: v1.0.1" in git(remote, "show", "template-update:.copier-answers.yml")
    message = git(remote, "log", "-1", "--format=%B", "template-update")
    assert message.startswith("Update template to v1.0.1\n"), message
    assert "\nTemplate-Update: v1.0.1\nTemplate-Update-Layer: org v0.2.0\n" in message
    text = body_of(ci)
    assert (
        "This update (base v1.0.0, org v0.2.0 → base v1.0.1, org v0.2.0) was added on top of 1 commit of yours" in text
    )
    assert "### Security (org v0.2.0)" in text, "the body covers all the request brings to main"


def answers_of(text: str) -> dict[str, object]:
    return yaml.safe_load(text)


def test_an_answer_change_is_a_reviewed_change_with_a_fresh_lock_and_the_checks_next_steps(
    template: Path, layer: Path, tmp_path: Path
) -> None:
    """DATA="auth_mode=oauth" through the script, at the release the project is on (v1.0.0,
    although v1.0.1 is out): its own branch, uv.lock with the OAuth dependency, and a body that
    names each changed answer, the rule the server would now refuse at start-up, and the layer
    that rendered the old answers."""
    project, remote = layered_project(template, layer, tmp_path)
    (project / "config" / "policy.toml").write_text((project / "config" / "policy.toml").read_text() + TEAM_RULE)
    subprocess.run([UV, "lock", "--quiet"], cwd=project, check=True, timeout=600)
    commit_all(project, "our payments rule, locked")
    git(project, "push", "--quiet", "origin", "main")
    # make runs the script in the project's venv (uv run): the policy check imports the project.
    python = str(project_venv(project, groups=()) / "bin" / "python")
    main = head(project, "main")

    # What the template refuses changes nothing, and says what is allowed.
    refused = update(project, "--data", "auth_mode=kerberos", python=python)
    assert refused.returncode == 2, refused.stderr
    assert "auth_mode=kerberos is not allowed: auth_mode is one of mtls, oauth, mtls+oauth" in refused.stderr
    unknown = update(project, "--data", "colour=blue", python=python)
    assert unknown.returncode == 2, unknown.stderr
    assert "no template of this project asks colour. The answers you can change: base: " in unknown.stderr
    assert "auth_mode" in unknown.stderr and "uses_oauth" not in unknown.stderr, "computed values are not answers"
    assert "Traceback" not in refused.stderr + unknown.stderr
    assert git(project, "status", "--porcelain") == ""
    assert git(project, "branch", "--show-current").strip() == "main"

    ran = update(project, "--data", "auth_mode=oauth", "--push", "origin", python=python)
    result = outputs(ran)
    assert result["branch"] == "template-answers"
    assert (result["version"], result["conflicts"]) == ("v1.0.0", "0")
    assert result["answers"].split(",")[0] == "auth_mode"
    assert head(remote, "template-answers~1") == main
    assert head(remote, "main") == main, "main is left alone"

    recorded = answers_of(git(remote, "show", "template-answers:.copier-answers.yml"))
    assert (recorded["auth_mode"], recorded["_commit"]) == ("oauth", "v1.0.0"), "at the release it is on"
    assert (project / "src" / "acme_mcp_server" / "security" / "oauth.py").is_file()
    lock = git(remote, "show", "template-answers:uv.lock")
    assert 'name = "pyjwt"' in lock, "uv lock ran after the change"
    assert git(remote, "diff", "--name-only", "main", "template-answers", "--", "uv.lock").strip() == "uv.lock"
    locked = subprocess.run([UV, "lock", "--locked"], cwd=project, capture_output=True, text=True, check=False)
    assert locked.returncode == 0, locked.stderr
    message = git(remote, "log", "-1", "--format=%B", "template-answers")
    assert message.startswith("Change template answers: auth_mode=oauth\n"), message
    assert "\nTemplate-Answers: base auth_mode=oauth\nTemplate-Update-Tree: " in message

    body = body_of(project)
    assert "Template answers changed at v1.0.0 (`.copier-answers.yml`, the base template):" in body
    assert "- `auth_mode`: mtls → oauth" in body
    assert "- `oauth_resource_url`: (not set) → https://mcp.example.com/mcp" in body
    refusal = (
        "config/policy.toml: allow.2.principals: 'spiffe://mcp.example.com/payments' can never match: "
        "no client presents a certificate to this server: name callers by token (sub:<sub>, client_id:<id>)"
    )
    assert f"Fix the tool policy: the server refuses to start with `{refusal}`" in body
    assert "allow.0" not in body and "allow.1" not in body, "the template's own rules changed with the answer"
    assert "`uv.lock` changed" in body
    assert "Check what the org layer wrote from the old answers (`.copier-answers.org.yml`)" in body
    assert refusal in ran.stderr, "said on the terminal too"


def test_an_answer_of_the_layer_is_changed_by_the_layer_and_answers_of_two_templates_are_refused(
    template: Path, layer: Path, tmp_path: Path
) -> None:
    project, _ = layered_project(template, layer, tmp_path)
    python = str(project_venv(project, groups=()) / "bin" / "python")
    mixed = update(project, "--data", "auth_mode=oauth", "--data", "org_team=security", python=python)
    assert mixed.returncode == 2
    assert "these answers belong to different templates: change one template's answers at a time" in mixed.stderr

    result = outputs(update(project, "--data", "org_team=security", python=python))
    assert (result["branch"], result["answers"]) == ("template-answers", "org_team")
    assert answers_of((project / ".copier-answers.org.yml").read_text())["org_team"] == "security"
    assert 'owner = "security"' in (project / ORG_TOML_PATH).read_text()
    assert "_commit: v0.1.0" in (project / ".copier-answers.org.yml").read_text(), "at the release it is on"
    body = body_of(project)
    assert "Template answers changed at v0.1.0 (`.copier-answers.org.yml`, the org template):" in body
    assert "- `org_team`: platform → security" in body
    assert "Check what the org layer wrote" not in body
    assert "\nTemplate-Answers: org org_team=security\n" in git(project, "log", "-1", "--format=%B")


def test_the_makefile_passes_each_data_pair(template: Path, tmp_path: Path) -> None:
    project, _ = project_at_v100(template, tmp_path)
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "template-update", "DATA=auth_mode=oauth rate_limit_per_minute=300"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "template_update.py  --data 'auth_mode=oauth' --data 'rate_limit_per_minute=300' \n" in dry.stdout
