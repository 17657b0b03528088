"""The generated CI: for each ci_provider (every other answer taking its choices in turn), the
pipeline files render, match their schemas, pass actionlint and zizmor (GitHub) or the
structural checks (GitLab), hold every gate as a blocking job, pin every action and image,
and the pre-commit hooks pass on a fresh render. Each check is also shown to fail on a planted
defect, so none of them passes by accident."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CUSTOM, ROOT, UV, combo_id, covering, project_venv, python_for, render, run_in, tool_venv

PROJECTS = [
    pytest.param({**CUSTOM, **answers}, id=combo_id(answers), marks=pytest.mark.xdist_group(f"ci-{combo_id(answers)}"))
    for answers in covering("ci_provider")
]
# The projects of one provider, for the checks that only apply to its files.
GITHUB, GITLAB = ([p for p in PROJECTS if p.values[0]["ci_provider"] == name] for name in ("github", "gitlab"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")
# A step's `uses:` (not the `statuses:` permission, nor a comment that names one).
USES = re.compile(r"^\s*(?:-\s+)?uses: (.+)$", re.MULTILINE)
# The write scopes each job may hold, and why: everything else is read-only or absent.
WRITE_SCOPES = {
    ("ci.yml", "publish"): {"id-token", "attestations", "packages"},  # keyless signing, provenance, push
    ("codeql.yml", "analyze"): {"security-events"},  # upload code scanning results
    ("scorecard.yml", "analysis"): {"security-events", "id-token"},  # upload SARIF, publish results
    # push the branch, open its PR, make check's outcome as a commit status on its head
    ("template-update.yml", "update"): {"contents", "pull-requests", "statuses"},
}
# Gate (issue #5 numbering) -> what the pipeline must run for it, on each provider.
GATES = {
    "1 lint and types": ["make lint", "make workflows"],
    "2 tests with coverage": ["make coverage"],
    "3 SAST": ["make sast"],
    "4 secrets": ["make secrets", "make secrets-history"],
    "5 dependencies": ["make audit"],
    "6 IaC": ["make iac"],
    "8 deploy smoke": ["make kind-up"],
}
# Stage 7 and the provider's own scanners are written in each provider's terms.
PROVIDER_GATES = {
    "github": {
        "3 SAST": ["github/codeql-action/analyze"],
        "5 dependencies": ["actions/dependency-review-action"],
        "7 image": [
            "aquasecurity/trivy-action",
            "severity: HIGH,CRITICAL",
            "ignore-unfixed: true",
            'exit-code: "1"',
            "format: cyclonedx",
            "cosign sign",
            "cosign attest",
            "actions/attest-build-provenance",
        ],
        "scorecard": ["ossf/scorecard-action"],
    },
    "gitlab": {
        "7 image": [
            "trivy image",
            "--severity HIGH,CRITICAL",
            "--ignore-unfixed",
            "--exit-code 1",
            "--format cyclonedx",
            "cosign sign",
            "cosign attest",
            "--type slsaprovenance1",
        ],
    },
}


@pytest.fixture(scope="module", params=PROJECTS)
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    answers: dict[str, Any] = request.param
    return repository(render(tmp_path_factory.mktemp("ci") / "project", answers)), answers["ci_provider"]


def repository(project: Path) -> Path:
    """The README's first step, `git init -b main` (actionlint and the hooks work in a repository)."""
    subprocess.run(["git", "init", "--quiet", "--initial-branch=main"], cwd=project, check=True)
    return project


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def workflows(project: Path) -> dict[str, dict[str, Any]]:
    return {path.name: load(path) for path in sorted((project / ".github" / "workflows").glob("*.yml"))}


def walk(node: Any, key: Any = None) -> list[tuple[Any, Any]]:
    """Every (key, value) pair of a parsed YAML document, nested ones and list items included."""
    if isinstance(node, dict):
        return [pair for k, v in node.items() for pair in [(k, v), *walk(v, k)]]
    if isinstance(node, list):
        return [pair for item in node for pair in ([(key, item)] if isinstance(item, str) else walk(item, key))]
    return []


def tolerated_failures(documents: list[Any]) -> list[Any]:
    """Keys that let a job fail without failing the pipeline, and shell that swallows an exit code."""
    pairs = [pair for document in documents for pair in walk(document)]
    return [key for key, _ in pairs if key in {"continue-on-error", "allow_failure"}] + [
        value for _, value in pairs if isinstance(value, str) and re.search(r"\|\|\s*(true|:)|set \+e", value)
    ]


def unpinned_actions(workflow_text: str) -> list[str]:
    """`uses:` references that are not a full commit SHA followed by the version comment."""
    return [line for line in USES.findall(workflow_text) if not SHA_PIN.match(line)]


def unpinned_images(pipeline: dict[str, Any]) -> list[str]:
    """GitLab jobs whose image (own or inherited, variables expanded) has no version tag."""
    templates = {name: job for name, job in pipeline.items() if name.startswith(".")}
    found = []
    for name, job in pipeline.items():
        if name.startswith(".") or not isinstance(job, dict) or "script" not in job:
            continue
        image = job.get("image") or templates.get(job.get("extends", ""), {}).get("image", "")
        reference = image["name"] if isinstance(image, dict) else image
        for variable, value in pipeline.get("variables", {}).items():
            reference = reference.replace(f"${{{variable}}}", str(value))
        tag = reference.rsplit(":", 1)[-1] if ":" in reference else ""
        if tag == "latest" or not re.search(r"\d", tag):
            found.append(f"{name}: {reference}")
    return found


def pipeline_text(project: Path, provider: str) -> str:
    files = (
        sorted((project / ".github" / "workflows").glob("*.yml"))
        if provider == "github"
        else [project / ".gitlab-ci.yml"]
    )
    return "\n".join(path.read_text() for path in files)


def schema_check(project: Path, schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema at the version the project pins, with a schema it vendors (no network)."""
    venv = project_venv(project, groups=("gates",), runtime=False)
    return run_in(project, venv, "check-jsonschema", "--builtin-schema", schema, *map(str, files))


def test_only_the_chosen_providers_files_are_generated(project: tuple[Path, str]) -> None:
    path, provider = project
    github = [
        ".github/workflows/ci.yml",
        ".github/workflows/codeql.yml",
        ".github/workflows/scorecard.yml",
        ".github/dependabot.yml",
    ]
    gitlab = [".gitlab-ci.yml", "renovate.json"]
    ours, theirs = (github, gitlab) if provider == "github" else (gitlab, github)
    assert all((path / name).is_file() for name in ours), ours
    assert not any((path / name).exists() for name in theirs), theirs
    assert not (path / ".github").exists() or provider == "github"
    for common in (
        ".pre-commit-config.yaml",
        ".semgrep/python.yml",
        ".secrets.baseline",
        ".yamllint.yaml",
        "docs/ci.md",
    ):
        assert (path / common).is_file(), common


def test_pipeline_files_match_their_published_schemas(project: tuple[Path, str]) -> None:
    path, provider = project
    if provider == "github":
        checks = [
            ("vendor.github-workflows", *sorted((path / ".github" / "workflows").glob("*.yml"))),
            ("vendor.dependabot", path / ".github" / "dependabot.yml"),
        ]
    else:
        checks = [("vendor.gitlab-ci", path / ".gitlab-ci.yml"), ("vendor.renovate", path / "renovate.json")]
    for schema, *files in checks:
        result = schema_check(path, schema, *files)
        assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_fails_on_a_broken_pipeline(project: tuple[Path, str], tmp_path: Path) -> None:
    path, provider = project
    broken = tmp_path / "broken.yml"
    if provider == "github":
        broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps: {run: make lint}\n")
        assert schema_check(path, "vendor.github-workflows", broken).returncode != 0
    else:
        broken.write_text("lint:\n  stage: lint\n  script: make lint\n  allow_failure: sometimes\n")
        assert schema_check(path, "vendor.gitlab-ci", broken).returncode != 0


def test_every_gate_is_present_and_blocking(project: tuple[Path, str]) -> None:
    path, provider = project
    text = pipeline_text(path, provider)
    for gate, commands in [*GATES.items(), *PROVIDER_GATES[provider].items()]:
        for command in commands:
            assert command in text, f"gate {gate}: {command!r} missing"
    # No gate may be allowed to fail, anywhere: no key that tolerates failure, no swallowed exit code.
    documents = list(workflows(path).values()) if provider == "github" else [load(path / ".gitlab-ci.yml")]
    assert tolerated_failures(documents) == []
    if provider == "github":
        jobs = workflows(path)["ci.yml"]["jobs"]
        # The image is only built when every gate before it has passed, and only the scanned
        # build is published, from main and v* tags alone.
        assert set(jobs["image"]["needs"]) == {"lint", "test", "sast", "secrets", "dependencies", "iac"}
        assert jobs["image"]["permissions"] == {"contents": "read"}
        assert jobs["publish"]["needs"] == ["image"]
        assert "pull_request" not in jobs["publish"]["if"]
        assert "refs/heads/main" in jobs["publish"]["if"] and "refs/tags/v" in jobs["publish"]["if"]
        assert jobs["dependency-review"]["steps"][0]["with"]["fail-on-severity"] == "low"
        codeql = workflows(path)["codeql.yml"]["jobs"]["analyze"]
        assert set(codeql["strategy"]["matrix"]["language"]) == {"python", "actions"}


def test_the_structural_checks_catch_planted_defects(project: tuple[Path, str]) -> None:
    path, provider = project
    if provider == "github":
        workflow = workflows(path)["ci.yml"]
        workflow["jobs"]["sast"]["continue-on-error"] = True
        assert tolerated_failures([workflow]) == ["continue-on-error"]
        assert unpinned_actions("      - uses: actions/checkout@v7.0.1\n") == ["actions/checkout@v7.0.1"]
        assert unpinned_actions("      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1\n")
    else:
        pipeline = load(path / ".gitlab-ci.yml")
        pipeline["sast"]["allow_failure"] = True
        pipeline["secrets"]["script"].append("make secrets || true")
        assert tolerated_failures([pipeline]) == ["allow_failure", "make secrets || true"]
        pipeline["iac"]["image"] = "python:latest"
        pipeline["image-scan"]["image"]["name"] = "aquasec/trivy"
        assert unpinned_images(pipeline) == ["iac: python:latest", "image-scan: aquasec/trivy"]


def test_the_iac_job_installs_no_kubectl_of_its_own(project: tuple[Path, str]) -> None:
    """`make iac` runs the kubectl of the gates group (uv.lock): CI uses that one, as developers
    do, and no second source (an apt repository, a setup action) that could drift from it."""
    path, provider = project
    if provider == "github":
        steps = workflows(path)["ci.yml"]["jobs"]["iac"]["steps"]
        assert [step.get("uses", "").split("@")[0] for step in steps if "uses" in step] == [
            "actions/checkout",
            "astral-sh/setup-uv",
        ]
        assert [step["run"] for step in steps if "run" in step] == ["make iac"]
    else:
        pipeline = load(path / ".gitlab-ci.yml")
        assert pipeline["iac"]["script"] == ["make iac"]
        assert "before_script" not in pipeline["iac"], "the .python template's uv install only"
    assert "kubectl kustomize" not in pipeline_text(path, provider)
    assert re.search(r"^\t+\$\(GATES\) kubectl kustomize ", (path / "Makefile").read_text(), re.MULTILINE)


def test_make_targets_the_pipeline_calls_exist(project: tuple[Path, str]) -> None:
    path, _ = project
    # iac and kind-up belong to the deployment gates (Dockerfile, deploy/, policy/).
    for target in ("lint", "coverage", "sast", "secrets", "secrets-history", "audit", "workflows", "gates"):
        result = subprocess.run(["make", "-n", target], cwd=path, capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"make {target}: {result.stderr}"


@pytest.mark.parametrize("project", GITHUB, indirect=True)
def test_github_actions_are_pinned_and_least_privilege(project: tuple[Path, str]) -> None:
    path, _ = project
    shas: dict[str, str] = {}
    for name, workflow in workflows(path).items():
        text = (path / ".github" / "workflows" / name).read_text()
        assert unpinned_actions(text) == [], name
        for line in USES.findall(text):
            action, sha = line.split(" ")[0].split("@")
            assert shas.setdefault(action.split("/")[0] + "/" + action.split("/")[1], sha) == sha, line
        assert workflow["permissions"] == {}, f"{name}: top-level permissions must be {{}}"
        assert "pull_request_target" not in workflow[True], name  # PyYAML reads `on:` as True
        assert "concurrency" in workflow, name
        for job_name, job in workflow["jobs"].items():
            assert "permissions" in job, f"{name}:{job_name} has no explicit permissions"
            writes = {scope for scope, level in job["permissions"].items() if level == "write"}
            assert writes <= WRITE_SCOPES.get((name, job_name), set()), f"{name}:{job_name} writes {writes}"
            assert str(job["runs-on"]) != "ubuntu-latest"
            for step in job["steps"]:
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False, f"{name}:{job_name}"


@pytest.mark.parametrize("project", GITLAB, indirect=True)
def test_gitlab_pipeline_structure(project: tuple[Path, str]) -> None:
    path, _ = project
    pipeline = load(path / ".gitlab-ci.yml")
    stages = pipeline["stages"]
    assert stages == ["lint", "test", "sast", "secrets", "dependencies", "iac", "image", "smoke", "evidence", "update"]
    jobs = {name: job for name, job in pipeline.items() if isinstance(job, dict) and "script" in job}
    gates = {"lint", "test", "sast", "secrets", "secrets-history", "dependencies", "iac"}
    assert gates | {"image-build", "image-scan", "image-publish", "smoke"} <= set(jobs)
    assert unpinned_images(pipeline) == []
    for name, job in jobs.items():
        assert job["stage"] in stages, name
        assert job.get("when") != "manual", name
    # Merge requests, the default branch and release tags run the pipeline; only the latter two publish.
    rules = [rule["if"] for rule in pipeline["workflow"]["rules"]]
    assert any("merge_request_event" in rule for rule in rules)
    assert any("$CI_DEFAULT_BRANCH" in rule for rule in rules)
    # The template update runs alone in its pipeline: every other job skips it.
    skip_update = {"if": '$TEMPLATE_UPDATE == "true"', "when": "never"}
    for name, job in jobs.items():
        rules = job.get("rules") or pipeline[job["extends"]]["rules"]
        assert (rules[0] == skip_update) != (name == "template-update"), name
    assert jobs["template-update"]["rules"] == [{"if": '$TEMPLATE_UPDATE == "true"'}]
    publish = [rule["if"] for rule in jobs["image-publish"]["rules"] if rule != skip_update]
    assert publish and all("CI_COMMIT_REF_PROTECTED" in rule for rule in publish)
    assert all("$CI_DEFAULT_BRANCH" in rule or "CI_COMMIT_TAG" in rule for rule in publish)
    assert "merge_request_event" not in json.dumps(jobs["image-publish"])
    assert jobs["image-publish"]["id_tokens"]["SIGSTORE_ID_TOKEN"]["aud"] == "sigstore"
    # The scanned archive is what gets pushed, and the gates run before anything is built.
    assert set(jobs["image-publish"]["needs"]) == {"image-build", "image-scan"}
    assert set(jobs["image-build"]["needs"]) == gates
    assert jobs["image-scan"]["artifacts"]["reports"]["cyclonedx"] == ["sbom.cdx.json"]
    assert jobs["test"]["artifacts"]["reports"]["coverage_report"]["path"] == "coverage.xml"
    assert jobs["secrets-history"]["variables"]["GIT_DEPTH"] == "0"


def update_job_shell(project: Path, provider: str) -> str:
    """The shell the scheduled template-update job runs, on either provider."""
    if provider == "github":
        steps = load(project / ".github" / "workflows" / "template-update.yml")["jobs"]["update"]["steps"]
        return "\n".join(step.get("run", "") for step in steps)
    return "\n".join(load(project / ".gitlab-ci.yml")["template-update"]["script"])


# Ways a job could move the update branch itself: scripts/template_update.py alone moves it (it
# adds to the team's commits there and pushes with a lease), and names the branch the request uses.
BRANCH_BY_HAND = [
    r"git push",
    r"--force",
    r"\bpush -f\b",
    r"git reset",
    r"(checkout -B|switch -C|branch -f)\s+\S*template-update",
    r"--head template-update\b",
    r"merge_request\.py(?!.*\$\{branch\})",
]


def branch_moved_by_hand(shell: str) -> list[str]:
    return [pattern for pattern in BRANCH_BY_HAND if re.search(pattern, shell)]


def files_in_the_tree(shell: str) -> set[str]:
    """Files the shell writes (``>``, ``>>``, ``tee``) in the working tree, not under .git/."""
    written = {target.strip('"') for target in re.findall(r"(?:>>?|\btee(?: -a)?)\s+(\S+)", shell)}
    return {target for target in written if not target.startswith((".git/", "$GITHUB_OUTPUT", "$body"))}


def test_the_update_job_leaves_the_branch_and_the_request_to_the_script(project: tuple[Path, str]) -> None:
    path, provider = project
    shell = update_job_shell(path, provider)
    assert branch_moved_by_hand(shell) == []
    assert "--push-deferred" in shell
    # The update needs a clean working tree: the job writes its files under .git/ only.
    assert files_in_the_tree(shell) == set()
    assert files_in_the_tree("make -s template-update | tee update.env") == {"update.env"}
    if provider == "github":
        # The update decides on the branches the full checkout fetched; the token-holding last
        # step pushes; the pull request is the branch the script printed.
        steps = load(path / ".github" / "workflows" / "template-update.yml")["jobs"]["update"]["steps"]
        checkout = next(step for step in steps if step.get("uses", "").startswith("actions/checkout@"))
        assert checkout["with"]["fetch-depth"] == 0
        assert 'UPDATE_FLAGS="--push origin --no-fetch --defer-push"' in shell
        assert "set -o pipefail" in shell, "a failed update is not hidden by tee"
        assert steps[-1]["env"]["BRANCH"] == "${{ steps.update.outputs.branch }}"
        assert '--head "$BRANCH"' in shell
    else:
        assert 'UPDATE_FLAGS="--push origin --defer-push" > .git/template-update.env' in shell
        commands = load(path / ".gitlab-ci.yml")["template-update"]["script"]
        with_token = [command for command in commands if "TEMPLATE_UPDATE_TOKEN" in command]
        assert with_token and all("--push-deferred" in command for command in with_token), "only the push has it"
    # The checks catch a job that pushes, forces or resets the branch on its own.
    for planted in (
        "git push --force origin template-update",
        "git checkout -B template-update",
        'gh pr create --head template-update --title "$title"',
        'python3 scripts/merge_request.py "$title" body.md 0',
    ):
        assert branch_moved_by_hand(planted), planted


def version_check(project: Path, provider: str) -> tuple[list[str], dict[str, str]]:
    """The update job's check of the release asked for: (command, environment of the version)."""
    if provider == "github":
        steps = load(project / ".github" / "workflows" / "template-update.yml")["jobs"]["update"]["steps"]
        step = next(step for step in steps if step.get("id") == "target")
        return ["bash", "-e", "-c", step["run"]], {"INPUT_VERSION": "", "PAYLOAD_VERSION": ""}
    return ["sh", "-e", "-c", load(project / ".gitlab-ci.yml")["template-update"]["script"][0]], {}


def test_the_update_job_runs_on_a_release_with_a_checked_version(project: tuple[Path, str], tmp_path: Path) -> None:
    """A release starts the update at once (GitHub: Run workflow with a version, or a
    repository_dispatch template-release; GitLab: a pipeline trigger with TEMPLATE_UPDATE_TO), and
    the version reaches make only as a tag vX.Y.Z, checked first: the check is run here."""
    path, provider = project
    command, base = version_check(path, provider)
    name = "INPUT_VERSION" if provider == "github" else "TEMPLATE_UPDATE_TO"
    cases = {"": "", "v1.4.0": "v1.4.0", "v10.20.30": "v10.20.30"}
    refused = ["1.4.0", "v1.4", "v1.4.0 ", "v1.4.0\nv9.9.9", "v1.4.0; id", "$(id)", "v1.4.0\n", "v\uff11.4.0"]
    for value in [*cases, *refused]:
        output = tmp_path / "output"
        output.write_text("")
        env = {**os.environ, **base, name: value, "GITHUB_OUTPUT": str(output)}
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if value in cases:
            assert result.returncode == 0, (value, result.stdout + result.stderr)
            if provider == "github":
                assert output.read_text() == f"version={cases[value]}\n"
        else:
            assert result.returncode != 0, value
            assert output.read_text() == "", value
            assert value not in result.stdout + result.stderr, "the value is never echoed"
    shell = update_job_shell(path, provider)
    if provider == "github":
        workflow = load(path / ".github" / "workflows" / "template-update.yml")
        triggers = workflow[True]
        assert triggers["workflow_dispatch"]["inputs"]["version"]["required"] is False
        assert triggers["repository_dispatch"] == {"types": ["template-release"]}
        job = workflow["jobs"]["update"]
        # The payload too: a repository_dispatch carries the version in client_payload.version.
        payload = dict(base, PAYLOAD_VERSION="v2.0.0", GITHUB_OUTPUT=str(tmp_path / "payload"))
        subprocess.run(command, env={**os.environ, **payload}, check=True)
        assert (tmp_path / "payload").read_text() == "version=v2.0.0\n"
        target = next(step for step in job["steps"] if step.get("id") == "target")
        assert target["env"] == {
            "INPUT_VERSION": "${{ inputs.version }}",
            "PAYLOAD_VERSION": "${{ github.event.client_payload.version }}",
        }
        update = next(step for step in job["steps"] if step.get("id") == "update")
        assert update["env"] == {"TO": "${{ steps.target.outputs.version }}"}
        assert 'make -s template-update TO="$TO" ' in shell
        # No expression is written into a script: every value reaches the shell as a variable.
        assert all("${{" not in step.get("run", "") for step in job["steps"])
    else:
        assert 'make -s template-update TO="${TEMPLATE_UPDATE_TO:-}" UPDATE_FLAGS=' in shell
        assert shell.index("TEMPLATE_UPDATE_TO must be") < shell.index("make -s template-update")


@pytest.mark.parametrize("project", GITHUB, indirect=True)
def test_the_update_pull_request_gets_ci_from_an_app_or_a_commit_status(project: tuple[Path, str]) -> None:
    """A pull request opened with the job token starts no workflow: with a GitHub App (variable
    TEMPLATE_UPDATE_APP_ID) the push and the pull request are the App's, so CI runs; in any case
    make check's outcome is a commit status on the pushed head."""
    path, _ = project
    job = load(path / ".github" / "workflows" / "template-update.yml")["jobs"]["update"]
    assert job["permissions"]["statuses"] == "write"
    assert job["environment"] == "template-update", "the App's key is a secret of that environment"
    steps = job["steps"]
    app = next(step for step in steps if step.get("uses", "").startswith("actions/create-github-app-token@"))
    assert app["if"] == "steps.update.outputs.branch != '' && vars.TEMPLATE_UPDATE_APP_ID != ''"
    assert app["with"]["client-id"] == "${{ vars.TEMPLATE_UPDATE_APP_ID }}"
    assert app["with"]["private-key"] == "${{ secrets.TEMPLATE_UPDATE_APP_KEY }}"
    assert {key for key in app["with"] if key.startswith("permission-")} == {
        "permission-contents",
        "permission-pull-requests",
        "permission-workflows",
    }
    last = steps[-1]
    assert steps.index(app) == len(steps) - 2, "the token is made just before the step that uses it"
    assert last["env"]["GH_TOKEN"] == f"${{{{ steps.{app['id']}.outputs.token || github.token }}}}"
    assert last["env"]["JOB_TOKEN"] == "${{ github.token }}"
    status = last["run"][last["run"].index("gh api") :]
    assert last["run"].index("--push-deferred") < last["run"].index("gh api"), "the status goes on a pushed commit"
    assert (
        'GH_TOKEN="$JOB_TOKEN" gh api --silent --method POST "repos/$GITHUB_REPOSITORY/statuses/$head"' in last["run"]
    )
    assert '-f context="template-update / make check"' in status
    assert "head=$(git rev-parse HEAD)" in last["run"]
    assert 'if [ "$CHECKS" = passed ]; then state=success; else state=failure; fi' in last["run"]


def test_ci_uses_the_uv_the_template_pins(project: tuple[Path, str]) -> None:
    path, provider = project
    template_uv = next(
        pin
        for pin in tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["dev"]
        if pin.startswith("uv==")
    )
    text = pipeline_text(path, provider)
    assert f'UV_VERSION: "{template_uv.removeprefix("uv==")}"' in text


@pytest.mark.parametrize("project", GITHUB, indirect=True)
def test_actionlint_and_zizmor_are_clean_and_catch_a_planted_defect(project: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = project
    venv = project_venv(path, groups=("gates",), runtime=False)
    for command in (("actionlint",), ("zizmor", "--offline", "--persona", "auditor", ".github")):
        result = run_in(path, venv, *command)
        assert result.returncode == 0, result.stdout + result.stderr
    # The same tools fail on a workflow that leaks its token and runs on an unpinned action.
    bad = tmp_path / "bad"
    shutil.copytree(path / ".github", bad / ".github")
    subprocess.run(["git", "init", "-q", str(bad)], check=True)
    (bad / ".github" / "workflows" / "bad.yml").write_text(
        "on: pull_request_target\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v4\n        with:\n          ref: ${{ github.event.pull_request.head.sha }}\n"
        "      - run: echo ${{ github.event.pull_request.title }}\n"
    )
    zizmor = run_in(bad, venv, "zizmor", "--offline", ".github")
    assert zizmor.returncode != 0
    assert "dangerous-triggers" in zizmor.stdout + zizmor.stderr
    assert "unpinned-uses" in zizmor.stdout + zizmor.stderr


def test_workflows_for_another_registry_pass_zizmors_strictest_persona(tmp_path: Path) -> None:
    """A registry other than ghcr.io takes its credentials from secrets: they stay in the release environment."""
    path = repository(render(tmp_path / "project", {"container_registry": "registry.example.com/payments/mcp"}))
    venv = project_venv(path, groups=("gates",), runtime=False)
    for command in (("actionlint",), ("zizmor", "--offline", "--persona", "auditor", ".github")):
        result = run_in(path, venv, *command)
        assert result.returncode == 0, result.stdout + result.stderr
    publish = workflows(path)["ci.yml"]["jobs"]["publish"]
    assert publish["environment"] == "release"
    assert "packages" not in publish["permissions"]


def makefile_pin(project: Path, name: str) -> str:
    match = re.search(rf"^{name} := (\S+)$", (project / "Makefile").read_text(), re.MULTILINE)
    assert match, name
    return match.group(1)


def test_semgrep_rules_are_clean_on_the_project_and_catch_each_violation(project: tuple[Path, str]) -> None:
    path, _ = project
    venv = tool_venv(path, f"semgrep=={makefile_pin(path, 'SEMGREP_VERSION')}")
    scan = (
        "semgrep",
        "scan",
        "--config",
        ".semgrep/",
        "--metrics=off",
        "--disable-version-check",
        "--error",
        "--quiet",
    )
    clean = run_in(path, venv, *scan, "src", "scripts")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    planted = path / "planted"
    planted.mkdir()
    (planted / "bad.py").write_text(
        "import os, pickle, ssl, subprocess\nimport jwt\n\n"
        "def f(ctx: ssl.SSLContext, data: bytes, cmd: str, token: str) -> None:\n"
        "    ctx.minimum_version = ssl.TLSVersion.TLSv1_2\n"
        "    ctx.verify_mode = ssl.CERT_NONE\n"
        '    jwt.decode(token, options={"verify_signature": False})\n'
        "    eval(cmd)\n"
        "    subprocess.run(cmd, shell=True)\n"
        "    pickle.loads(data)\n"
    )
    try:
        found = run_in(path, venv, *scan, "--json", "planted")
    finally:
        shutil.rmtree(planted)
    assert found.returncode == 1, found.stderr
    rules = {result["check_id"].rsplit(".", 1)[-1] for result in json.loads(found.stdout)["results"]}
    expected = {rule["id"] for rule in load(path / ".semgrep" / "python.yml")["rules"]}
    assert rules == expected, expected - rules


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)


# The slowest check (a venv and every hook): once per provider; the hooks do not vary with the other answers.
@pytest.mark.parametrize("project", [GITHUB[0], GITLAB[0]], indirect=True)
def test_pre_commit_and_gate_targets_pass_on_a_fresh_render(project: tuple[Path, str], tmp_path: Path) -> None:
    path, _ = project
    env = {
        **os.environ,
        "PATH": f"{Path(UV).parent}{os.pathsep}{os.environ['PATH']}",
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_PYTHON": python_for(path, (path / ".python-version").read_text().strip()),
        "UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv"),
        # The iac hook runs `make iac`, which tests/test_deploy.py runs on every cloud already.
        "SKIP": "iac",
    }
    env.pop("VIRTUAL_ENV", None)

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=path, env=env, capture_output=True, text=True, timeout=600, check=False)

    def pre_commit() -> subprocess.CompletedProcess[str]:
        return run(UV, "run", "--frozen", "pre-commit", "run", "--all-files")

    subprocess.run([UV, "lock", "--quiet"], cwd=path, env=env, check=True, timeout=600)
    git(path, "add", "-A")
    result = pre_commit()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    hooks = [hook["id"] for repo in load(path / ".pre-commit-config.yaml")["repos"] for hook in repo["hooks"]]
    # Every hook but iac (skipped on purpose) ran on some file and passed: none lacked files.
    assert result.stdout.count("Passed") == len(hooks) - 1, result.stdout
    assert re.search(r"make iac .*Skipped", result.stdout), result.stdout
    leak = path / "src" / "leak.py"
    leak.write_text('AWS_SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY1"\n')
    git(path, "add", "-A")
    try:
        blocked = pre_commit()
    finally:
        leak.unlink()
        git(path, "add", "-A")
    assert blocked.returncode != 0
    assert re.search(r"detect-secrets.*Failed", blocked.stdout), blocked.stdout[-3000:]
    # The make targets CI calls work the same way (semgrep from its Makefile pin, in uv's cache).
    make = run("make", "--no-print-directory", "lint", "workflows", "secrets", "sast", f"UV={UV}")
    assert make.returncode == 0, make.stdout[-6000:] + make.stderr[-3000:]


def test_coverage_follows_the_server_subprocess(project: tuple[Path, str]) -> None:
    path, _ = project
    config = tomllib.loads((path / "pyproject.toml").read_text())["tool"]["coverage"]
    assert config["run"]["patch"] == ["subprocess"]
    assert config["report"]["fail_under"] >= 90  # measured against the threshold in tests/test_generated.py


def test_the_templates_own_workflow_is_pinned_least_privilege_and_lint_clean(default_project: Path) -> None:
    """The template repository's CI (make test; a release from a tag) holds to the rules it gives projects."""
    venv = project_venv(default_project, groups=("gates",), runtime=False)
    for command in (("actionlint",), ("zizmor", "--offline", "--persona", "auditor", ".github")):
        result = run_in(ROOT, venv, *command)
        assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert unpinned_actions(text) == []
    workflow = load(ROOT / ".github" / "workflows" / "ci.yml")
    assert workflow["permissions"] == {}
    assert workflow["jobs"]["test"]["permissions"] == {"contents": "read"}
    assert "bash .ci/run" in text
    # make test runs the generated edge tests once per auth mode; this job runs every suite whole.
    full = workflow["jobs"]["full-suites"]
    assert full["permissions"] == {"contents": "read"}
    assert [step["run"] for step in full["steps"] if "run" in step] == ["make full-suites"]
    assert "FULL_SUITES=1" in (ROOT / "Makefile").read_text()


def test_the_template_is_tagged_only_after_its_tests_passed_on_that_commit() -> None:
    """No tag, no release on red: the release commit is tagged only by the release job, which
    needs `make test` to have passed on that very commit (the push's run, or a run of its own),
    and no tag push starts a release."""
    workflow = load(ROOT / ".github" / "workflows" / "ci.yml")
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert "tags" not in triggers["push"], "a pushed tag would publish before the tests ran"
    assert triggers["push"]["branches"] == ["main"]
    jobs = workflow["jobs"]
    runs = {name: [step["run"] for step in job["steps"] if "run" in step] for name, job in jobs.items()}
    assert runs["test"] == ["bash .ci/run"]
    assert runs["release-test"] == ["bash .ci/run"]
    checkout = next(step for step in jobs["release-test"]["steps"] if "uses" in step)
    assert checkout["with"]["ref"] == "${{ needs.release-plan.outputs.commit }}", "it tests the release commit"
    assert jobs["release-plan"]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert "tools/release.py pending" in runs["release-plan"][0]

    release_job = jobs["release"]
    assert set(release_job["needs"]) == {"test", "release-plan", "release-test"}
    condition = " ".join(release_job["if"].split())
    assert condition == (
        "always() && needs.release-plan.outputs.version != '' && ( "
        "(needs.release-plan.outputs.commit == github.sha && needs.test.result == 'success') || "
        "needs.release-test.result == 'success')"
    )
    writers = [name for name, job in jobs.items() if job.get("permissions", {}).get("contents") == "write"]
    assert writers == ["release"], "only the release job may create a tag"
    (publish,) = runs["release"]
    assert 'object="$COMMIT"' in publish, "the tag names the tested release commit"
    assert release_job["steps"][-1]["env"]["COMMIT"] == "${{ needs.release-plan.outputs.commit }}"
    assert publish.index("git/tags") < publish.index("git/refs") < publish.index("gh release create")


def test_the_release_notifies_the_fleet_only_when_asked(tmp_path: Path) -> None:
    """The notify job runs only after the release job tagged it and only with FLEET_NOTIFY set
    (off by default), in an environment of its own for its tokens, with read-only contents; its
    command works as written (a local service is skipped, nothing sent)."""
    jobs = load(ROOT / ".github" / "workflows" / "ci.yml")["jobs"]
    notify = jobs["notify"]
    assert set(notify["needs"]) == {"release-plan", "release"}
    assert " ".join(notify["if"].split()) == (
        "always() && vars.FLEET_NOTIFY == 'true' && needs.release.result == 'success'"
    )
    assert notify["permissions"] == {"contents": "read"}
    assert notify["environment"] == "fleet-notify"
    (step,) = [step for step in notify["steps"] if "run" in step]
    assert "${{" not in step["run"]
    assert step["env"]["VERSION"] == "${{ needs.release-plan.outputs.version }}"
    assert step["env"]["FLEET_GITHUB_TOKEN"] == "${{ secrets.FLEET_GITHUB_TOKEN }}"
    services = tmp_path / "fleet.txt"
    services.write_text(f"{tmp_path} a-local-checkout\n")
    env = {**os.environ, "VERSION": "1.4.0", "SERVICES": str(services)}
    command = ["bash", "-e", "-c", step["run"]]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a-local-checkout  skipped" in result.stdout
