"""The controls catalogue (compliance/controls.yaml) against this project.

    python scripts/controls.py list [--framework nist-800-53]   the controls that apply here
    python scripts/controls.py check                            every reference still holds

``check`` exits 1 with one line per problem: a path in ``implemented_in`` that is gone, a pytest
node whose file no longer defines that test (read with ``ast``, nothing imported), a CI job or
make target that does not exist, a rule of policy/checks (ORG_K8S_*) that is not defined there,
an ``applies_when`` that names no answer. ``make controls`` (part of ``make lint``) runs it.
PyYAML is pinned in the dev group; nothing else outside the standard library.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = Path("compliance/controls.yaml")
ANSWERS = Path(".copier-answers.yml")
FAMILIES = ("NET", "IAM", "REQ", "RUN", "SUP", "LOG", "KEY", "MCP")
CONTROL_ID = re.compile(rf"^({'|'.join(FAMILIES)})-\d{{2}}$")
KEYS = {"id", "title", "statement", "threats", "implemented_in", "verified_by", "applies_when", "frameworks"}
REQUIRED = ("id", "title", "statement", "implemented_in", "verified_by")
EVIDENCE = {"pytest", "ci", "make", "rules"}
PROVIDERS = {"github", "gitlab"}
CI_FILES = {"github": Path(".github/workflows/ci.yml"), "gitlab": Path(".gitlab-ci.yml")}
# Top-level keys of .gitlab-ci.yml that are settings, not jobs.
GITLAB_KEYWORDS = {
    "default",
    "include",
    "stages",
    "variables",
    "workflow",
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
    "spec",
}
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
MAKE_RULE = re.compile(r"^([A-Za-z0-9_.%/ -]+?)\s*::?(?![=])")
# The project's own scanner rules (policy/checks); checkov's and hadolint's ids are theirs.
OWN_RULE = re.compile(r"^\s*id:\s*[\"']?(ORG_K8S_\d+)", re.MULTILINE)

# ``applies_when`` names recorded answers only (copier does not record its computed ones), and
# ``{package}`` in a path stands for the package_name answer.
PLACEHOLDER_ALIASES = {"package": "package_name"}


def load_yaml(path: Path) -> Any:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        sys.exit("controls.py needs PyYAML: run it with the project's venv (make install, then uv run)")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def answers_of(root: Path) -> dict[str, Any]:
    recorded = load_yaml(root / ANSWERS) or {}
    answers = {name: value for name, value in recorded.items() if not name.startswith("_")}
    return answers | {alias: answers.get(name) for alias, name in PLACEHOLDER_ALIASES.items()}


def catalogue_of(root: Path) -> list[dict[str, Any]]:
    controls = load_yaml(root / CATALOGUE)
    if not isinstance(controls, list) or not all(isinstance(control, dict) for control in controls):
        sys.exit(f"{CATALOGUE}: expected a list of controls")
    return controls


def for_provider(value: Any, answers: dict[str, Any]) -> list[Any]:
    """A list, or the list of this project's CI provider from a {github: ..., gitlab: ...} mapping."""
    if isinstance(value, dict):
        return list(value.get(answers.get("ci_provider"), []) or [])
    return list(value or [])


def applies(control: dict[str, Any], answers: dict[str, Any]) -> bool:
    for name, allowed in (control.get("applies_when") or {}).items():
        value = answers.get(name)
        values = value if isinstance(value, list) else [value]
        if not any(item in allowed for item in values):
            return False
    return True


def applicable(controls: Iterable[dict[str, Any]], answers: dict[str, Any]) -> list[dict[str, Any]]:
    return [control for control in controls if applies(control, answers)]


def expand(path: str, answers: dict[str, Any]) -> str:
    return PLACEHOLDER.sub(lambda match: str(answers.get(match.group(1), match.group(0))), path)


@functools.cache
def defined_tests(path: Path) -> set[str]:
    """The node ids below ``path`` its source defines: ``name`` and ``Class::name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    names = {node.name for node in tree.body if isinstance(node, functions)}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{item.name}" for item in node.body if isinstance(item, functions)}
    return names


@functools.cache
def ci_jobs(root: Path, provider: str) -> set[str] | None:
    path = root / CI_FILES[provider]
    if not path.is_file():
        return None
    pipeline = load_yaml(path) or {}
    if provider == "github":
        return set(pipeline.get("jobs") or {})
    return {name for name in pipeline if not name.startswith(".") and name not in GITLAB_KEYWORDS}


@functools.cache
def make_targets(root: Path) -> set[str]:
    targets: set[str] = set()
    for line in (root / "Makefile").read_text(encoding="utf-8").splitlines():
        match = MAKE_RULE.match(line)
        if match and not line.startswith(("\t", "#")):
            targets.update(match.group(1).split())
    return targets


@functools.cache
def own_rules(root: Path) -> set[str]:
    return {rule for path in (root / "policy" / "checks").glob("*.yaml") for rule in OWN_RULE.findall(path.read_text())}


def schema_problems(control: dict[str, Any], known: set[str]) -> list[str]:
    name = control.get("id", "?")
    problems = [f"{name}: no {key}" for key in REQUIRED if not control.get(key)]
    problems += [f"{name}: unknown key {key}" for key in sorted(set(control) - KEYS)]
    if not CONTROL_ID.match(str(name)):
        problems.append(f"{name}: id is not <{'|'.join(FAMILIES)}>-<two digits>")
    verified = control.get("verified_by") or {}
    problems += [f"{name}: verified_by has unknown kind {kind}" for kind in sorted(set(verified) - EVIDENCE)]
    for field, value in [("implemented_in", control.get("implemented_in")), *verified.items()]:
        if isinstance(value, dict) and set(value) - PROVIDERS:
            problems.append(f"{name}: {field} maps {sorted(set(value) - PROVIDERS)}, not a CI provider")
    for answer, allowed in (control.get("applies_when") or {}).items():
        if answer not in known:
            problems.append(f"{name}: applies_when names {answer}, which is no answer of this project")
        if not isinstance(allowed, list):
            problems.append(f"{name}: applies_when {answer} is not a list of values")
    for framework, references in (control.get("frameworks") or {}).items():
        if not isinstance(references, list) or not references:
            problems.append(f"{name}: frameworks {framework} is not a list of requirement ids")
    return problems


def evidence_problems(control: dict[str, Any], answers: dict[str, Any], root: Path) -> list[str]:
    name = control["id"]
    problems = []
    for path in for_provider(control.get("implemented_in"), answers):
        expanded = expand(path, answers)
        if PLACEHOLDER.search(expanded):
            problems.append(f"{name}: implemented_in {path}: unknown placeholder")
        elif not (root / expanded).exists():
            problems.append(f"{name}: implemented_in {expanded} does not exist")
    verified = control.get("verified_by") or {}
    for node in for_provider(verified.get("pytest"), answers):
        file, _, test = str(node).partition("::")
        if not test:
            problems.append(f"{name}: pytest {node} names no test function")
        elif not (root / file).is_file():
            problems.append(f"{name}: pytest {node}: {file} does not exist")
        elif test not in defined_tests(root / file):
            problems.append(f"{name}: pytest {node}: {file} defines no {test}")
    provider = str(answers.get("ci_provider"))
    jobs = ci_jobs(root, provider) if provider in CI_FILES else None
    for job in for_provider(verified.get("ci"), answers):
        if jobs is None:
            problems.append(f"{name}: ci {job}: this project has no CI file for {provider}")
        elif job not in jobs:
            problems.append(f"{name}: ci {job} is no job of {CI_FILES[provider]}")
    problems += [
        f"{name}: rule {rule} is defined in no policy/checks file"
        for rule in for_provider(verified.get("rules"), answers)
        if str(rule).startswith("ORG_K8S_") and rule not in own_rules(root)
    ]
    targets = make_targets(root)
    problems += [
        f"{name}: make {target} is no target of the Makefile"
        for target in for_provider(verified.get("make"), answers)
        if target not in targets
    ]
    return problems


def check(root: Path) -> list[str]:
    controls = catalogue_of(root)
    answers = answers_of(root)
    problems = []
    seen: set[str] = set()
    for control in controls:
        name = str(control.get("id"))
        if name in seen:
            problems.append(f"{name}: id used twice")
        seen.add(name)
        problems += schema_problems(control, set(answers))
    if problems:
        return problems
    for control in applicable(controls, answers):
        problems += evidence_problems(control, answers, root)
    return problems


def listing(root: Path, framework: str | None) -> list[str]:
    answers = answers_of(root)
    lines = []
    for control in applicable(catalogue_of(root), answers):
        references = (control.get("frameworks") or {}).get(framework, []) if framework else []
        if framework and not references:
            continue
        mapped = f"  [{', '.join(str(reference) for reference in references)}]" if references else ""
        lines.append(f"{control['id']}  {control['title']}{mapped}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="the project (default: this script's)")
    commands = parser.add_subparsers(dest="command", required=True)
    list_command = commands.add_parser("list", help="the controls that apply to this project's answers")
    list_command.add_argument("--framework", help="only controls mapped to this framework, with its requirements")
    commands.add_parser("check", help="every path, test, CI job and make target the catalogue names exists")
    options = parser.parse_args(argv)
    if options.command == "list":
        print("\n".join(listing(options.root, options.framework)))
        return 0
    problems = check(options.root)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
