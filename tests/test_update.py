"""`copier update` brings a template fix into an existing project and keeps the project's own
code; a project updated to a release is, file for file, a fresh copy of that release."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CUSTOM, ROOT, project_venv, run_in
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


# v1.1.0 of the shared history: a change in files of every architecture, as (file, old, new).
# Each old text must be there exactly once, so a template change that moves it fails here.
CACHE_CONTROL = '    (b"cache-control", b"no-store"),\n'
FRAME_OPTIONS = '    "x-frame-options": "DENY",\n'
RELEASE_110 = [
    # Every project: the Permissions-Policy header, and the project's own test of it.
    (HEADERS_MODULE, CACHE_CONTROL, CACHE_CONTROL + FIX),
    ("template/tests/test_http_edge.py", FRAME_OPTIONS, FRAME_OPTIONS + '    "permissions-policy": "()",\n'),
    # Relaying projects only (hub-and-spoke, federated).
    ("template/src/{{package_name}}/upstream.py", "MAX_TOOL_PAGES = 20\n", "MAX_TOOL_PAGES = 50\n"),
    # One architecture each.
    ("template/docs/hub-and-spoke.md.jinja", "the hub polls.\n", "the hub polls each spoke's tool list.\n"),
    ("template/docs/federated.md.jinja", "between the peers.\n", "between the peers (see deployment.md).\n"),
]


def change(template: Path, changes: list[tuple[str, str, str]]) -> None:
    for name, old, new in changes:
        path = template / name
        content = path.read_text()
        assert content.count(old) == 1, f"{name}: {old!r} is not there exactly once"
        path.write_text(content.replace(old, new))


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree as v1.0.0 and a later release, v1.1.0, that changes files of every
    architecture (RELEASE_110)."""
    template = template_repo(tmp_path_factory.mktemp("releases") / "template")
    change(template, RELEASE_110)
    commit_all(template, "v1.1.0: Permissions-Policy, a larger tool-list bound")
    git(template, "tag", "v1.1.0")
    return template


def test_update_merges_a_template_fix_and_keeps_local_changes(releases: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    run_copy(str(releases), project, defaults=True, unsafe=True, vcs_ref="v1.0.0", quiet=True)
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

    # v1.1.0 ships the Permissions-Policy fix.
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
    # `make install` or `make lock` writes uv.lock, copier never does.
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


# One project per architecture, with answers unlike the defaults and unlike each other's.
ARCHITECTURES = [
    {
        "architecture": "standalone",
        "auth_mode": "mtls+oauth",
        "cloud": "azure",
        "service_mesh": "linkerd",
        "ci_provider": "gitlab",
    },
    {
        **CUSTOM,
        "architecture": "hub-and-spoke",
        "auth_mode": "oauth",
        "cloud": "aws",
        "service_mesh": "istio",
        "spokes": ["public", "restricted"],
    },
    {
        "architecture": "federated",
        "auth_mode": "mtls",
        "cloud": "gcp",
        "ci_provider": "gitlab",
        "federation_peers": ["north", "south"],
        "python_version": "3.13",
    },
]


@dataclass(frozen=True)
class Updated:
    answers: dict[str, Any]
    path: Path
    venv: Path
    before: dict[str, bytes]  # copied at v1.0.0
    after: dict[str, bytes]  # updated to v1.1.0, before any check wrote its caches


def copy_at(template: Path, destination: Path, answers: dict[str, Any], ref: str) -> Path:
    run_copy(str(template), destination, data=answers, defaults=True, skip_tasks=True, vcs_ref=ref, quiet=True)
    return destination


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(
            answers, id=answers["architecture"], marks=pytest.mark.xdist_group("update-" + answers["architecture"])
        )
        for answers in ARCHITECTURES
    ],
)
def updated(request: pytest.FixtureRequest, releases: Path, tmp_path_factory: pytest.TempPathFactory) -> Updated:
    """A project copied at v1.0.0, committed, and updated to v1.1.0."""
    answers: dict[str, Any] = request.param
    project = copy_at(releases, tmp_path_factory.mktemp("updated") / "project", answers, "v1.0.0")
    before = tree_without_commit(project)
    git(project, "init", "--quiet", "--initial-branch=main")
    commit_all(project, "generated at v1.0.0")
    run_update(project, defaults=True, overwrite=True, unsafe=True, vcs_ref="v1.1.0", quiet=True, conflict="inline")
    return Updated(answers, project, project_venv(project), before, tree_without_commit(project))


def test_a_project_updated_to_a_release_is_exactly_a_fresh_copy_of_it(
    updated: Updated, releases: Path, tmp_path: Path
) -> None:
    fresh = tree_without_commit(copy_at(releases, tmp_path / "fresh", updated.answers, "v1.1.0"))
    assert sorted(updated.after) == sorted(fresh)
    assert [name for name in fresh if updated.after[name] != fresh[name]] == []
    assert yaml.safe_load((updated.path / ".copier-answers.yml").read_text())["_commit"] == "v1.1.0"

    # The release reached this architecture's files, and nothing else changed.
    package = yaml.safe_load(updated.after[".copier-answers.yml"])["package_name"]
    architecture = updated.answers["architecture"]
    expected = {f"src/{package}/security/headers.py", "tests/test_http_edge.py"}
    if architecture != "standalone":
        expected |= {f"src/{package}/upstream.py", f"docs/{architecture}.md"}
    assert {name for name in fresh if updated.before.get(name) != fresh[name]} == expected


# The release's own changed test modules. The updated tree is byte for byte a fresh copy, and
# the whole suite of every combination (the relays' too) runs in test_generated.py: running
# test_hub.py or test_federation.py again here would add minutes to make test and prove nothing new.
def suites_of_the_release(updated: Updated) -> list[str]:
    changed = [name for name in updated.after if updated.before.get(name) != updated.after[name]]
    return [name for name in changed if name.startswith("tests/test_")]


@pytest.mark.parametrize("check", ["ruff", "ruff-format", "mypy-strict", "pytest"])
def test_the_updated_project_passes_its_own_checks(updated: Updated, check: str) -> None:
    command = {
        "ruff": ("ruff", "check", "."),
        "ruff-format": ("ruff", "format", "--check", "."),
        "mypy-strict": ("mypy",),  # strict = true in the project's pyproject.toml
        "pytest": ("pytest", "-q", "-p", "no:cacheprovider", *suites_of_the_release(updated)),
    }[check]
    result = run_in(updated.path, updated.venv, *command)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    if check == "pytest":
        assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]
