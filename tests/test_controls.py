"""The controls catalogue (template/compliance/controls.yaml) holds in every project: each control
that applies names code, tests, CI jobs and make targets the project has, its pytest nodes are
collected, its framework and threat references are in the known lists, and removing a control
from a project makes one of its own tests fail."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CUSTOM, ROOT, UV, combo_id, covering, npm_package, project_venv, render, run_in
from support.pinned_tools import tool

CATALOGUE = ROOT / "template" / "compliance" / "controls.yaml"
# The reference lists the catalogue maps against: one file a framework (its `id`) and one a
# threat list, each with `references: {id: title}`.
FRAMEWORKS = ROOT / "compliance" / "frameworks"
THREATS = {
    "owasp_mcp": ROOT / "compliance" / "threats" / "owasp-mcp-top10.yaml",
    "mcp_spec": ROOT / "compliance" / "threats" / "mcp-security-best-practices.yaml",
}
# The answers that decide which controls apply (auth mode, architecture); cloud, mesh and CI
# provider take each of their choices in turn.
MATRIX = covering("auth_mode", "architecture")
# One project per auth mode, each of another architecture, gets a venv: its pytest collects.
WITH_VENV = {("mtls", "standalone"), ("oauth", "hub-and-spoke"), ("mtls+oauth", "federated")}
AT_LEAST = 50
# One worker renders the matrix once and runs every test of this module.
pytestmark = pytest.mark.xdist_group("controls")


@functools.cache
def script_module() -> Any:
    """template/scripts/controls.py, imported (plain Python, no Jinja in it)."""
    spec = importlib.util.spec_from_file_location("controls_script", ROOT / "template" / "scripts" / "controls.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # No __pycache__ in template/: it is the template's source tree (tests/test_structure.py reads it).
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


def controls() -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = yaml.safe_load(CATALOGUE.read_text())
    return loaded


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every combination of the matrix, rendered once for the module."""
    base = tmp_path_factory.mktemp("controls")
    return {
        combo_id(answers): render(base / combo_id(answers), {**CUSTOM, **answers}, skip_tasks=True)
        for answers in MATRIX
    }


def venv_answers() -> list[dict[str, Any]]:
    return [answers for answers in MATRIX if (answers["auth_mode"], answers["architecture"]) in WITH_VENV]


def test_the_catalogue_is_plain_yaml_with_unique_ids() -> None:
    ids = [control["id"] for control in controls()]
    assert len(ids) == len(set(ids)), sorted({name for name in ids if ids.count(name) > 1})
    assert not list((ROOT / "template" / "compliance").glob("*.jinja"))
    assert len(ids) >= AT_LEAST


def test_every_auth_mode_gets_a_venv_project() -> None:
    assert {answers["auth_mode"] for answers in venv_answers()} == {"mtls", "oauth", "mtls+oauth"}


def script(project: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The project's scripts/controls.py, with this venv's Python (it has PyYAML)."""
    command = [sys.executable, str(project / "scripts" / "controls.py"), *arguments]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("answers", MATRIX, ids=combo_id)
def test_the_catalogue_holds_in_the_project(answers: dict[str, Any], projects: dict[str, Path]) -> None:
    project = projects[combo_id(answers)]
    checked = script(project, "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(script_module().listing(project, None)) >= AT_LEAST


def test_list_shows_the_applicable_controls_and_a_frameworks_requirements(projects: dict[str, Path]) -> None:
    counts = {name: len(script_module().listing(project, None)) for name, project in projects.items()}
    project = next(iter(projects.values()))
    listed = script(project, "list")
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == counts[next(iter(projects))]
    mapped = script(project, "list", "--framework", "nist-800-53").stdout.splitlines()
    assert 0 < len(mapped) < len(listed.stdout.splitlines())
    assert "NET-01  TLS 1.3 only on the MCP port  [SC-8, SC-8(1), SC-13]" in mapped


def test_check_names_each_broken_reference(projects: dict[str, Path], tmp_path: Path) -> None:
    project = shutil.copytree(next(iter(projects.values())), tmp_path / "project")
    catalogue = project / "compliance" / "controls.yaml"
    broken = yaml.safe_load(catalogue.read_text())
    first = broken[0]
    first["implemented_in"] = ["src/{package}/gone.py"]
    first["verified_by"] = {
        "pytest": ["tests/test_transport.py::test_no_such_test"],
        "ci": ["no-such-job"],
        "make": ["no-such-target"],
        "rules": ["CKV_K8S_22", "ORG_K8S_999"],
    }
    applies_when = broken[1].get("applies_when")
    broken[1]["applies_when"] = {"no_such_answer": [True]}
    catalogue.write_text(yaml.safe_dump(broken, sort_keys=False))
    checked = script(project, "check")
    assert checked.returncode == 1
    assert checked.stdout.splitlines() == [
        f"{broken[1]['id']}: applies_when names no_such_answer, which is no answer of this project"
    ]
    broken[1]["applies_when"] = applies_when
    if applies_when is None:
        del broken[1]["applies_when"]
    catalogue.write_text(yaml.safe_dump(broken, sort_keys=False))
    lines = script(project, "check").stdout.splitlines()
    package = yaml.safe_load((project / ".copier-answers.yml").read_text())["package_name"]
    ci_file = ".github/workflows/ci.yml" if (project / ".github").exists() else ".gitlab-ci.yml"
    node = "tests/test_transport.py::test_no_such_test"
    assert lines == [
        f"{first['id']}: implemented_in src/{package}/gone.py does not exist",
        f"{first['id']}: pytest {node}: tests/test_transport.py defines no test_no_such_test",
        f"{first['id']}: ci no-such-job is no job of {ci_file}",
        f"{first['id']}: rule ORG_K8S_999 is defined in no policy/checks file",
        f"{first['id']}: make no-such-target is no target of the Makefile",
    ]


def collected(project: Path, venv: Path) -> set[str]:
    result = run_in(project, venv, "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {re.sub(r"\[.*\]$", "", line) for line in result.stdout.splitlines() if "::" in line}


def applicable_nodes(project: Path) -> dict[str, list[str]]:
    """The pytest nodes each applicable control names (the project's `list` decides which apply)."""
    listed = {line.split()[0] for line in script_module().listing(project, None)}
    return {
        control["id"]: list(control.get("verified_by", {}).get("pytest", []))
        for control in yaml.safe_load((project / "compliance" / "controls.yaml").read_text())
        if control["id"] in listed
    }


@pytest.mark.parametrize("answers", venv_answers(), ids=combo_id)
def test_every_pytest_node_of_the_catalogue_is_collected(answers: dict[str, Any], projects: dict[str, Path]) -> None:
    project = projects[combo_id(answers)]
    nodes = collected(project, project_venv(project))
    missing = {name: [node for node in named if node not in nodes] for name, named in applicable_nodes(project).items()}
    assert {name: named for name, named in missing.items() if named} == {}


def reference_lists(paths: list[Path], what: str) -> dict[str, set[str]]:
    present = [path for path in paths if path.is_file()]
    if not present:
        pytest.skip(f"no {what} reference lists yet ({paths[0].parent.relative_to(ROOT)}/ is written separately)")
    return {
        path.stem: {str(reference) for reference in (yaml.safe_load(path.read_text()) or {}).get("references", {})}
        for path in present
    }


def test_every_framework_reference_is_in_its_known_list() -> None:
    files = sorted(FRAMEWORKS.glob("*.yaml")) if FRAMEWORKS.is_dir() else []
    lists = reference_lists(files or [FRAMEWORKS / "none.yaml"], "framework")
    known = {str(yaml.safe_load(path.read_text())["id"]): lists[path.stem] for path in files}
    unknown = [
        f"{control['id']}: {framework} {reference}"
        for control in controls()
        for framework, references in (control.get("frameworks") or {}).items()
        for reference in references
        if str(reference) not in known.get(framework, set())
    ]
    assert unknown == []


def test_every_threat_is_in_its_known_list() -> None:
    lists = reference_lists(list(THREATS.values()), "threat")
    unknown = [
        f"{control['id']}: {kind} {threat}"
        for control in controls()
        for kind, threats in (control.get("threats") or {}).items()
        for threat in threats
        if kind not in THREATS or str(threat) not in lists.get(THREATS[kind].stem, set())
    ]
    assert unknown == []


# Planted removals: (control, project's auth mode, file, the control's code, the code without
# it, the control's own test that must then fail).
PLANTED = [
    (
        "NET-01",
        "mtls",
        "src/{package}/security/tls.py",
        "context.minimum_version = ssl.TLSVersion.TLSv1_3",
        "context.minimum_version = ssl.TLSVersion.TLSv1_2",
        "tests/test_transport.py::test_tls_1_2_is_refused",
    ),
    (
        "REQ-01",
        "mtls",
        "src/{package}/app.py",
        "enable_dns_rebinding_protection=True,",
        "enable_dns_rebinding_protection=False,",
        "tests/test_http_edge.py::test_foreign_host_is_refused",
    ),
    (
        "REQ-12",
        "mtls",
        "src/{package}/security/headers.py",
        '(b"x-content-type-options", b"nosniff"),',
        "",
        "tests/test_http_edge.py::test_security_headers_on_every_response",
    ),
    (
        "IAM-10",
        "mtls",
        "src/{package}/security/policy.py",
        "        if fewest_missing is None:\n            return DENY",
        "        if fewest_missing is None:\n            return ALLOW",
        "tests/test_policy.py::test_empty_policy_denies_everything",
    ),
    (
        "IAM-07",
        "mtls+oauth",
        "src/{package}/security/oauth.py",
        'for name, value in scope["headers"] if name != b"authorization"]',
        'for name, value in scope["headers"]]',
        "tests/test_app.py::test_the_bearer_token_never_reaches_a_tool",
    ),
]


def venv_project(auth_mode: str, projects: dict[str, Path]) -> Path:
    (answers,) = [answers for answers in venv_answers() if answers["auth_mode"] == auth_mode]
    return projects[combo_id(answers)]


def failed_nodes(project: Path, venv: Path, nodes: list[str]) -> tuple[set[str], str]:
    """The function-level nodes among ``nodes`` that fail in ``project``, and pytest's output."""
    result = run_in(project, venv, "pytest", "-q", "-rf", "-p", "no:cacheprovider", *nodes, timeout=300)
    output = result.stdout[-4000:] + result.stderr[-2000:]
    assert result.returncode in (0, 1), output  # 1: some failed; anything else: it could not run them
    return {
        re.sub(r"\[.*", "", line.split()[1]) for line in result.stdout.splitlines() if line.startswith("FAILED ")
    }, output


@pytest.fixture(scope="module")
def planted(projects: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[set[str], str]]:
    """Per auth mode: the planted tests pass in the untouched project; then, in a copy with every
    removal of that auth mode planted (each in its own file, each breaking one control), which of
    them fail. Two pytest runs a project instead of two a removal."""
    outcome = {}
    for auth_mode in sorted({plant[1] for plant in PLANTED}):
        original = venv_project(auth_mode, projects)
        venv = project_venv(original)
        plants = [plant for plant in PLANTED if plant[1] == auth_mode]
        nodes = [plant[5] for plant in plants]
        failed, output = failed_nodes(original, venv, nodes)
        assert failed == set(), f"planted tests fail before anything is removed: {output}"
        project = shutil.copytree(
            original, tmp_path_factory.mktemp("planted") / "project", ignore=shutil.ignore_patterns(".hypothesis")
        )
        package = yaml.safe_load((project / ".copier-answers.yml").read_text())["package_name"]
        for control, _, file, code, without, _ in plants:
            path = project / file.replace("{package}", package)
            source = path.read_text()
            assert source.count(code) == 1, f"{control}: {code!r} is not once in {file}"
            path.write_text(source.replace(code, without))
        outcome[auth_mode] = failed_nodes(project, venv, nodes)
    return outcome


@pytest.mark.parametrize(
    ("control", "auth_mode", "node"), [(p[0], p[1], p[5]) for p in PLANTED], ids=[p[0] for p in PLANTED]
)
def test_removing_a_control_fails_its_own_test(
    control: str, auth_mode: str, node: str, planted: dict[str, tuple[set[str], str]]
) -> None:
    (entry,) = [entry for entry in controls() if entry["id"] == control]
    assert node in entry["verified_by"]["pytest"]
    failed, output = planted[auth_mode]
    assert node in failed, output


# Planted removals in the manifests: (control, the control's setting, the setting without it).
# The scanner rules the catalogue names for each (checkov's and policy/checks') must pass on the
# shipped Deployment and at least one of them fail once the setting is gone.
MANIFEST = "deploy/k8s/components/workload/deployment.yaml"
PLANTED_MANIFEST = [
    ("RUN-01", "runAsNonRoot: true", "runAsNonRoot: false"),
    ("RUN-02", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"),
    ("RUN-03", "allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true"),
    ("RUN-04", 'drop: ["ALL"]', 'drop: ["NET_BIND_SERVICE"]'),
    ("RUN-05", "type: RuntimeDefault", "type: Unconfined"),
    ("RUN-08", '            limits:\n              cpu: "1"\n              memory: 512Mi\n', ""),
]


def manifest_rules(control: str) -> set[str]:
    (entry,) = [entry for entry in controls() if entry["id"] == control]
    return {rule for rule in entry["verified_by"]["rules"] if rule.startswith(("CKV_K8S_", "ORG_K8S_"))}


def scanned(project: Path, rules: set[str]) -> tuple[set[str], set[str]]:
    """The rules among ``rules`` that passed and those that failed on the project's Deployment."""
    version = re.search(r"^CHECKOV_VERSION := (\S+)$", (project / "Makefile").read_text(), re.MULTILINE)
    assert version
    command = [UV, "tool", "run", "--from", f"checkov=={version[1]}", "checkov", "--skip-download"]
    command += ["--framework", "kubernetes", "--external-checks-dir", "policy/checks", "-o", "json"]
    command += ["--check", ",".join(sorted(rules)), "-f", MANIFEST]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    results = (report[0] if isinstance(report, list) else report).get("results", {})
    passed, failed = (
        {check["check_id"] for check in results.get(kind, [])} for kind in ("passed_checks", "failed_checks")
    )
    return passed, failed


def test_removing_a_manifest_control_fails_its_scanner_rules(projects: dict[str, Path], tmp_path: Path) -> None:
    original = venv_project("mtls", projects)
    rules = {rule for control, _, _ in PLANTED_MANIFEST for rule in manifest_rules(control)}
    assert scanned(original, rules) == (rules, set())
    project = shutil.copytree(
        original, tmp_path / "project", ignore=shutil.ignore_patterns(".hypothesis", "__pycache__")
    )
    deployment = project / MANIFEST
    text = deployment.read_text()
    for control, setting, without in PLANTED_MANIFEST:
        assert setting in text, f"{control}: {setting!r} is not in {MANIFEST}"
        text = text.replace(setting, without)
    deployment.write_text(text)
    _, failed = scanned(project, rules)
    assert {
        control: sorted(manifest_rules(control))
        for control, _, _ in PLANTED_MANIFEST
        if not manifest_rules(control) & failed
    } == {}


# The docs are rendered from the catalogue: compliance.md lists the controls that apply (one
# anchor each) and maps them to the chosen frameworks only; threat-model.md links every threat
# to the controls that answer it.
ANCHOR = re.compile(r"^### ([A-Z]{3}-\d{2})$", re.MULTILINE)
CONTROL_LINK = re.compile(r"\]\(compliance\.md#([a-z]{3}-\d{2})\)")
THREAT_ROW = re.compile(r"^\| ([A-Z]\d+) \| ", re.MULTILINE)


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else None]


@pytest.mark.parametrize("answers", MATRIX, ids=combo_id)
def test_the_docs_list_exactly_the_controls_that_apply(answers: dict[str, Any], projects: dict[str, Path]) -> None:
    project = projects[combo_id(answers)]
    listed = [line.split()[0] for line in script_module().listing(project, None)]
    compliance = (project / "docs" / "compliance.md").read_text()
    assert ANCHOR.findall(compliance) == listed
    threat_model = (project / "docs" / "threat-model.md").read_text()
    linked = set(CONTROL_LINK.findall(threat_model))
    assert linked <= {name.lower() for name in listed}, sorted(linked - {name.lower() for name in listed})
    stride = section(threat_model, "The threats one boundary at a time")
    rows = {threat for line in stride.splitlines() if line.count("|") == 5 for threat in line.split("|")[3].split(", ")}
    detailed = THREAT_ROW.findall(threat_model.split("Each threat in detail:")[1])
    assert detailed and {threat.strip() for threat in rows} >= set(detailed), "a threat no boundary names"
    assert "```mermaid\nflowchart LR" in threat_model


def test_the_docs_map_the_chosen_frameworks_only(tmp_path: Path) -> None:
    chosen = render(tmp_path / "pci", {"compliance": ["pci-dss", "cis"]}, skip_tasks=True)
    mapping = section((chosen / "docs" / "compliance.md").read_text(), "## Mapping")
    header = mapping.splitlines()[6]
    assert header == "| Control | PCI DSS v4.0 | CIS |", header
    assert "| [NET-01](compliance.md#net-01) TLS 1.3 only on the MCP port | 4.2.1 | Controls v8 3.10 |" in mapping
    assert "SC-8" not in mapping and "CC6.7" not in mapping
    none = render(tmp_path / "none", {"compliance": []}, skip_tasks=True)
    text = (none / "docs" / "compliance.md").read_text()
    assert "## Mapping" not in text and "No framework was selected" in text
    assert ANCHOR.findall(text), "the controls are listed whatever the frameworks"


def test_every_mermaid_diagram_parses(projects: dict[str, Path]) -> None:
    """Every diagram of the template's docs and of each project's docs, with Mermaid's own parser
    (tests/support/mermaid): a diagram that does not parse shows as an error in the docs site."""
    pages = sorted((ROOT / "docs").glob("*.md")) + sorted(
        page for project in projects.values() for page in (project / "docs").glob("*.md")
    )
    parser = npm_package("mermaid")
    result = subprocess.run(
        [tool("node"), str(parser / "parse.mjs"), *map(str, pages)],
        capture_output=True,
        text=True,
        cwd=parser,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    parsed = result.stdout.splitlines()
    assert sum("threat-model.md" in line for line in parsed) == len(projects), "one trust diagram per project"
