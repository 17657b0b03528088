"""No --trust anywhere: a project copied and updated without it is complete, and its checks
name the fix when `copier update` leaves uv.lock behind pyproject.toml."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import UV, make
from copier import run_copy, run_update
from test_update import commit_all, template_repo


def test_an_answer_changed_by_an_untrusted_update_is_caught_until_make_lock(tmp_path: Path) -> None:
    template = template_repo(tmp_path / "template")
    project = tmp_path / "project"
    run_copy(str(template), project, defaults=True, unsafe=False, vcs_ref="v1.0.0", quiet=True)
    assert make(project, "lock").returncode == 0
    commit_all(project, "generated and locked")

    # As a hosted Renovate or a cautious user runs it: no --trust, so no task and no migration.
    run_update(
        project, data={"auth_mode": "oauth"}, defaults=True, overwrite=True, unsafe=False, vcs_ref="v1.0.0", quiet=True
    )
    assert "pyjwt" in (project / "pyproject.toml").read_text()

    refused = make(project, "locked")
    assert refused.returncode != 0
    assert (
        "uv.lock does not match pyproject.toml (an edit or `copier update` changed it): "
        "run `make lock`, then commit uv.lock"
    ) in refused.stderr
    lint = make(project, "lint")
    assert lint.returncode != 0
    assert "uv.lock does not match pyproject.toml" in lint.stderr, "the project's checks refuse it first"

    assert make(project, "lock").returncode == 0
    assert make(project, "locked").returncode == 0
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    subprocess.run([UV, "lock", "--locked"], cwd=project, env=env, capture_output=True, check=True)
