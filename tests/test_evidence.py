"""`make evidence` and `make oscal` of a generated project (template/scripts/evidence.py): a control
is evidenced only when its tests ran and passed, a planted failure or a test that did not run
leaves it not evidenced, CI's evidence jobs read every other job's result, and the OSCAL component
definition validates with compliance-trestle. The report over a whole suite, with every applicable
control evidenced, is checked where that suite already runs (tests/test_generated.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CUSTOM, UV, project_venv, render, run_in
from trestle.oscal.component import ComponentDefinition

pytestmark = pytest.mark.xdist_group("evidence")
NIST_CATALOG = (
    "https://raw.githubusercontent.com/usnistgov/oscal-content/a849dbca4649e0cc626fefdd46cf5232c8308f4c/"
    "nist.gov/SP800-53/rev5/json/NIST_SP-800-53_rev5_catalog.json"
)
# NET-01's code, and the code without it (tests/test_controls.py plants the same removal).
TLS = ("src/{package}/security/tls.py", "ssl.TLSVersion.TLSv1_3", "ssl.TLSVersion.TLSv1_2")
# A failing control (NET-01) and a passing one (NET-06), each with its one test.
NET_01 = "tests/test_transport.py::test_tls_1_2_is_refused"
NET_06 = "tests/test_ops.py::test_operations_endpoints_are_not_served_on_the_mcp_port"


def ci_jobs(project: Path) -> dict[str, Any]:
    github = project / ".github" / "workflows" / "ci.yml"
    if github.is_file():
        jobs: dict[str, Any] = yaml.safe_load(github.read_text())["jobs"]
        return jobs
    pipeline = yaml.safe_load((project / ".gitlab-ci.yml").read_text())
    return {name: job for name, job in pipeline.items() if isinstance(job, dict) and "script" in job}


def every_job_passed(project: Path, path: Path) -> Path:
    """GitHub's toJSON(needs) for a run where every job of the project's CI file succeeded."""
    path.write_text(json.dumps({job: {"result": "success", "outputs": {}} for job in ci_jobs(project)}))
    return path


def evidence_of(project: Path, venv: Path, out: Path, *arguments: str) -> dict[str, dict[str, Any]]:
    """scripts/evidence.py run without gates (a test's JUnit and CI results as given): control -> entry."""
    command = ["python", "scripts/evidence.py", "run", "--gates", "", "--out", str(out), *arguments]
    result = run_in(project, venv, *command, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "evidence.json").read_text())
    assert report["schema_version"] == 1
    return {entry["id"]: entry for entry in report["controls"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(
        tmp_path_factory.mktemp("evidence") / "project", {**CUSTOM, "auth_mode": "mtls+oauth"}, skip_tasks=True
    )


@pytest.fixture(scope="module")
def venv(project: Path) -> Path:
    return project_venv(project)


@pytest.fixture(scope="module")
def planted(project: Path, venv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the project without NET-01 (TLS 1.2 allowed), and the JUnit file of NET-01's and
    NET-06's tests in it: two tests, not the suite."""
    copy = shutil.copytree(project, tmp_path_factory.mktemp("planted") / "project")
    package = yaml.safe_load((copy / ".copier-answers.yml").read_text())["package_name"]
    tls = copy / TLS[0].format(package=package)
    source = tls.read_text()
    assert source.count(TLS[1]) == 1
    tls.write_text(source.replace(TLS[1], TLS[2]))
    junit = copy / "junit.xml"
    result = run_in(copy, venv, "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", NET_01, NET_06)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    return copy, junit


@pytest.fixture(scope="module")
def planted_evidence(
    planted: tuple[Path, Path], venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, dict[str, Any]], Path]:
    """The evidence of the planted copy's two tests, with every CI job reported passed: the
    controls, and the folder of the report."""
    copy, junit = planted
    out = tmp_path_factory.mktemp("planted-evidence")
    ci = every_job_passed(copy, out / "needs.json")
    return evidence_of(copy, venv, out / "out", "--junit", str(junit), "--ci-results", str(ci)), out / "out"


def test_a_failing_test_leaves_its_control_not_evidenced_whatever_ci_says(
    planted_evidence: tuple[dict[str, dict[str, Any]], Path],
) -> None:
    controls, out = planted_evidence
    assert controls["NET-01"]["tests"] == {NET_01: "failed"}
    assert controls["NET-01"]["ci"] == {"test": "passed"}
    assert controls["NET-01"]["status"] == "not evidenced"
    assert controls["NET-06"]["tests"] == {NET_06: "passed"}
    assert controls["NET-06"]["status"] == "evidenced"
    page = (out / "evidence.md").read_text()
    assert "| NET-01 TLS 1.3 only on the MCP port | not evidenced |" in page
    assert "## NET" in page and "## SUP" in page


def test_a_control_whose_tests_did_not_run_is_not_evidenced(
    planted: tuple[Path, Path], planted_evidence: tuple[dict[str, dict[str, Any]], Path], venv: Path, tmp_path: Path
) -> None:
    controls, _ = planted_evidence
    copy, _ = planted
    # IAM-01's tests are not in this JUnit file: its CI job's success is no evidence for them.
    assert set(controls["IAM-01"]["tests"].values()) == {"not-run"}
    assert controls["IAM-01"]["status"] == "not evidenced"
    # NET-04 has no test: the iac job is its evidence.
    assert controls["NET-04"]["ci"] == {"iac": "passed"}
    assert controls["NET-04"]["status"] == "evidenced"
    nothing = evidence_of(copy, venv, tmp_path / "nothing")
    assert {entry["status"] for entry in nothing.values()} == {"not evidenced"}


@pytest.mark.parametrize(("planted_case", "outcome"), [("skipped", "not-run"), ("failure", "failed")])
def test_every_case_of_a_parametrized_test_must_pass(
    planted: tuple[Path, Path], venv: Path, tmp_path: Path, planted_case: str, outcome: str
) -> None:
    copy, junit = planted
    tree = ET.parse(junit)
    suite = next(tree.iter("testsuite"))
    (case,) = [case for case in suite.iter("testcase") if case.get("name") == NET_06.rsplit("::", 1)[1]]
    name = case.get("name", "")
    case.set("name", f"{name}[first]")
    second = ET.SubElement(suite, "testcase", {"classname": case.get("classname", ""), "name": f"{name}[second]"})
    ET.SubElement(second, planted_case)
    edited = tmp_path / "junit.xml"
    tree.write(edited)
    controls = evidence_of(copy, venv, tmp_path / "out", "--junit", str(edited))
    assert controls["NET-06"]["tests"] == {NET_06: outcome}
    assert controls["NET-06"]["status"] == "not evidenced"


def oscal(project: Path, venv: Path, output: Path) -> dict[str, Any]:
    command = [str(venv / "bin" / "python"), "scripts/evidence.py", "oscal", "--output", str(output)]
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1767225600"}
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    loaded: dict[str, Any] = json.loads(output.read_text())
    return loaded


def test_the_oscal_component_definition_validates_and_covers_every_nist_mapped_control(
    project: Path, venv: Path, tmp_path: Path
) -> None:
    first = oscal(project, venv, tmp_path / "first.json")
    assert oscal(project, venv, tmp_path / "second.json") == first  # stable uuids: re-exports diff cleanly
    definition = ComponentDefinition.oscal_read(tmp_path / "first.json")
    assert definition is not None
    (component,) = definition.components or []
    implementations = {item.source: item for item in component.control_implementations or []}
    nist = implementations.pop(NIST_CATALOG)
    (fedramp,) = implementations.values()
    assert "FedRAMP_rev5_MODERATE-baseline_profile.json" in fedramp.source
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "scripts/controls.py", "list", "--framework", "nist-800-53"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    mapped = {line.split()[0] for line in listed}
    described = {
        prop.value
        for requirement in nist.implemented_requirements
        for prop in requirement.props or []
        if prop.name == "control"
    }
    assert described == mapped
    control_ids = {requirement.control_id for requirement in nist.implemented_requirements}
    assert {"sc-8", "sc-8.1", "sc-13"} <= control_ids
    assert all(control_id == control_id.lower() and "(" not in control_id for control_id in control_ids)
    # Each prop says which control it belongs to, and paths are this project's.
    props = [prop for requirement in nist.implemented_requirements for prop in requirement.props or []]
    assert all(prop.group for prop in props)
    paths = [prop.value for prop in props if prop.name == "implemented-in"]
    assert paths and all("{" not in path and (project / path).exists() for path in paths), paths


def test_ci_evidence_jobs_read_every_other_jobs_result(project: Path, tmp_path: Path) -> None:
    jobs = ci_jobs(project)
    evidence = jobs["evidence"]
    assert set(evidence["needs"]) == set(jobs) - {"evidence"}
    assert evidence["if"] == "always()"
    steps = {step.get("name", step.get("uses", "")): step for step in evidence["steps"]}
    (write,) = [step for name, step in steps.items() if name.startswith("Evidence of each control")]
    assert write["env"]["NEEDS"] == "${{ toJSON(needs) }}" and "${{" not in write["run"]
    assert "make evidence JUNIT=junit.xml" in write["run"]
    assert any(step.get("with", {}).get("path") == "evidence/" for step in evidence["steps"])
    gitlab = render(tmp_path / "gitlab", {"ci_provider": "gitlab"}, skip_tasks=True)
    pipeline = yaml.safe_load((gitlab / ".gitlab-ci.yml").read_text())
    # Each job that records its result (its own after_script or .python's) is one the evidence job needs.
    python = pipeline[".python"]
    recorded = {
        name
        for name, job in ci_jobs(gitlab).items()
        if "ci-results/" in str(job.get("after_script") or (python["after_script"] if job.get("extends") else ""))
        and "ci-results/" in str(job.get("artifacts", {}).get("paths") or python["artifacts"]["paths"])
    }
    needs = {need["job"] if isinstance(need, dict) else need for need in pipeline["evidence"]["needs"]}
    assert needs == recorded - {"evidence"}
    assert pipeline["evidence"]["artifacts"] == {"when": "always", "expire_in": "90 days", "paths": ["evidence/"]}
    planned = subprocess.run(
        ["make", "-n", "evidence", "oscal", f"UV={UV}", "JUNIT=junit.xml"],
        cwd=gitlab,
        capture_output=True,
        text=True,
        check=False,
    )
    assert planned.returncode == 0, planned.stderr
    assert "coverage" not in planned.stdout  # a JUnit file given: the suite does not run again
