"""An organisation's layer on this template (examples/org-layer, docs/org-layer.md): a second
Copier template with its own answers file, applied to a project of each architecture. It writes
only paths the template never writes; the project's own checks take its files (the policy
include directory, the organisation's overlay, its checkov rule, its make gate, its CI files);
`copier update` of either template leaves the other's files alone; and Copier's settings file
gives the template's questions the organisation's defaults."""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CUSTOM, ROOT, UV, path_without_system_tools, project_venv, questions, run_in
from copier import run_copy, run_update
from copier.errors import MissingFileWarning
from pathspec import PathSpec
from support.pinned_tools import tool
from test_update import FIX, RELEASE_110, change, commit_all, git, template_repo

LAYER = ROOT / "examples" / "org-layer"
ORG_ANSWERS = ".copier-answers.org.yml"
ORG_REGISTRY = "registry.acme.example.com"
ORG_LABEL = "acme.example.com/org"
ISSUER = "https://login.acme.example.com"
SLUG = "payments-risk-gateway"
NAMESPACE = CUSTOM["k8s_namespace"]
# Each architecture once; clouds, auth modes, CI providers and a mesh take turns.
PROJECTS: dict[str, dict[str, Any]] = {
    "standalone": {"architecture": "standalone", "cloud": "on-prem", "auth_mode": "mtls", "ci_provider": "github"},
    "hub-and-spoke": {"architecture": "hub-and-spoke", "cloud": "aws", "auth_mode": "oauth", "ci_provider": "gitlab"},
    "federated": {
        "architecture": "federated",
        "cloud": "gcp",
        "auth_mode": "mtls+oauth",
        "ci_provider": "github",
        "service_mesh": "istio",
    },
}
# The paths the organisation owns (docs/org-layer.md): the template never writes them.
ORG_OWNED = PathSpec.from_lines(
    "gitignore",
    [
        f"/{ORG_ANSWERS}",
        "/config/policy.d/",
        "/deploy/k8s/overlays/org/",
        "/policy/checks/org_*.yaml",
        "/policy/fixtures/org_pass*.yaml",
        "/policy/fixtures/fail/ORG_K8S_[1-9][0-9][0-9]*.yaml",
        "/org.mk",
        "/.github/workflows/org-*.yml",
        "/.gitlab/org-ci.yml",
        "/docs/org.md",
    ],
)
# Layer v1.1.0: a wider grant, and a line next to one that depends on the template's answers.
GRANT_110 = ('tools = ["whoami"]\n', 'tools = ["whoami", "search_runbooks"]\n')
OVERLAY_110 = ("  - ../{{ base.cloud }}\n", "  - ../{{ base.cloud }}\n  # v1.1.0\n")


def temporary(prefix: str) -> Path:
    """A folder for this session (shared by the tests of one xdist worker), removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def files_of(folder: Path) -> set[str]:
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(folder).parts
    }


def digests(folder: Path, names: set[str]) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(names)}


@functools.cache
def releases() -> Path:
    """This working tree as the template's v1.0.0, and RELEASE_110 of test_update on top as v1.1.0."""
    template = template_repo(temporary("org-template-") / "template")
    change(template, RELEASE_110)
    commit_all(template, "v1.1.0")
    git(template, "tag", "v1.1.0")
    return template


_LAYER_REPOSITORY: dict[str, Path] = {}


def layer_repository(ca_bundle: bytes) -> Path:
    """examples/org-layer as the organisation would publish it: its own repository with its CA
    bundle (a throwaway public CA certificate), tagged v1.0.0, and a v1.1.0 on top."""
    if "layer" not in _LAYER_REPOSITORY:
        layer = temporary("org-layer-") / "layer"
        shutil.copytree(LAYER, layer)
        (layer / "ca" / "org-ca.pem").write_bytes(ca_bundle)
        commit_all(layer, "v1.0.0")
        git(layer, "tag", "v1.0.0")
        change(layer, [("template/config/policy.d/org.toml.jinja", *GRANT_110)])
        change(layer, [("template/deploy/k8s/overlays/org/kustomization.yaml.jinja", *OVERLAY_110)])
        commit_all(layer, "v1.1.0")
        git(layer, "tag", "v1.1.0")
        _LAYER_REPOSITORY["layer"] = layer
    return _LAYER_REPOSITORY["layer"]


@dataclass(frozen=True)
class Layered:
    path: Path
    answers: dict[str, Any]
    venv: Path
    layer: Path
    template_files: set[str]  # what the template wrote
    layer_files: set[str]  # what the layer writes, rendered beside the template's answers alone
    changed_by_layer: list[str]  # `git status` after applying the layer


@functools.cache
def layered(name: str) -> Layered:
    """A project of the template's v1.0.0, committed, then the layer's v1.0.0 applied (no
    --trust: the layer runs nothing) and committed."""
    answers = {**CUSTOM, **PROJECTS[name], "container_registry": f"{ORG_REGISTRY}/payments/{SLUG}"}
    project = temporary(f"org-{name}-") / "project"
    run_copy(str(releases()), project, data=answers, defaults=True, vcs_ref="v1.0.0", quiet=True)
    template_files = files_of(project)
    venv = project_venv(project)
    pki = project.parent / "pki"
    issued = run_in(project, venv, "python", "scripts/dev_pki.py", str(pki))
    assert issued.returncode == 0, issued.stderr
    layer = layer_repository((pki / "ca.pem").read_bytes())
    commit_all(project, "generated")

    alone = project.parent / "layer-alone"
    alone.mkdir()
    shutil.copy2(project / ".copier-answers.yml", alone)
    run_copy(str(layer), alone, defaults=True, vcs_ref="v1.0.0", quiet=True)
    layer_files = files_of(alone) - {".copier-answers.yml"}

    run_copy(str(layer), project, defaults=True, vcs_ref="v1.0.0", quiet=True)
    changed = git(project, "status", "--porcelain", "--untracked-files=all").splitlines()
    commit_all(project, "organisation layer")
    return Layered(project, answers, venv, layer, template_files, layer_files, changed)


def each(*names: str) -> list[Any]:
    return [pytest.param(name, marks=pytest.mark.xdist_group(f"org-layer-{name}")) for name in names]


def built(overlay: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def make(project: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """A make target of the project, with the pinned kubectl for $(GATES) kubectl and no other."""
    path = f"{Path(tool('kubectl')).parent}{os.pathsep}{path_without_system_tools()}"
    return subprocess.run(
        ["make", "--no-print-directory", f"UV={UV}", *arguments],
        cwd=project,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def conflicts(project: Path) -> list[str]:
    markers = ("<<<<<<< ", ">>>>>>> ")
    return [
        name
        for name in files_of(project)
        if name.endswith(".rej")
        or any(line.startswith(markers) for line in (project / name).read_text(errors="replace").splitlines())
    ]


@pytest.mark.parametrize("name", each(*PROJECTS))
def test_the_two_templates_write_no_common_file(name: str) -> None:
    project = layered(name)
    assert project.layer_files, "the layer wrote nothing"
    assert project.layer_files & project.template_files == set()
    assert [f for f in project.layer_files if not ORG_OWNED.match_file(f)] == []
    assert [f for f in project.template_files if ORG_OWNED.match_file(f)] == []
    # Applying the layer changed no file of the template's: every change is a new file.
    assert [line for line in project.changed_by_layer if not line.startswith("?? ")] == []
    assert {line[3:] for line in project.changed_by_layer} == project.layer_files
    ci = {".github/workflows/org-gates.yml": "github", ".gitlab/org-ci.yml": "gitlab"}
    assert {provider for path, provider in ci.items() if path in project.layer_files} == {
        project.answers["ci_provider"]
    }


def test_the_template_never_writes_an_organisation_path() -> None:
    """Whatever the answers: no template source renders to a path the organisation owns."""
    sources = [
        path.relative_to(ROOT / "template").as_posix().removesuffix(".jinja") for path in ROOT.glob("template/**/*")
    ]
    assert [source for source in sources if ORG_OWNED.match_file(source)] == []
    assert "org" not in questions()["cloud"]["choices"].values(), "overlays/<cloud> would be the organisation's"


def test_the_layers_workflow_pins_what_the_templates_ci_pins() -> None:
    """The example's workflow uses the actions and the uv of the template's ci.yml, at the same
    SHAs and version: nothing keeps them current in examples/ but this test."""
    ours = (LAYER / "template" / ".github" / "workflows" / "org-gates.yml.jinja").read_text()
    theirs = (ROOT / "template" / ".github" / "workflows" / "ci.yml.jinja").read_text()
    uses = re.findall(r"uses: (\S+ # \S+)", ours)
    assert uses and [use for use in uses if use not in theirs] == []
    (uv,) = re.findall(r'version: "([0-9.]+)"', ours)
    assert f'UV_VERSION: "{uv}"' in theirs


@pytest.mark.parametrize("name", each(*PROJECTS))
def test_the_organisations_overlay_wraps_the_cloud_overlay_with_its_requirements(name: str) -> None:
    project = layered(name)
    overlays = project.path / "deploy" / "k8s" / "overlays"
    org = built(overlays / "org")
    cloud = built(overlays / project.answers["cloud"])
    key = lambda o: (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])  # noqa: E731
    generated = {key(o) for o in org if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("org-")}
    assert {key(o) for o in org} - generated == {key(o) for o in cloud}, "the cloud overlay, wrapped"
    assert all(o["metadata"]["labels"][ORG_LABEL] == "acme-corporation" for o in org)
    bundles = {o["metadata"]["namespace"]: o for o in org if o["metadata"]["name"].startswith("org-ca-bundle-")}
    deployments = [o for o in org if o["kind"] == "Deployment"]
    assert len(deployments) == {"standalone": 1, "hub-and-spoke": 4, "federated": 3}[name]
    for deployment in deployments:
        spec = deployment["spec"]["template"]["spec"]
        bundle = bundles[deployment["metadata"]["namespace"]]
        assert "-----BEGIN CERTIFICATE-----" in bundle["data"]["ca.pem"]
        assert {"name": "org-ca-bundle", "configMap": {"name": bundle["metadata"]["name"], "defaultMode": 0o444}} in (
            spec["volumes"]
        )
        mount = {"name": "org-ca-bundle", "mountPath": "/etc/org/ca", "readOnly": True}
        assert mount in spec["containers"][0]["volumeMounts"]
        assert all(c["image"].startswith(f"{ORG_REGISTRY}/") for c in spec["containers"])
    front = next(o for o in deployments if o["metadata"]["namespace"] == NAMESPACE)
    env = {e["name"]: e for e in front["spec"]["template"]["spec"]["containers"][0]["env"]}
    if "oauth" in project.answers["auth_mode"]:
        reference = env["PAYMENTS_RISK_GATEWAY_OAUTH_ISSUER_URL"]["valueFrom"]["configMapKeyRef"]
        idp = next(o for o in org if o["metadata"]["name"] == reference["name"])
        assert (idp["metadata"]["namespace"], idp["data"][reference["key"]]) == (NAMESPACE, ISSUER)
        assert env["PAYMENTS_RISK_GATEWAY_OAUTH_ISSUER_CA_FILE"]["value"] == "/etc/org/ca/ca.pem"
    else:
        assert not [variable for variable in env if "OAUTH" in variable]


# Who the organisation's rule (config/policy.d/org.toml) grants, and the kinds of name the
# server's callers have (start-up refuses a principal no caller can have), per auth mode.
AUDITOR = {
    "mtls": "spiffe://mcp.payments.internal.example.org/client/acme-corporation-auditor",
    "oauth": "client_id:acme-corporation-auditor",
    "mtls+oauth": "spiffe://mcp.payments.internal.example.org/client/acme-corporation-auditor",
}
CALLERS = {"mtls": "certificate", "oauth": "token", "mtls+oauth": "certificate,token"}
# Run in the project: the policy as the server loads it, checked as start-up checks it.
LOAD_POLICY = """
import sys
from pathlib import Path
from payments_risk_gateway.security.identity import Principal
from payments_risk_gateway.security.policy import Policy

policy = Policy.load(Path("config/policy.toml"))
assert (Path("config/policy.d/org.toml"), 0) in policy.origins, policy.origins
policy.check_callers(sys.argv[1].split(","))
auditor = Principal(id=sys.argv[2], names=(sys.argv[2],), subject="CN=auditor", scopes=frozenset({"audit:read"}))
assert policy.allows(auditor, "whoami") and not policy.allows(auditor, "revoke_session")
"""


def load_policy(project: Path, venv: Path, auth_mode: str) -> subprocess.CompletedProcess[str]:
    return run_in(project, venv, "python", "-c", LOAD_POLICY, CALLERS[auth_mode], AUDITOR[auth_mode])


@pytest.mark.parametrize("name", each(*PROJECTS))
def test_the_server_reads_the_organisations_rule_from_the_policy_include_directory(name: str) -> None:
    """The rule grants its caller, the project's own policy tests pass with it (the shipped
    policy's patterns all name real tools), and the server starts with it."""
    project = layered(name)
    loaded = load_policy(project.path, project.venv, project.answers["auth_mode"])
    assert loaded.returncode == 0, loaded.stderr
    tests = ("tests/test_policy.py", "tests/test_startup.py::test_sigterm_shuts_down_cleanly")
    result = run_in(project.path, project.venv, "pytest", "-q", "-p", "no:cacheprovider", *tests)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


@pytest.mark.parametrize("name", each("standalone"))
def test_make_policy_proves_the_organisations_rule_and_fails_when_it_stops_biting(name: str, tmp_path: Path) -> None:
    project = layered(name)
    result = make(project.path, "policy")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # The template's rules on pass.yaml, the organisation's on org_pass.yaml; then each rule,
    # ORG_K8S_100 included, failed on its own fail/<RULE>.yaml (else the target fails).
    assert result.stdout.count("Failed checks: 0") == 2, result.stdout[-4000:]
    assert "Passed checks: 1, Failed checks: 0" in result.stdout
    toothless = Path(shutil.copytree(project.path, tmp_path / "toothless", symlinks=True))
    rule = toothless / "policy" / "checks" / "org_ca_bundle.yaml"
    rule.write_text(rule.read_text().replace("spec.volumes.*.configMap.name", "spec.containers.*.name"))
    rule.write_text(rule.read_text().replace("value: org-ca-bundle", "value: app"))
    broken = make(toothless, "policy")
    assert broken.returncode != 0
    assert "ORG_K8S_100 did not fail on policy/fixtures/fail/ORG_K8S_100.yaml" in broken.stdout + broken.stderr


@pytest.mark.parametrize("name", each("standalone", "hub-and-spoke"))
def test_make_check_runs_the_organisations_gate(name: str) -> None:
    project = layered(name)
    # `locked` needs uv.lock, which copier does not write: taken as done; GATES is the PATH.
    gate = make(project.path, "-o", "locked", "GATES=", "org-registry")
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert f"org-registry: every image comes from {ORG_REGISTRY}/: {ORG_REGISTRY}/payments/{SLUG}:0.1.0" in gate.stdout
    foreign = make(project.path, "-o", "locked", "GATES=", "ORG_REGISTRY=registry.elsewhere.example", "org-registry")
    assert foreign.returncode != 0
    assert "org-registry: not from registry.elsewhere.example/" in foreign.stdout
    assert "copier update --defaults --data container_registry=registry.elsewhere.example/" in foreign.stdout
    listed = make(project.path, "help").stdout
    assert "  make check           lint and tests, then the organisation's gates" in listed
    assert "  make org-registry    every image of the organisation's overlay" in listed
    assert make(project.path).stdout == listed, "help stays the default goal"
    planned = make(project.path, "-n", "check").stdout
    assert "kubectl kustomize deploy/k8s/overlays/org" in planned
    assert planned.index("pytest") < planned.index("kubectl kustomize deploy/k8s/overlays/org")


@pytest.mark.parametrize("name", each(*PROJECTS))
def test_the_organisations_ci_file_passes_the_projects_workflow_gates(name: str) -> None:
    project = layered(name)
    venv = project_venv(project.path, groups=("gates",), runtime=False)
    path = project.path
    if project.answers["ci_provider"] == "github":
        workflows = sorted(str(p) for p in (path / ".github" / "workflows").glob("*.yml"))
        assert str(path / ".github" / "workflows" / "org-gates.yml") in workflows
        commands = [
            ("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows),
            ("actionlint",),
            ("zizmor", "--offline", "--persona", "auditor", ".github"),
        ]
    else:
        pipeline = yaml.safe_load((path / ".gitlab-ci.yml").read_text())
        org_ci = ".gitlab/org-ci.yml"
        assert pipeline["include"] == [{"local": org_ci, "rules": [{"exists": [org_ci]}]}]
        assert yaml.safe_load((path / org_ci).read_text())["org-gates"]["stage"] in pipeline["stages"]
        commands = [("check-jsonschema", "--builtin-schema", "vendor.gitlab-ci", ".gitlab-ci.yml", org_ci)]
    for command in [*commands, ("yamllint", "--strict", ".")]:
        result = run_in(path, venv, *command)
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"


def updatable(name: str, destination: Path) -> Path:
    """A copy of the layered project (its git history too), to update without touching the shared one."""
    return Path(shutil.copytree(layered(name).path, destination / "project", symlinks=True))


def changed_files(project: Path) -> set[str]:
    return {line[3:] for line in git(project, "status", "--porcelain", "--untracked-files=all").splitlines()}


@pytest.mark.parametrize("name", each("hub-and-spoke"))
def test_updating_the_template_leaves_the_organisations_files_alone(name: str, tmp_path: Path) -> None:
    project = updatable(name, tmp_path)
    org_files = layered(name).layer_files
    before = digests(project, org_files)
    run_update(project, defaults=True, overwrite=True, vcs_ref="v1.1.0", quiet=True, conflict="inline")
    assert FIX in (project / "src" / "payments_risk_gateway" / "security" / "headers.py").read_text()
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"] == "v1.1.0"
    assert digests(project, org_files) == before
    changed = changed_files(project)
    assert changed and not [f for f in changed if ORG_OWNED.match_file(f)], changed
    assert conflicts(project) == []
    assert built(project / "deploy" / "k8s" / "overlays" / "org")


def update_layer(project: Path, release: str) -> None:
    """``copier update`` of the organisation layer alone, to ``release``."""
    run_update(
        project, answers_file=ORG_ANSWERS, defaults=True, overwrite=True, vcs_ref=release, quiet=True, conflict="inline"
    )


@pytest.mark.parametrize("name", each("hub-and-spoke"))
@pytest.mark.filterwarnings("ignore::copier.errors.MissingFileWarning")
def test_updating_the_layer_changes_only_its_own_files(name: str, tmp_path: Path) -> None:
    project = updatable(name, tmp_path)
    template_files = layered(name).template_files
    before = digests(project, template_files)
    with pytest.warns(MissingFileWarning, match=r"\.copier-answers\.yml"):  # the replay: base_snapshot covers it
        update_layer(project, "v1.1.0")
    assert digests(project, template_files) == before
    assert changed_files(project) == {
        ORG_ANSWERS,
        "config/policy.d/org.toml",
        "deploy/k8s/overlays/org/kustomization.yaml",
    }
    assert conflicts(project) == []
    assert GRANT_110[1] in (project / "config" / "policy.d" / "org.toml").read_text()
    assert (
        "  - ../aws\n  # v1.1.0\n"
        in (project / "deploy" / "k8s" / "overlays" / "org" / "kustomization.yaml").read_text()
    )
    recorded = yaml.safe_load((project / ORG_ANSWERS).read_text())
    assert recorded["_commit"] == "v1.1.0"
    assert recorded["base_snapshot"]["auth_mode"] == "oauth" and "_commit" not in recorded["base_snapshot"]


@pytest.mark.parametrize("name", each("standalone"))
@pytest.mark.filterwarnings("ignore::copier.errors.MissingFileWarning")
def test_the_layer_follows_a_changed_template_answer(name: str, tmp_path: Path) -> None:
    """auth_mode mtls -> oauth in the template: start-up would refuse the layer's certificate
    rule, naming its file; the layer's next update (to the same release) names the auditor by
    token and brings the IdP to the overlay."""
    project = updatable(name, tmp_path)
    run_update(project, data={"auth_mode": "oauth"}, defaults=True, overwrite=True, quiet=True, conflict="inline")
    commit_all(project, "auth_mode oauth")
    venv = layered(name).venv
    stale = load_policy(project, venv, "oauth")
    assert "config/policy.d/org.toml: allow.0.principals: 'spiffe://" in stale.stderr
    assert "can never match: no client presents a certificate to this server" in stale.stderr
    with pytest.warns(MissingFileWarning):
        update_layer(project, "v1.0.0")
    assert conflicts(project) == []
    policy = (project / "config" / "policy.d" / "org.toml").read_text()
    assert 'principals = ["client_id:acme-corporation-auditor"]' in policy and "spiffe://" not in policy
    loaded = load_policy(project, venv, "oauth")
    assert loaded.returncode == 0, loaded.stderr
    overlay = built(project / "deploy" / "k8s" / "overlays" / "org")
    assert [o["data"]["issuer-url"] for o in overlay if o["metadata"]["name"].startswith("org-idp-")] == [ISSUER]
    assert yaml.safe_load((project / ORG_ANSWERS).read_text())["base_snapshot"]["auth_mode"] == "oauth"


def test_organisation_defaults_come_from_copiers_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/org-layer.md: the `defaults:` of the file COPIER_SETTINGS_PATH names answer the
    template's questions (Jinja included) unless --data does."""
    settings = tmp_path / "settings.yml"
    settings.write_text(
        "defaults:\n"
        f'  container_registry: "{ORG_REGISTRY}/{{{{ project_slug }}}}"\n'
        f"  oauth_issuer_url: {ISSUER}/realms/mcp\n"
        "  compliance: [soc2, nist-800-53, pci-dss]\n"
    )
    monkeypatch.setenv("COPIER_SETTINGS_PATH", str(settings))
    project = tmp_path / "project"
    run_copy(str(releases()), project, data={"auth_mode": "oauth"}, defaults=True, vcs_ref="v1.0.0", quiet=True)
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["container_registry"] == f"{ORG_REGISTRY}/acme-mcp-server"
    assert answers["oauth_issuer_url"] == f"{ISSUER}/realms/mcp"
    assert answers["compliance"] == ["soc2", "nist-800-53", "pci-dss"]
    assert (
        f'oauth_issuer_url: str = "{ISSUER}/realms/mcp"'
        in (project / "src" / "acme_mcp_server" / "settings" / "oauth.py").read_text()
    )
    chosen = tmp_path / "chosen"
    run_copy(
        str(releases()),
        chosen,
        data={"container_registry": "ghcr.io/payments/mcp"},
        defaults=True,
        vcs_ref="v1.0.0",
        quiet=True,
    )
    answers = yaml.safe_load((chosen / ".copier-answers.yml").read_text())
    assert answers["container_registry"] == "ghcr.io/payments/mcp"
    assert "oauth_issuer_url" not in answers, "asked only with oauth"
