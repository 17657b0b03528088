"""The service meshes, for every cloud x service_mesh pair (the other answers taking their
choices in turn): each overlay builds with kustomize and validates against the Kubernetes
schemas (only cert-manager's and the chosen mesh's custom kinds lack one); checkov and the
organisation's rules pass on the built manifests of all twelve projects, in one run each; and
the mesh's objects say what the generated docs promise (mTLS STRICT on the ops port, the
expected identities only, the namespace enrolled, a Server per port, what the NetworkPolicies
open), while the kind overlay stays without a mesh.

`make iac` itself (which adds hadolint, `make policy` and the Dockerfile scan) runs in
tests/test_deploy.py on the covering subset, one project per cloud with the meshes in turn:
measured at about 53 s per project on two shared cores, all twelve would add some six minutes
at -n 2, while this module renders the twelve and scans them together in about one and a half
minutes."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    CUSTOM,
    UV,
    answers_with_computed,
    combo_id,
    covering,
    npm_package,
    render,
    tool_venv,
)
from support.pinned_tools import tool
from test_deploy import MESH_KINDS, schemaless_kinds, without_schema
from test_render import ACTIONS_EXPRESSION, UNRENDERED, files

PAIRS = covering("cloud", "service_mesh")
MATRIX = [{**CUSTOM, **answers} for answers in PAIRS]
pytestmark = pytest.mark.xdist_group("mesh")
SLUG = "payments-risk-gateway"
NAMESPACE = "payments-risk"


def kustomize(overlay: Path) -> str:
    """``kubectl kustomize`` with the kubectl of the template's pinned tools."""
    return subprocess.run(
        [tool("kubectl"), "kustomize", str(overlay)], capture_output=True, text=True, check=True
    ).stdout


def checkov(project: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """checkov as the project's Makefile runs it (its own pinned version, offline)."""
    version = re.search(r"^CHECKOV_VERSION := (\S+)$", (project / "Makefile").read_text(), re.MULTILINE)
    assert version
    return subprocess.run(
        [
            UV,
            "tool",
            "run",
            "--from",
            f"checkov=={version[1]}",
            "checkov",
            "--quiet",
            "--compact",
            "--skip-download",
            "--framework",
            "kubernetes",
            *arguments,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def org_rules(project: Path, files: list[Path]) -> subprocess.CompletedProcess[str]:
    """The organisation's rules (policy/checks of ``project``) on ``files``, as `make iac` runs them."""
    rules = sorted(
        {m for f in (project / "policy" / "checks").glob("*.yaml") for m in re.findall(r"ORG_K8S_\d+", f.read_text())}
    )
    return checkov(
        project,
        "--external-checks-dir",
        "policy/checks",
        "--check",
        ",".join(rules),
        *(arg for f in files for arg in ("-f", str(f))),
    )


def objects_of(manifest: str, namespace: str = NAMESPACE) -> dict[tuple[str, str], dict[str, Any]]:
    """The objects of one namespace (its Namespace object included), by kind and name."""
    return {
        (o["kind"], o["metadata"]["name"]): o
        for o in yaml.safe_load_all(manifest)
        if o
        and o["metadata"].get("namespace", o["metadata"]["name"] if o["kind"] == "Namespace" else None) == namespace
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict[str, Any], Path, dict[str, Path]]]:
    """Each project of MATRIX rendered (tasks skipped: nothing here needs the lock file) and each
    of its overlays built to a file under one directory."""
    root = tmp_path_factory.mktemp("mesh")
    out = root / "built"
    out.mkdir()
    projects = []
    for index, answers in enumerate(MATRIX):
        project = render(root / f"p{index}", answers, skip_tasks=True)
        builds = {}
        for overlay in sorted((project / "deploy" / "k8s" / "overlays").iterdir()):
            builds[overlay.name] = out / f"{index:02d}-{answers['cloud']}-{answers['service_mesh']}-{overlay.name}.yaml"
            builds[overlay.name].write_text(kustomize(overlay))
        projects.append((answers, project, builds))
    return projects


def test_every_cloud_and_mesh_pair_is_built() -> None:
    assert {(a["cloud"], a["service_mesh"]) for a in MATRIX} == {
        (c, m) for c in ("on-prem", "aws", "gcp", "azure") for m in ("none", "istio", "linkerd")
    }


def test_every_build_validates_against_the_kubernetes_schemas(
    built: list[tuple[dict[str, Any], Path, dict[str, Path]]],
) -> None:
    _, first, _ = built[0]
    pins = tomllib.loads((first / "pyproject.toml").read_text())["dependency-groups"]["gates"]
    venv = tool_venv(first, next(pin for pin in pins if pin.startswith("kubernetes-validate==")))
    version = re.search(r"^K8S_VERSION := (\S+)$", (first / "Makefile").read_text(), re.MULTILINE)
    assert version
    for answers, _, builds in built:
        result = subprocess.run(
            [
                str(venv / "bin" / "kubernetes-validate"),
                "--quiet",
                "--strict",
                "-k",
                version[1],
                *map(str, builds.values()),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert without_schema(output) <= schemaless_kinds(answers), builds
        assert MESH_KINDS[answers["service_mesh"]] <= without_schema(output), "each of the mesh's kinds is built"


def validate_against_crds(schemas: Path, objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """validate.mjs over ``objects``: a line per object, exit 1 on any error."""
    return subprocess.run(
        [tool("node"), str(schemas / "validate.mjs")],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        cwd=schemas,
        check=False,
    )


def test_custom_resources_validate_against_their_crds(
    built: list[tuple[dict[str, Any], Path, dict[str, Path]]],
) -> None:
    """cert-manager's and Istio's kinds against their CRDs' schemas (types, required fields,
    enums); Linkerd's and Secrets Store CSI's have no offline schema (docs/deployment.md)."""
    schemas = npm_package("crd-schemas")
    objects = [
        o for _, _, builds in built for path in builds.values() for o in yaml.safe_load_all(path.read_text()) if o
    ]
    result = validate_against_crds(schemas, objects)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    validated = {tuple(line.split()[1:3]) for line in result.stdout.splitlines() if line.startswith("valid ")}
    assert validated == {
        ("cert-manager.io/v1", "Certificate"),
        ("cert-manager.io/v1", "Issuer"),
        ("security.istio.io/v1", "PeerAuthentication"),
        ("security.istio.io/v1", "AuthorizationPolicy"),
    }
    # The schemas bite: a mode that is not one of Istio's, a duration that is not a string.
    peer = next(o for o in objects if o["kind"] == "PeerAuthentication")
    certificate = next(o for o in objects if o["kind"] == "Certificate")
    peer["spec"]["mtls"]["mode"], certificate["spec"]["duration"] = "STRICTLY", 2160
    broken = [peer, certificate]
    result = validate_against_crds(schemas, broken)
    assert result.returncode == 1
    assert "data/spec/mtls/mode must be equal to one of the allowed values" in result.stdout
    assert "data/spec/duration must be string" in result.stdout


def test_checkov_and_the_organisations_rules_pass_on_every_build(
    built: list[tuple[dict[str, Any], Path, dict[str, Path]]],
) -> None:
    _, first, _ = built[0]
    for _, project, _ in built:  # the rules are rendered from answers these projects share
        for rule in (project / "policy" / "checks").glob("*.yaml"):
            assert rule.read_text() == (first / "policy" / "checks" / rule.name).read_text()
    everything = [path for _, _, builds in built for path in builds.values()]
    result = checkov(first, *(arg for path in everything for arg in ("-f", str(path))))
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Failed checks: 0" in output, output[-6000:]
    shipped = [path for _, _, builds in built for name, path in builds.items() if name != "local"]
    result = org_rules(first, shipped)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Failed checks: 0" in output, output[-6000:]
    assert "Passed checks: 0," not in output


def assert_only_to_spokes(rules: list[dict[str, Any]], port: int) -> None:
    """Egress the mesh adds beyond its control plane: only to the zones' spokes, on the mesh's port."""
    for rule in rules:
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        for peer in rule["to"]:
            assert peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].startswith(f"{NAMESPACE}-")
            assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": SLUG}}


def check_mesh(objects: dict[tuple[str, str], dict[str, Any]], mesh: str, callers: tuple[str, ...] = ()) -> None:
    """The mesh objects of a shipped overlay's build say what the component's README promises.
    ``callers``: the namespaces whose meshed pods call the first namespace's MCP port (the other
    federated peers), through the mesh's port."""
    namespace = objects[("Namespace", NAMESPACE)]["metadata"]
    labels, annotations = namespace.get("labels", {}), namespace.get("annotations", {})
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted", "a mesh must not loosen Pod Security"
    pod = objects[("Deployment", SLUG)]["spec"]["template"]
    app = pod["metadata"]["labels"]["app.kubernetes.io/name"]
    ports = {port["name"]: port["containerPort"] for port in pod["spec"]["containers"][0]["ports"]}
    assert set(ports) == {"mcp", "ops"}
    kinds = {kind for kind, _ in objects}
    other = {"istio": "linkerd", "linkerd": "istio", "none": None}[mesh]
    assert not (MESH_KINDS.get(other, set()) - MESH_KINDS[mesh]) & kinds, "only the chosen mesh's kinds"
    mesh_policy = objects.get(("NetworkPolicy", f"{SLUG}-mesh"), {}).get("spec")
    if mesh == "none":
        assert not MESH_KINDS["istio"] & kinds and not MESH_KINDS["linkerd"] & kinds
        assert "istio.io/dataplane-mode" not in labels and "linkerd.io/inject" not in annotations
        assert mesh_policy is None
        return
    assert mesh_policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": app}}
    caller_pods = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": caller}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": SLUG}},
        }
        for caller in callers
    ]
    from_callers = (
        [{"from": caller_pods, "ports": [{"port": 15008 if mesh == "istio" else 4143, "protocol": "TCP"}]}]
        if callers
        else []
    )
    if mesh == "istio":
        assert labels["istio.io/dataplane-mode"] == "ambient"
        assert "istio-injection" not in labels, "sidecars would need istio-init (NET_ADMIN) or istio-cni"
        peer = objects[("PeerAuthentication", SLUG)]
        assert peer["apiVersion"] == "security.istio.io/v1"
        assert peer["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": app}}
        assert peer["spec"]["mtls"]["mode"] == "STRICT"
        # Only the MCP port, which carries the server's own TLS from the edge outside the mesh.
        assert peer["spec"]["portLevelMtls"] == {str(ports["mcp"]): {"mode": "PERMISSIVE"}}
        authz = objects[("AuthorizationPolicy", SLUG)]["spec"]
        assert authz["selector"] == {"matchLabels": {"app.kubernetes.io/name": app}}
        assert authz["action"] == "ALLOW"
        assert authz["rules"] == [
            {
                "from": [{"source": {"namespaces": ["monitoring"]}}],
                "to": [{"operation": {"ports": [str(ports["ops"])]}}],
            },
            {"to": [{"operation": {"ports": [str(ports["mcp"])]}}]},
        ]
        assert mesh_policy["policyTypes"][0] == "Ingress"
        assert_only_to_spokes(mesh_policy.get("egress", []), 15008)
        assert mesh_policy["ingress"] == [
            *from_callers,
            {
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                "ports": [{"port": 15008, "protocol": "TCP"}],
            },
            {"from": [{"ipBlock": {"cidr": "169.254.7.127/32"}}], "ports": [{"port": "ops", "protocol": "TCP"}]},
        ]
    else:
        assert annotations["linkerd.io/inject"] == "enabled"
        assert annotations["config.linkerd.io/default-inbound-policy"] == "deny"
        servers = {o["spec"]["port"]: o for (kind, _), o in objects.items() if kind == "Server"}
        assert {port: s["spec"]["proxyProtocol"] for port, s in servers.items()} == {"mcp": "opaque", "ops": "HTTP/1"}
        for server in servers.values():
            assert server["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": app}}
            assert server["spec"]["accessPolicy"] == "deny"
        required = {}
        for (kind, _), policy in objects.items():
            if kind == "AuthorizationPolicy":
                target = policy["spec"]["targetRef"]
                assert target["kind"] == "Server"
                server = objects[("Server", target["name"])]["spec"]["port"]
                required[server] = [
                    (ref["kind"], objects[(ref["kind"], ref["name"])]["spec"])
                    for ref in policy["spec"]["requiredAuthenticationRefs"]
                ]
        assert required["ops"] == [
            ("MeshTLSAuthentication", {"identities": ["*.monitoring.serviceaccount.identity.linkerd.cluster.local"]})
        ]
        assert required["mcp"] == [("NetworkAuthentication", {"networks": [{"cidr": "0.0.0.0/0"}, {"cidr": "::/0"}]})]
        if callers:
            assert mesh_policy["policyTypes"] == ["Ingress", "Egress"]
            assert mesh_policy["ingress"] == from_callers
        else:
            assert mesh_policy["policyTypes"] == ["Egress"]
            assert "ingress" not in mesh_policy
        rule, *to_spokes = mesh_policy["egress"]
        assert_only_to_spokes(to_spokes, 4143)
        assert rule["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "linkerd"}}}]
        assert sorted(port["port"] for port in rule["ports"]) == [8080, 8086, 8090]
    # The probes stay HTTP on the ops port: Istio ambient and Linkerd let kubelet probes through.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert pod["spec"]["containers"][0][probe]["httpGet"]["port"] == "ops"


def check_spoke_mesh(objects: dict[tuple[str, str], dict[str, Any]], mesh: str, callers: list[str]) -> None:
    """A zone's spoke (or a federated peer other than the first) in the mesh: enrolled like the
    first, every port STRICT (Istio), and its MCP port open to its callers' mesh identities alone
    (the hub's, or the other peers'), through the mesh's port (15008 or 4143)."""
    (namespace,) = (o["metadata"] for (kind, _), o in objects.items() if kind == "Namespace")
    app = {"matchLabels": {"app.kubernetes.io/name": SLUG}}
    caller_pods = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": caller}}, "podSelector": app}
        for caller in callers
    ]
    mesh_policy = objects[("NetworkPolicy", f"{SLUG}-mesh")]["spec"]
    if mesh == "istio":
        assert namespace["labels"]["istio.io/dataplane-mode"] == "ambient"
        peer = objects[("PeerAuthentication", SLUG)]["spec"]
        assert peer == {"selector": app, "mtls": {"mode": "STRICT"}}, "no PERMISSIVE port: the hub is meshed"
        authz = objects[("AuthorizationPolicy", SLUG)]["spec"]
        assert authz["action"] == "ALLOW"
        assert authz["rules"] == [
            {"from": [{"source": {"namespaces": ["monitoring"]}}], "to": [{"operation": {"ports": ["9090"]}}]},
            {
                "from": [{"source": {"principals": [f"cluster.local/ns/{caller}/sa/{SLUG}" for caller in callers]}}],
                "to": [{"operation": {"ports": ["8443"]}}],
            },
        ]
        assert mesh_policy["ingress"][0] == {"from": caller_pods, "ports": [{"port": 15008, "protocol": "TCP"}]}
    else:
        assert namespace["annotations"]["config.linkerd.io/default-inbound-policy"] == "deny"
        policy = objects[("AuthorizationPolicy", f"{SLUG}-mcp")]["spec"]
        (ref,) = policy["requiredAuthenticationRefs"]
        assert objects[(ref["kind"], ref["name"])]["spec"] == {
            "identities": [f"{SLUG}.{caller}.serviceaccount.identity.linkerd.cluster.local" for caller in callers]
        }
        assert ("NetworkAuthentication", f"{SLUG}-edge") not in objects
        assert mesh_policy["ingress"] == [{"from": caller_pods, "ports": [{"port": 4143, "protocol": "TCP"}]}]


@pytest.mark.parametrize("index", range(len(MATRIX)), ids=[combo_id(a) for a in PAIRS])
def test_the_mesh_objects_are_as_documented(
    built: list[tuple[dict[str, Any], Path, dict[str, Path]]], index: int
) -> None:
    answers, project, builds = built[index]
    mesh = answers["service_mesh"]
    shipped = builds[answers["cloud"]].read_text()
    # Who calls whom through the mesh: the template's own graph (copier.yml's mesh_callers).
    graph = answers_with_computed(answers)["mesh_callers"]
    namespace_of = {name: f"{NAMESPACE}-{name}" if name else NAMESPACE for name in graph}
    callers_of = {namespace_of[name]: [namespace_of[caller] for caller in callers] for name, callers in graph.items()}
    meshed = mesh != "none"
    check_mesh(objects_of(shipped), mesh, tuple(callers_of[NAMESPACE]) if meshed else ())
    others = [namespace for namespace in callers_of if namespace != NAMESPACE]
    if others and meshed:
        port = 15008 if mesh == "istio" else 4143
        first_egress = objects_of(shipped)[("NetworkPolicy", f"{SLUG}-mesh")]["spec"]["egress"][-1]
        assert first_egress["ports"] == [{"port": port, "protocol": "TCP"}]
        called = [namespace for namespace, callers in callers_of.items() if NAMESPACE in callers]
        assert (
            [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in first_egress["to"]]
            == called
            == others
        )
        for namespace in others:
            check_spoke_mesh(objects_of(shipped, namespace), mesh, callers_of[namespace])
    # make kind-up installs no mesh: the local overlay has none of its objects or labels.
    check_mesh(objects_of(builds["local"].read_text()), "none")
    # test_render.py varies the mesh in turn only: the full tree of every pair renders cleanly here.
    assert [
        p
        for p in files(project)
        if UNRENDERED.search(ACTIONS_EXPRESSION.sub("", p.read_text())) or p.suffix == ".jinja"
    ] == []
    component = project / "deploy" / "k8s" / "components" / "mesh"
    assert component.is_dir() == (mesh != "none")
    if mesh != "none":
        assert sorted(p.name for p in component.iterdir()) == sorted(
            ["README.md", "kustomization.yaml", "networkpolicy.yaml", f"{mesh}.yaml"]
        )
        kustomization = yaml.safe_load(
            (project / "deploy" / "k8s" / "overlays" / answers["cloud"] / "kustomization.yaml").read_text()
        )
        # After the spokes or peers (their Namespaces get the mesh's labels too), if any.
        servers = {"hub-and-spoke": ["../../spokes"], "federated": ["../../peers"]}.get(answers["architecture"], [])
        assert kustomization["components"] == [*servers, "../../components/mesh"]
        assert (
            yaml.safe_load((project / "deploy" / "k8s" / "overlays" / "local" / "kustomization.yaml").read_text()).get(
                "components", []
            )
            == servers
        )
        deployment = (project / "docs" / "deployment.md").read_text()
        assert "## Service mesh" in deployment
        assert "not schema-validated offline" in deployment
        assert f"kind-up installs no {mesh}" in (project / "Makefile").read_text()


def test_planted_mesh_defects_are_caught(tmp_path: Path) -> None:
    istio = render(tmp_path / "istio", {**CUSTOM, "service_mesh": "istio", "cloud": "aws"}, skip_tasks=True)
    component = istio / "deploy" / "k8s" / "components" / "mesh" / "istio.yaml"
    component.write_text(component.read_text().replace("mode: STRICT", "mode: PERMISSIVE"))
    manifest = tmp_path / "istio.yaml"
    manifest.write_text(kustomize(istio / "deploy" / "k8s" / "overlays" / "aws"))
    with pytest.raises(AssertionError):
        check_mesh(objects_of(manifest.read_text()), "istio")
    # The organisation's rule ORG_K8S_7 fails the gate itself (make iac runs the same command).
    result = org_rules(istio, [manifest])
    assert result.returncode != 0
    assert f"FAILED for resource: PeerAuthentication.{NAMESPACE}.{SLUG}" in result.stdout

    # A spoke whose MCP port any mesh identity may call, not only the hub's.
    hub = render(
        tmp_path / "hub", {**CUSTOM, "service_mesh": "istio", "architecture": "hub-and-spoke"}, skip_tasks=True
    )
    component = hub / "deploy" / "k8s" / "components" / "mesh" / "istio.yaml"
    hub_only = f"- cluster.local/ns/{NAMESPACE}/sa/{SLUG}"
    assert hub_only in component.read_text()
    component.write_text(component.read_text().replace(hub_only, '- "*"'))
    spoke = objects_of(kustomize(hub / "deploy" / "k8s" / "overlays" / "on-prem"), f"{NAMESPACE}-public")
    with pytest.raises(AssertionError):
        check_spoke_mesh(spoke, "istio", [NAMESPACE])

    linkerd = render(tmp_path / "linkerd", {**CUSTOM, "service_mesh": "linkerd"}, skip_tasks=True)
    component = linkerd / "deploy" / "k8s" / "components" / "mesh" / "kustomization.yaml"
    component.write_text(
        component.read_text().replace("default-inbound-policy: deny", "default-inbound-policy: all-unauthenticated")
    )
    with pytest.raises(AssertionError):
        check_mesh(objects_of(kustomize(linkerd / "deploy" / "k8s" / "overlays" / "on-prem")), "linkerd")
