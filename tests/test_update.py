"""`copier update` brings a template fix into an existing project and keeps the project's own code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from copier import run_copy, run_update

HEADERS_MODULE = "template/src/{{package_name}}/security/headers.py"
FIX = '    (b"permissions-policy", b"()"),\n'


def git(directory: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, check=True)
    return result.stdout


def template_repo(destination: Path) -> Path:
    """This checkout's working tree as a fresh git repository tagged v1.0.0."""
    tracked = git(ROOT, "ls-files", "--cached", "--others", "--exclude-standard").splitlines()
    for name in tracked:
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    git(destination, "init", "--quiet", "--initial-branch=main")
    git(destination, "add", "-A")
    git(destination, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "v1")
    git(destination, "tag", "v1.0.0")
    return destination


def commit_all(directory: Path, message: str) -> None:
    """Commit everything; a project copier just wrote becomes a repository first (`git init -b
    main`, the user's step: the template runs no task)."""
    if not (directory / ".git").exists():
        git(directory, "init", "--quiet", "--initial-branch=main")
    git(directory, "add", "-A")
    git(directory, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", message)


def test_update_merges_a_template_fix_and_keeps_local_changes(tmp_path: Path) -> None:
    template = template_repo(tmp_path / "template")
    project = tmp_path / "project"
    run_copy(str(template), project, defaults=True, unsafe=True, vcs_ref="v1.0.0", quiet=True)
    commit_all(project, "generated")

    # The team adds its own tool and grants it.
    server = project / "src" / "acme_mcp_server" / "server.py"
    server.write_text(
        server.read_text().replace(
            "    return server\n",
            "    @server.tool()\n    def team_tool() -> str:\n        return 'ours'\n\n    return server\n",
        )
    )
    policy = project / "config" / "policy.toml"
    policy.write_text(policy.read_text() + '\n[[allow]]\nprincipals = ["*"]\ntools = ["team_tool"]\n')
    commit_all(project, "our tool")

    # The template ships a hardening fix as v1.1.0.
    headers = template / HEADERS_MODULE
    text = headers.read_text()
    headers.write_text(
        text.replace('    (b"cache-control", b"no-store"),\n', f'    (b"cache-control", b"no-store"),\n{FIX}')
    )
    commit_all(template, "add Permissions-Policy")
    git(template, "tag", "v1.1.0")

    run_update(project, defaults=True, overwrite=True, unsafe=True, vcs_ref="v1.1.0", quiet=True, conflict="inline")

    assert FIX in (project / "src" / "acme_mcp_server" / "security" / "headers.py").read_text()
    assert "def team_tool() -> str:" in server.read_text()
    assert 'tools = ["team_tool"]' in policy.read_text()
    assert not list(project.rglob("*.rej"))
    assert "<<<<<<<" not in server.read_text()
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["_commit"] == "v1.1.0"


# The last template commit before the restructure that gave each answer one place (computed
# answers, _exclude, includes, kustomize Components, one module per topology). Projects made
# from it must update to the working tree with nothing lost. Move it to the newest release
# once releases exist.
BEFORE_RESTRUCTURE = "e63e2b5"


def tree_without_commit(project: Path) -> dict[str, bytes]:
    files = {
        str(path.relative_to(project)): path.read_bytes()
        for path in project.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(project).parts
    }
    # The copy task locks (uv.lock, when uv is on PATH); an update leaves that to `uv lock`.
    files.pop("uv.lock", None)
    answers = files[".copier-answers.yml"].splitlines()
    files[".copier-answers.yml"] = b"\n".join(line for line in answers if not line.startswith(b"_commit:"))
    return files


@pytest.fixture(scope="module")
def two_releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repository's history with the pre-restructure commit tagged v0.9.0 and the working
    tree committed on top as v1.0.0."""
    reachable = ["git", "-C", str(ROOT), "cat-file", "-e", f"{BEFORE_RESTRUCTURE}^{{commit}}"]
    if subprocess.run(reachable, capture_output=True, check=False).returncode:
        pytest.skip(f"this clone's history does not reach {BEFORE_RESTRUCTURE} (shallow clone)")
    template = tmp_path_factory.mktemp("releases") / "template"
    subprocess.run(["git", "clone", "--quiet", "--no-local", str(ROOT), str(template)], check=True)
    git(template, "tag", "v0.9.0", BEFORE_RESTRUCTURE)
    for name in git(template, "ls-files").splitlines():
        (template / name).unlink()
    current = template_repo(tmp_path_factory.mktemp("current"))
    for name in git(current, "ls-files").splitlines():
        (template / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(current / name, template / name)
    git(template, "add", "-A")
    # Empty when the working tree has nothing uncommitted: HEAD itself is then v1.0.0.
    git(template, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "--allow-empty", "-m", "tree")
    git(template, "tag", "v1.0.0")
    return template


@pytest.mark.parametrize(
    "answers",
    [
        {"architecture": "standalone", "auth_mode": "mtls"},
        {"architecture": "hub-and-spoke", "auth_mode": "oauth", "cloud": "aws", "service_mesh": "istio"},
        {"architecture": "federated", "auth_mode": "mtls+oauth", "cloud": "gcp", "ci_provider": "gitlab"},
    ],
    ids=lambda answers: answers["architecture"],
)
def test_a_project_from_before_the_restructure_updates_to_exactly_a_fresh_copy(
    two_releases: Path, tmp_path: Path, answers: dict[str, str]
) -> None:
    updated, fresh = tmp_path / "updated", tmp_path / "fresh"
    run_copy(str(two_releases), updated, data=answers, defaults=True, unsafe=True, vcs_ref="v0.9.0", quiet=True)
    commit_all(updated, "generated at v0.9.0")
    run_update(updated, defaults=True, overwrite=True, unsafe=True, vcs_ref="v1.0.0", quiet=True, conflict="inline")
    run_copy(str(two_releases), fresh, data=answers, defaults=True, unsafe=True, vcs_ref="v1.0.0", quiet=True)
    before, after = tree_without_commit(updated), tree_without_commit(fresh)
    assert sorted(before) == sorted(after)
    assert [name for name in before if before[name] != after[name]] == []
    assert yaml.safe_load((updated / ".copier-answers.yml").read_text())["_commit"] == "v1.0.0"
