"""Evidence for the controls catalogue (compliance/controls.yaml): which of this project's controls
this run showed to work, and an OSCAL component definition of them.

    python scripts/evidence.py run [--junit FILE] [--gates "lint iac"] [--ci-results FILE]
    python scripts/evidence.py oscal [--output FILE]

``run`` runs the test suite once under ``make coverage`` with JUnit output (or reads ``--junit``),
runs the make gates named in ``--gates`` (a gate whose tool is missing is "not-run"), reads the
scanners' own results for the catalogue's rules (checkov's JSON, hadolint's JSON) and, in CI, the
jobs' results (``--ci-results``: GitHub's ``needs`` context as JSON, or GitLab's ci-results/). It writes
evidence/evidence.json and evidence/evidence.md: per applicable control, the result of each test
node, gate, rule and CI job that verifies it. A control is "evidenced" when every verifier this run
ran passed, at least one ran, and every one of its pytest nodes ran; otherwise "not evidenced".

``oscal`` writes evidence/component-definition.json (OSCAL 1.1.2): the project as one component
with an implementation of NIST SP 800-53 Rev. 5 and of the FedRAMP Moderate baseline.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess  # nosec B404
import sys
import uuid

# Only our own pytest's JUnit file is parsed.
import xml.etree.ElementTree as ET  # nosec B405
from collections import Counter
from pathlib import Path
from typing import Any

from controls import ANSWERS, ROOT, answers_of, applicable, catalogue_of, expand, for_provider, load_yaml

# The namespace of this project's own OSCAL props and the evidence file's schema name.
SCHEMA = "urn:secure-mcp-template:evidence"
SCHEMA_VERSION = 1
OUT = Path("evidence")
PASSED, FAILED, NOT_RUN = "passed", "failed", "not-run"
EVIDENCED, NOT_EVIDENCED = "evidenced", "not evidenced"
# The gates `make evidence` runs by default; coverage runs the test suite (with JUnit output).
GATES = ("locked", "lint", "workflows", "secrets", "secrets-history", "sast", "audit", "policy", "iac", "coverage")
# A gate whose tool is not on this machine cannot run: it is recorded "not-run", never "passed".
NEEDS_TOOL = {"secrets-history": "go", "image": "docker", "kind-up": "kind"}
# GitHub's needs.<job>.result, GitLab's CI_JOB_STATUS.
CI_OUTCOMES = {"success": PASSED, "failure": FAILED, "failed": FAILED}
# NIST SP 800-53 Rev. 5 and FedRAMP's Moderate profile: their OSCAL sources, at the commits the
# template's framework lists were built from (compliance/frameworks/ of the template).
OSCAL_SOURCES = {
    "nist-800-53": "https://raw.githubusercontent.com/usnistgov/oscal-content/"
    "a849dbca4649e0cc626fefdd46cf5232c8308f4c/nist.gov/SP800-53/rev5/json/NIST_SP-800-53_rev5_catalog.json",
    "fedramp": "https://raw.githubusercontent.com/GSA/fedramp-automation/"
    "c784140bc6d1ac9fa159aabc0e8a29e9aa2c63a9/dist/content/rev5/baselines/json/"
    "FedRAMP_rev5_MODERATE-baseline_profile.json",
}
OSCAL_VERSION = "1.1.2"
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, SCHEMA)


# --- Running: the test suite, the gates, the scanners -------------------------------------------


def run_gate(gate: str, out: Path, junit: Path | None) -> str:
    """``make <gate>``, its output in evidence/logs/<gate>.log; coverage also writes the JUnit."""
    tool = NEEDS_TOOL.get(gate)
    if tool and shutil.which(tool) is None:
        return NOT_RUN
    env = dict(os.environ)
    if gate == "coverage" and junit:
        env["PYTEST_ADDOPTS"] = f"{env.get('PYTEST_ADDOPTS', '')} --junitxml={junit}".strip()
    log = out / "logs" / f"{gate}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    make = os.environ.get("MAKE", "make")
    print(f"evidence: make {gate}", flush=True)
    with log.open("w", encoding="utf-8") as output:
        done = subprocess.run([make, gate], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, env=env, check=False)  # noqa: S603  # nosec B603
    return PASSED if done.returncode == 0 else FAILED


def coverage_of_that_run() -> str:
    """With a reused JUnit report, the coverage gate over that run's data (.coverage): the
    threshold of pyproject's fail_under, as `make coverage` ends; not run without the data."""
    if not (ROOT / ".coverage").is_file():
        return NOT_RUN
    command = [sys.executable, "-m", "coverage", "report", "--format=total"]  # this venv's coverage
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S603  # nosec B603
    return PASSED if done.returncode == 0 else FAILED


def scanner_json(command: list[str], path: Path) -> Any:
    """A scanner's JSON report (written to ``path``), or None when it gave none."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)  # noqa: S603  # nosec B603
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None
    path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return report


def checkov_rules(out: Path) -> dict[str, str]:
    """checkov (the Makefile's version) with policy/checks over the shipped overlays and the Dockerfile."""
    version = os.environ.get("CHECKOV_VERSION")
    built = sorted(path for path in (ROOT / ".iac").glob("*.yaml") if path.name != "local.yaml")
    if not version or not built:
        return {}
    uv = os.environ.get("UV", "uv")
    command = [uv, "tool", "run", "--from", f"checkov=={version}", "checkov", "--skip-download", "-o", "json"]
    command += ["--framework", "kubernetes", "dockerfile", "--external-checks-dir", "policy/checks"]
    for path in [*built, ROOT / "Dockerfile"]:
        command += ["-f", str(path.relative_to(ROOT))]
    report = scanner_json(command, out / "checkov.json")
    results: dict[str, str] = {}
    for part in report if isinstance(report, list) else [report] if report else []:
        checks = part.get("results", {})
        for check in checks.get("passed_checks", []):
            results.setdefault(check["check_id"], PASSED)
        for check in checks.get("failed_checks", []):
            results[check["check_id"]] = FAILED
    return results


def hadolint_rules(out: Path, rules: set[str]) -> dict[str, str]:
    """hadolint (the gates group) over the Dockerfile: a DL rule passed when hadolint reported it not."""
    uv = os.environ.get("UV", "uv")
    report = scanner_json(
        [uv, "run", "--frozen", "--group", "gates", "hadolint", "-f", "json", "Dockerfile"], out / "hadolint.json"
    )
    if not isinstance(report, list):
        return {}
    found = {str(finding.get("code")) for finding in report}
    return {rule: FAILED if rule in found else PASSED for rule in rules if rule.startswith("DL")}


# --- Reading results -----------------------------------------------------------------------------


def node_of(classname: str, name: str, root: Path) -> str:
    """JUnit (xunit2) classname ``tests.test_x`` or ``tests.test_x.TestY`` and name ``test_z[p]`` as
    the catalogue's node id ``tests/test_x.py::TestY::test_z``."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        file = "/".join(parts[:cut]) + ".py"
        if (root / file).is_file():
            return "::".join([file, *parts[cut:], re.sub(r"\[.*\]$", "", name)])
    return f"{classname}::{name}"


def junit_results(path: Path | None, root: Path) -> dict[str, list[str]]:
    """node id -> the outcome of each of its cases (parametrized tests have several)."""
    if path is None or not path.is_file():
        return {}
    outcomes: dict[str, list[str]] = {}
    for case in ET.parse(path).iter("testcase"):  # noqa: S314  # nosec B314
        tags = {child.tag for child in case}
        outcome = FAILED if tags & {"failure", "error"} else NOT_RUN if "skipped" in tags else PASSED
        outcomes.setdefault(node_of(case.get("classname", ""), case.get("name", ""), root), []).append(outcome)
    return outcomes


def combined(outcomes: list[str]) -> str:
    """All must pass: any failure fails, any case not run (or none at all) is not run."""
    if FAILED in outcomes:
        return FAILED
    return PASSED if outcomes and all(outcome == PASSED for outcome in outcomes) else NOT_RUN


def ci_results(path: Path | None) -> dict[str, str]:
    """The CI jobs' results: GitHub's ``toJSON(needs)`` ({job: {result: ...}}) or {job: result} in a
    JSON file, or a folder with one file a job holding its GitLab CI_JOB_STATUS. A job skipped,
    cancelled or not listed is not-run."""
    if path is None or not path.exists():
        return {}
    if path.is_dir():
        loaded: dict[str, Any] = {file.name: file.read_text(encoding="utf-8").strip() for file in path.iterdir()}
    else:
        loaded = json.loads(path.read_text(encoding="utf-8") or "{}")
    results = {job: value.get("result") if isinstance(value, dict) else value for job, value in loaded.items()}
    return {job: CI_OUTCOMES.get(str(result), NOT_RUN) for job, result in results.items()}


# --- The report ----------------------------------------------------------------------------------


def verdict(control: dict[str, Any], results: dict[str, dict[str, str]], answers: dict[str, Any]) -> dict[str, Any]:
    """One control's verifiers with their results, and its status."""
    verified = control.get("verified_by") or {}
    kinds = {"pytest": "tests", "make": "gates", "rules": "rules", "ci": "ci"}
    entry: dict[str, Any] = {"id": control["id"], "title": control["title"]}
    for kind, key in kinds.items():
        entry[key] = {
            str(name): results[key].get(str(name), NOT_RUN) for name in for_provider(verified.get(kind), answers)
        }
    if "test" in entry["gates"] and entry["tests"]:
        # `make test` verifies a control through the control's own tests, not through the others.
        entry["gates"]["test"] = combined(list(entry["tests"].values()))
    outcomes = [outcome for key in kinds.values() for outcome in entry[key].values()]
    complete = all(outcome != NOT_RUN for outcome in entry["tests"].values())
    good = complete and FAILED not in outcomes and PASSED in outcomes
    entry["status"] = EVIDENCED if good else NOT_EVIDENCED
    return entry


def report(root: Path, results: dict[str, dict[str, str]], now: datetime.datetime) -> dict[str, Any]:
    answers = answers_of(root)
    recorded = load_yaml(root / ANSWERS) or {}
    controls = [verdict(control, results, answers) for control in applicable(catalogue_of(root), answers)]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "project": recorded.get("project_name"),
        "answers": {name: value for name, value in recorded.items() if not name.startswith("_")},
        "template": {"source": recorded.get("_src_path"), "version": recorded.get("_commit")},
        "generated": now.isoformat(timespec="seconds"),
        "summary": dict(Counter(entry["status"] for entry in controls)),
        "gates": results["gates"],
        "ci": results["ci"],
        "controls": controls,
    }


def cell(results: dict[str, str]) -> str:
    return "<br>".join(f"{name}: {outcome}" for name, outcome in results.items()) or "-"


def markdown(evidence: dict[str, Any]) -> str:
    summary = ", ".join(f"{count} {status}" for status, count in sorted(evidence["summary"].items()))
    lines = [
        f"# Control evidence: {evidence['project']}",
        "",
        f"Generated {evidence['generated']} from template version {evidence['template']['version']}.",
        f"{len(evidence['controls'])} applicable controls: {summary}.",
        "",
        "A control is evidenced when every test, gate, rule and CI job below that this run ran passed,",
        "at least one ran, and all its tests ran.",
    ]
    families: dict[str, list[dict[str, Any]]] = {}
    for entry in evidence["controls"]:
        families.setdefault(entry["id"].split("-")[0], []).append(entry)
    for family, entries in families.items():
        lines += [
            "",
            f"## {family}",
            "",
            "| Control | Status | Tests | Gates | Rules | CI jobs |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {entry['id']} {entry['title']} | {entry['status']} | {cell(entry['tests'])} | {cell(entry['gates'])}"
            f" | {cell(entry['rules'])} | {cell(entry['ci'])} |"
            for entry in entries
        ]
    return "\n".join(lines) + "\n"


def write(evidence: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "evidence.json").write_text(json.dumps(evidence, indent=2) + "\n", encoding="utf-8")
    (out / "evidence.md").write_text(markdown(evidence), encoding="utf-8")


def catalogued(root: Path, kind: str) -> set[str]:
    answers = answers_of(root)
    return {
        str(name)
        for control in applicable(catalogue_of(root), answers)
        for name in for_provider((control.get("verified_by") or {}).get(kind), answers)
    }


def run(options: argparse.Namespace) -> int:
    out: Path = options.out
    out.mkdir(parents=True, exist_ok=True)
    junit = options.junit or out / "junit.xml"
    gates = options.gates.split()
    if options.junit is None and "coverage" not in gates:
        gates.append("coverage")  # the one run of the suite
    if options.junit is None:
        junit.unlink(missing_ok=True)
    results: dict[str, dict[str, str]] = {"gates": {}, "rules": {}, "ci": ci_results(options.ci_results)}
    for gate in gates:
        results["gates"][gate] = run_gate(gate, out, None if options.junit else junit.resolve())
    if options.junit is not None and "coverage" not in gates:
        results["gates"]["coverage"] = coverage_of_that_run()
    nodes = {node: combined(outcomes) for node, outcomes in junit_results(junit, ROOT).items()}
    results["tests"] = nodes
    results["gates"]["test"] = combined(list(nodes.values())) if nodes else NOT_RUN
    if results["gates"].get("iac") == PASSED:  # .iac/ is this run's build (a failed gate's log says why)
        results["rules"] = checkov_rules(out) | hadolint_rules(out, catalogued(ROOT, "rules"))
    evidence = report(ROOT, results, datetime.datetime.now(datetime.UTC))
    write(evidence, out)
    print(f"evidence: {out / 'evidence.md'}: {len(evidence['controls'])} controls, {evidence['summary']}")
    return 0


# --- OSCAL ---------------------------------------------------------------------------------------


def oscal_id(requirement: str) -> str:
    """SC-8(1) -> sc-8.1 (OSCAL control ids of the NIST catalog)."""
    return re.sub(r"\((\d+)\)", r".\1", requirement).lower()


def stable(*names: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(names)))


def props(control: dict[str, Any], answers: dict[str, Any]) -> list[dict[str, str]]:
    """The catalogue's control id, where it is implemented and what verifies it, as OSCAL props."""
    verified = control.get("verified_by") or {}
    named = [("control", control["id"])]
    paths = for_provider(control.get("implemented_in"), answers)
    named += [("implemented-in", expand(path, answers)) for path in paths]
    named += [
        (f"verified-by-{kind}", name)
        for kind in ("pytest", "make", "rules", "ci")
        for name in for_provider(verified.get(kind), answers)
    ]
    # A requirement met by several controls carries each one's props: `group` keeps them apart.
    return [{"name": name, "ns": SCHEMA, "value": str(value), "group": control["id"]} for name, value in named]


def requirements(controls: list[dict[str, Any]], answers: dict[str, Any], framework: str) -> list[dict[str, Any]]:
    """One implemented requirement per requirement id, described by each control that helps meet it."""
    meeting: dict[str, list[dict[str, Any]]] = {}
    for control in controls:
        for requirement_id in (control.get("frameworks") or {}).get(framework, []):
            meeting.setdefault(str(requirement_id), []).append(control)
    return [
        {
            "uuid": stable(framework, requirement_id),
            "control-id": oscal_id(requirement_id),
            "description": "\n\n".join(
                f"{control['id']} {control['title']}: {' '.join(str(control['statement']).split())}"
                for control in meeting_it
            ),
            "props": [prop for control in meeting_it for prop in props(control, answers)],
        }
        for requirement_id, meeting_it in meeting.items()
    ]


def component_definition(root: Path, now: datetime.datetime) -> dict[str, Any]:
    answers = answers_of(root)
    recorded = load_yaml(root / ANSWERS) or {}
    controls = applicable(catalogue_of(root), answers)
    implementations = [
        {
            "uuid": stable("implementation", framework),
            "source": source,
            "description": f"This project's applicable controls (compliance/controls.yaml) mapped to {framework}.",
            "implemented-requirements": requirements(controls, answers, framework),
        }
        for framework, source in OSCAL_SOURCES.items()
    ]
    name = str(recorded.get("project_name"))
    return {
        "component-definition": {
            "uuid": stable("component-definition", name),
            "metadata": {
                "title": f"{name}: component definition",
                "last-modified": now.isoformat(timespec="seconds"),
                "version": str(recorded.get("_commit", "unknown")),
                "oscal-version": OSCAL_VERSION,
                "remarks": "Written by scripts/evidence.py oscal from compliance/controls.yaml. The frameworks "
                "without an OSCAL catalog or profile (ISO/IEC 27001, SOC 2, PCI DSS, HIPAA, GDPR, CIS) are left out.",
            },
            "components": [
                {
                    "uuid": stable("component", name),
                    "type": "software",
                    "title": name,
                    "description": str(recorded.get("description") or name),
                    "props": [
                        {"name": "template-version", "ns": SCHEMA, "value": str(recorded.get("_commit", "unknown"))}
                    ],
                    "control-implementations": [item for item in implementations if item["implemented-requirements"]],
                }
            ],
        }
    }


def oscal(options: argparse.Namespace) -> int:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    now = datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch else datetime.datetime.now(datetime.UTC)
    definition = component_definition(ROOT, now)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(definition, indent=2) + "\n", encoding="utf-8")
    component = definition["component-definition"]["components"][0]
    count = sum(len(item["implemented-requirements"]) for item in component["control-implementations"])
    print(f"oscal: {options.output}: {count} implemented requirements")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_command = commands.add_parser("run", help="run the suite and gates, write evidence/evidence.json and .md")
    run_command.add_argument("--junit", type=Path, help="reuse this JUnit file instead of running the suite")
    run_command.add_argument("--gates", default=" ".join(GATES), help="make gates to run, space-separated")
    run_command.add_argument(
        "--ci-results", type=Path, help="CI jobs' results: JSON (GitHub: toJSON(needs)) or a folder"
    )
    run_command.add_argument("--out", type=Path, default=ROOT / OUT)
    oscal_command = commands.add_parser("oscal", help="write the OSCAL component definition")
    oscal_command.add_argument("--output", type=Path, default=ROOT / OUT / "component-definition.json")
    options = parser.parse_args(argv)
    return run(options) if options.command == "run" else oscal(options)


if __name__ == "__main__":
    sys.exit(main())
