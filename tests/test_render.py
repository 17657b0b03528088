"""Every combination of answers renders to a complete, clean tree."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CUSTOM, ROOT, combo_id, covering, questions, render, single_choices
from pymarkdown.api import PyMarkdownApi

# Every combination of cloud, architecture and auth mode, the answers that shape most files. The
# others take their choices in turn: the Python version changes only a few pins; the CI provider
# only the pipeline files, which tests/test_ci.py checks per provider; the service mesh only
# deploy/k8s, the Makefile and docs, and tests/test_mesh.py renders every cloud x mesh pair.
MATRIX = covering("cloud", "architecture", "auth_mode")
UNRENDERED = re.compile(r"\{\{ |\{%|%\}| \}\}")
# GitHub Actions expressions, ${{ ... }}, are meant to stay in the workflows.
ACTIONS_EXPRESSION = re.compile(r"\$\{\{ [^}]* \}\}")


@pytest.fixture(scope="module", params=MATRIX, ids=combo_id)
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    answers = {**CUSTOM, **request.param}
    return render(tmp_path_factory.mktemp("render") / "project", answers), answers


def files(project: Path) -> list[Path]:
    return [path for path in project.rglob("*") if path.is_file() and ".git" not in path.parts]


def test_matrix_covers_every_offered_choice() -> None:
    for name, choices in single_choices().items():
        assert {answers[name] for answers in MATRIX} == set(choices), name


def test_no_unrendered_jinja_or_template_suffix(rendered: tuple[Path, dict[str, Any]]) -> None:
    project, _ = rendered
    leftovers = [
        str(path)
        for path in files(project)
        if UNRENDERED.search(ACTIONS_EXPRESSION.sub("", path.read_text())) or path.suffix == ".jinja"
    ]
    assert leftovers == []


def markdown_files(project: Path) -> list[Path]:
    return [path for path in files(project) if path.suffix == ".md"]


# A heading glued to the end of the line before it (a Jinja tag that ate the newline) is no heading.
GLUED_HEADING = re.compile(r"[^\s#`]#{2,6} \S")


# What pymarkdown found in each file content: most docs are the same in many renders, and the
# same content lints the same.
_LINTED: dict[str, list[str]] = {}


def lint_failures(path: Path) -> list[str]:
    key = hashlib.sha256(path.read_bytes()).hexdigest()
    if key not in _LINTED:
        # Long lines are the docs' tables and links; every other rule of pymarkdown applies.
        result = PyMarkdownApi().disable_rule_by_identifier("md013").scan_path(str(path))
        _LINTED[key] = [f"{f.line_number} {f.rule_id} {f.rule_description}" for f in result.scan_failures]
    return [f"{path}:{failure}" for failure in _LINTED[key]]


def test_rendered_markdown_passes_the_linter_and_has_no_glued_heading(rendered: tuple[Path, dict[str, Any]]) -> None:
    project, _ = rendered
    paths = markdown_files(project)
    assert [failure for path in paths for failure in lint_failures(path)] == []
    glued = []
    for path in paths:
        fenced = False
        for number, line in enumerate(path.read_text().splitlines(), 1):
            fenced ^= line.lstrip().startswith("```")
            if not fenced and GLUED_HEADING.search(line):
                glued.append(f"{path.relative_to(project)}:{number}: {line}")
    assert glued == []


def test_toml_and_yaml_parse(rendered: tuple[Path, dict[str, Any]]) -> None:
    project, answers = rendered
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "payments-risk-gateway"
    assert tomllib.loads((project / "config" / "policy.toml").read_text())["allow"]
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    for name, value in answers.items():
        assert recorded[name] == value


def settings_sources(project: Path) -> str:
    """The settings modules together: one per answer, under src/<package>/settings/."""
    package = project / "src" / "payments_risk_gateway"
    return "\n".join(path.read_text() for path in sorted((package / "settings").glob("*.py")))


def test_answers_reach_the_code(rendered: tuple[Path, dict[str, Any]]) -> None:
    project, answers = rendered
    settings = settings_sources(project)
    assert f"default={answers['rate_limit_per_minute']}," in settings
    assert f'"{answers["domain"]}",' in settings
    assert (project / ".python-version").read_text().strip() == answers["python_version"]
    policy = (project / "config" / "policy.toml").read_text()
    if "mtls" in answers["auth_mode"]:
        assert f"spiffe://{answers['domain']}/client/operator" in policy
    if "oauth" in answers["auth_mode"]:
        assert 'scopes = ["sessions:revoke"]' in policy
        assert f'oauth_resource_url: str = "https://{answers["domain"]}/mcp"' in settings


def test_each_auth_mode_gets_only_its_own_code(tmp_path: Path) -> None:
    """An answer's effect stays in its own files: no OAuth code in an mTLS project, no
    client CA in a token-only one."""
    for mode in ("mtls", "oauth", "mtls+oauth"):
        project = render(tmp_path / mode, {"auth_mode": mode})
        package = project / "src" / "acme_mcp_server"
        sources = "\n".join(path.read_text() for path in package.rglob("*.py"))
        assert ((package / "security" / "oauth.py").exists()) == ("oauth" in mode)
        assert ((package / "settings" / "oauth.py").exists()) == ("oauth" in mode)
        assert ((package / "settings" / "client_ca.py").exists()) == ("mtls" in mode)
        assert ("tls_client_ca_file" in sources) == ("mtls" in mode)
        assert (project / "scripts" / "dev_issuer.py").exists() == ("oauth" in mode)
        assert (project / "tests" / "test_client_certificates.py").exists() == ("mtls" in mode)
        assert ("pyjwt" in (project / "pyproject.toml").read_text()) == ("oauth" in mode)


# The files only one architecture has (package files under src/<package>/).
ARCHITECTURE_FILES = {
    "hub-and-spoke": {
        "src/payments_risk_gateway/hub.py",
        "src/payments_risk_gateway/settings/hub.py",
        "config/spoke-policy.toml",
        "scripts/dev_spokes.py",
        "tests/test_hub.py",
        "deploy/k8s/spokes/kustomization.yaml",
        "deploy/k8s/spokes/networkpolicy.yaml",
        "deploy/k8s/components/spoke/kustomization.yaml",
        "docs/hub-and-spoke.md",
    },
    "federated": {
        "src/payments_risk_gateway/federation.py",
        "src/payments_risk_gateway/peer.py",
        "src/payments_risk_gateway/settings/federation.py",
        "src/payments_risk_gateway/security/trust.py",
        "scripts/dev_peers.py",
        "tests/test_federation.py",
        "deploy/k8s/peers/kustomization.yaml",
        "deploy/k8s/peers/federation-env/configmap.yaml",
        "deploy/k8s/peers/networkpolicy.yaml",
        "docs/federated.md",
    },
}
# Shared by the two architectures that relay to other servers.
RELAY_FILES = {
    "src/payments_risk_gateway/upstream.py",
    "src/payments_risk_gateway/settings/relay.py",
}
# The standalone topology's own module.
STANDALONE_FILES = {"src/payments_risk_gateway/standalone.py"}


def test_each_architecture_gets_only_its_own_files(rendered: tuple[Path, dict[str, Any]]) -> None:
    project, answers = rendered
    present = {str(path.relative_to(project)) for path in files(project)}
    architecture = answers["architecture"]
    for name, owned in ARCHITECTURE_FILES.items():
        assert (owned <= present) == (name == architecture), (
            name,
            owned - present if name == architecture else owned & present,
        )
        assert not owned & present or name == architecture
    assert (RELAY_FILES <= present) == (architecture != "standalone")
    assert not RELAY_FILES & present or architecture != "standalone"
    assert (STANDALONE_FILES <= present) == (architecture == "standalone")
    assert not STANDALONE_FILES & present or architecture == "standalone"
    if architecture == "federated":
        # The peers' own names reach the settings, the dev PKI, the policy and the manifests.
        peers = questions()["federation_peers"]["default"]
        settings = settings_sources(project)
        policy = (project / "config" / "policy.toml").read_text()
        for index, peer in enumerate(peers):
            namespace = answers["k8s_namespace"] + ("" if index == 0 else f"-{peer}")
            identity = f"spiffe://{peer}.{answers['domain']}/ns/{namespace}/sa/payments-risk-gateway"
            assert identity in settings
            assert identity in policy
        assert (
            f'ROUTE_KEY = "{".".join(reversed(answers["domain"].split(".")))}/federation"'
            in (project / "src" / "payments_risk_gateway" / "federation.py").read_text()
        )


def test_the_entry_point_only_reads_the_settings_and_serves(rendered: tuple[Path, dict[str, Any]]) -> None:
    """Each topology's module assembles its server; ``__main__`` stays short in every project,
    and start-up stops on one error type, which every configuration error derives from."""
    project, _ = rendered
    package = project / "src" / "payments_risk_gateway"
    entry_point = (package / "__main__.py").read_text()
    assert len(entry_point.splitlines()) <= 40
    assert "except ConfigError as exc:" in entry_point
    sources = "\n".join(path.read_text() for path in package.rglob("*.py"))
    assert re.findall(r"^class ConfigError\((\w+)\)", sources, re.MULTILINE) == ["Exception"]
    errors = re.findall(r"^class (\w*ConfigError|PolicyError)\((\w+)\)", sources, re.MULTILINE)
    assert {base for name, base in errors if name != "ConfigError"} == {"ConfigError"}


def test_no_private_key_or_dev_pki_is_generated(rendered: tuple[Path, dict[str, Any]]) -> None:
    project, _ = rendered
    assert not [p for p in files(project) if "PRIVATE KEY" in p.read_text()]
    assert not (project / ".dev-pki").exists()
    ignored = (project / ".gitignore").read_text().splitlines()
    assert ".dev-pki/" in ignored


def test_copy_needs_no_trust_and_skipping_tasks_changes_nothing(tmp_path: Path) -> None:
    """The template has no tasks and no Jinja extensions: `copier copy` without --trust is not
    refused (a hosted Renovate and a cautious user run none), and --skip-tasks gives the same
    tree. git init and the lock are the user's documented steps."""
    config = yaml.safe_load((ROOT / "copier.yml").read_text())
    assert not config.get("_tasks") and not config.get("_jinja_extensions")
    trusted = render(tmp_path / "trusted", trust=True)
    untrusted = render(tmp_path / "untrusted", trust=False)
    skipped = render(tmp_path / "skipped", trust=False, skip_tasks=True)

    def tree(root: Path) -> dict[Path, bytes]:
        # A dirty template checkout is committed afresh for each copy: _commit may differ.
        return {p.relative_to(root): re.sub(rb"_commit: .*\n", b"", p.read_bytes()) for p in files(root)}

    assert tree(trusted) == tree(untrusted) == tree(skipped)
    assert not (untrusted / "uv.lock").exists()
    assert not (untrusted / ".git").exists()


# Tools whose pins docs/gates.md must state: every gate scanner, and the dev tools that are gates.
GATE_TOOLS_IN_DEV = {"ruff", "mypy", "bandit", "pytest", "coverage", "detect-secrets", "pre-commit"}
PIN = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)==([0-9][0-9A-Za-z.]*)")


def test_gates_doc_states_exactly_the_pinned_versions(rendered: tuple[Path, dict[str, Any]]) -> None:
    """docs/gates.md restates versions for auditors; pyproject.toml and the Makefile are the
    sources of truth, so any version the page names must be theirs, and every gate tool is named."""
    project, _ = rendered
    doc = (project / "docs" / "gates.md").read_text()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    groups = pyproject["dependency-groups"]
    pins: dict[str, str] = {}
    for requirement in [*pyproject["project"]["dependencies"], *(pin for group in groups.values() for pin in group)]:
        name, version = PIN.match(requirement.split(";")[0].replace("[crypto]", "")).groups()  # type: ignore[union-attr]
        pins[name] = version
    makefile = dict(re.findall(r"^(\w+_VERSION) := (\S+)$", (project / "Makefile").read_text(), re.MULTILINE))
    pins |= {"semgrep": makefile["SEMGREP_VERSION"], "checkov": makefile["CHECKOV_VERSION"]}
    stated = PIN.findall(doc)
    assert stated
    assert {name: version for name, version in stated if pins.get(name) != version} == {}
    required = {PIN.match(pin).group(1) for pin in groups["gates"]} | GATE_TOOLS_IN_DEV | {"semgrep", "checkov"}  # type: ignore[union-attr]
    assert required - {name for name, _ in stated} == set()
    assert f"-k {makefile['K8S_VERSION']} " in doc
    assert f"gitleaks/v8@{makefile['GITLEAKS_VERSION']} " in doc
    assert f"cert-manager {makefile['CERT_MANAGER_VERSION']} " in doc
    for linked in ("ci.md", "deployment.md"):
        assert f"]({linked}" in doc
    assert "](docs/gates.md)" in (project / "README.md").read_text()
    assert "](gates.md)" in (project / "docs" / "deployment.md").read_text()
