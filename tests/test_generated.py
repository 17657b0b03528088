"""Each rendered project passes its own test suite and linters, straight after `copier copy`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import CUSTOM, combo_id, covering, make, project_venv, render, run_in

# The default answers, then every combination of the answers that change the server's code,
# auth mode and architecture (the others, python_version included, take each of their choices
# in turn), with non-default names and values.
# The first combination (standalone, mtls: what `make demo` generates) keeps every default, and
# is copied without --trust and locked with `make lock`, as the docs tell a cautious user.
COMBINATIONS = covering("auth_mode", "architecture")
PROJECTS = [pytest.param({}, id="defaults", marks=pytest.mark.xdist_group("defaults"))] + [
    pytest.param({**CUSTOM, **answers}, id=combo_id(answers), marks=pytest.mark.xdist_group(combo_id(answers)))
    for answers in COMBINATIONS[1:]
]
assert {key: value for key, value in COMBINATIONS[0].items() if key in ("auth_mode", "architecture")} == {
    "auth_mode": "mtls",
    "architecture": "standalone",
}


def newcomer_copy(destination: Path) -> Path:
    """The defaults as a cautious newcomer makes them: `copier copy --skip-tasks` without
    --trust, then the documented `make lock`; the checks refuse the project until then."""
    project = render(destination, trust=False, skip_tasks=True)
    refused = make(project, "locked")
    assert refused.returncode != 0
    assert "uv.lock is missing (copier writes none): run `make lock`, then commit uv.lock" in refused.stderr
    for target in ("lock", "locked"):
        result = make(project, target)
        assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.fixture(scope="module", params=PROJECTS)
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    answers: dict[str, Any] = request.param
    destination = tmp_path_factory.mktemp("generated") / "project"
    rendered = render(destination, answers) if answers else newcomer_copy(destination)
    return rendered, project_venv(rendered)


def test_its_own_test_suite_passes_with_its_coverage_threshold(project: tuple[Path, Path]) -> None:
    """The suite runs as `make coverage` runs it, so the coverage gate is proved on every combination."""
    result = run_in(*project, "coverage", "run", "-m", "pytest", "-q", "-p", "no:cacheprovider")
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed, summary
    assert int(passed.group(1)) >= 60, summary
    assert "skipped" not in summary, summary
    for command in (("coverage", "combine", "--quiet"), ("coverage", "report", "--format=total")):
        report = run_in(*project, *command)
        assert report.returncode == 0, " ".join(command) + "\n" + report.stdout[-4000:] + report.stderr[-2000:]
    threshold = tomllib.loads((project[0] / "pyproject.toml").read_text())["tool"]["coverage"]["report"]["fail_under"]
    # Most tests reach the server as a subprocess: without subprocess measurement this falls far below.
    assert int(report.stdout.strip()) >= threshold + 3, f"measured {report.stdout.strip()}%, threshold {threshold}%"


@pytest.mark.parametrize(
    "command",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("mypy",),
        ("bandit", "-q", "-c", "pyproject.toml", "-r", "src", "scripts"),
    ],
    ids=["ruff", "ruff-format", "mypy-strict", "bandit"],
)
def test_linter_is_clean(project: tuple[Path, Path], command: tuple[str, ...]) -> None:
    result = run_in(*project, *command)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
