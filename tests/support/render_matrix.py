"""Render a matrix of answer combinations from a git ref and compare two such renders.

A refactor of the template must not change what it writes. This renders every architecture x
auth mode, every cloud, every mesh and both CI providers (12 projects), builds every kustomize
overlay of each, and compares two renders: file by file (byte for byte) and overlay by overlay
(the objects, parsed and sorted). Paths a refactor changes on purpose are named with --allow;
their kustomize output is still compared.

    python tests/support/render_matrix.py render REF OUT     # e.g. REF=HEAD (working tree included)
    python tests/support/render_matrix.py compare OLD NEW [--allow GLOB ...]
    make equivalence BASE=<ref>                              # both, against the working tree
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from pinned_tools import tool

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZED = "kustomize.json"

ARCHITECTURES = ["standalone", "hub-and-spoke", "federated"]
AUTH_MODES = ["mtls", "oauth", "mtls+oauth"]
CLOUDS = ["on-prem", "aws", "gcp", "azure"]
MESHES = ["none", "istio", "linkerd"]
CI_PROVIDERS = ["github", "gitlab"]
# Unlike the defaults, so that nothing compared depends on a default value.
CUSTOM = {
    "project_name": "Payments Risk Gateway",
    "domain": "mcp.payments.internal.example.org",
    "k8s_namespace": "payments-risk",
    "rate_limit_per_minute": 7,
    "compliance": ["soc2", "iso27001", "nist-800-53", "pci-dss", "hipaa", "gdpr", "fedramp", "cis"],
}


def matrix() -> dict[str, dict[str, Any]]:
    """Architecture x cloud (12); each architecture meets every auth mode, and meshes, CI
    providers, Python versions and custom answers take their turns."""
    combos: dict[str, dict[str, Any]] = {}
    for a, architecture in enumerate(ARCHITECTURES):
        for c, cloud in enumerate(CLOUDS):
            index = a * len(CLOUDS) + c
            answers: dict[str, Any] = {
                "architecture": architecture,
                "cloud": cloud,
                "auth_mode": AUTH_MODES[(a + c) % len(AUTH_MODES)],
                "service_mesh": MESHES[index % len(MESHES)],
                "ci_provider": CI_PROVIDERS[(index // 2) % len(CI_PROVIDERS)],
                "python_version": ["3.12", "3.13"][index % 2],
            }
            if index % 2:
                answers |= CUSTOM
            if architecture == "hub-and-spoke" and c == 1:
                answers["spokes"] = ["edge", "core"]
            if architecture == "federated" and c == 2:
                answers["federation_peers"] = ["north", "south"]
            name = "-".join(str(answers[key]) for key in ("architecture", "cloud", "auth_mode", "service_mesh"))
            combos[name.replace("+", "_")] = answers
    return combos


def _render_one(ref: str, dest: str, answers: dict[str, Any]) -> str:
    from copier import run_copy

    run_copy(str(ROOT), dest, data=answers, defaults=True, vcs_ref=ref, skip_tasks=True, quiet=True)
    (Path(dest) / KUSTOMIZED).write_text(json.dumps(kustomize_all(Path(dest)), indent=1, sort_keys=True))
    return dest


def render(ref: str, out: Path, workers: int = 2) -> None:
    """Render every combination from ``ref`` into ``out/<name>`` (``ref`` HEAD includes the
    working tree's changes, as Copier does)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with ProcessPoolExecutor(workers) as pool:
        jobs = [pool.submit(_render_one, ref, str(out / name), answers) for name, answers in matrix().items()]
        for job in jobs:
            job.result()


def overlays(project: Path) -> list[Path]:
    """Every folder under deploy/k8s that `kubectl kustomize` builds (Components are not built
    alone: they are compared through the overlays that use them)."""
    found = []
    for path in sorted((project / "deploy" / "k8s").rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == "Kustomization":
            found.append(path.parent)
    return found


def kustomize_all(project: Path) -> dict[str, list[Any]]:
    """The objects each overlay (deploy/k8s/overlays/*) builds with the kubectl of the template's
    pinned tools (pinned_tools.py), sorted by kind, namespace and name."""
    built = {}
    for folder in overlays(project):
        if folder.parent.name != "overlays":
            continue
        text = subprocess.run(
            [tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True, check=True
        ).stdout
        objects = [doc for doc in yaml.safe_load_all(text) if doc]
        objects.sort(
            key=lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"], o["apiVersion"])
        )
        built[folder.name] = objects
    return built


def tree(project: Path) -> dict[str, bytes]:
    files = {
        str(path.relative_to(project)): path.read_bytes() if path.is_file() else b"(folder)"
        for path in project.rglob("*")
        if path.name != KUSTOMIZED
    }
    # The answers file records the template commit rendered from, which differs by design.
    answers = ".copier-answers.yml"
    files[answers] = b"\n".join(line for line in files[answers].splitlines() if not line.startswith(b"_commit:"))
    return files


def compare(old: Path, new: Path, allow: list[str]) -> list[str]:
    """What differs between two renders: files outside ``allow`` byte for byte, and the objects
    of every overlay whatever ``allow`` says. An empty list means equivalent."""
    problems = []
    names = sorted({p.name for p in old.iterdir()} | {p.name for p in new.iterdir()})
    for name in names:
        if not (old / name).is_dir() or not (new / name).is_dir():
            problems.append(f"{name}: rendered on one side only")
            continue
        before, after = tree(old / name), tree(new / name)
        for path in sorted(before.keys() | after.keys()):
            if any(fnmatch.fnmatch(path, pattern) for pattern in allow):
                continue
            if path not in after:
                problems.append(f"{name}: {path} is gone")
            elif path not in before:
                problems.append(f"{name}: {path} is new")
            elif before[path] != after[path]:
                problems.append(f"{name}: {path} differs")
        objects_before = json.loads((old / name / KUSTOMIZED).read_text())
        objects_after = json.loads((new / name / KUSTOMIZED).read_text())
        for overlay in sorted(objects_before.keys() | objects_after.keys()):
            if objects_before.get(overlay) != objects_after.get(overlay):
                problems.append(f"{name}: kubectl kustomize deploy/k8s/overlays/{overlay} builds other objects")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    render_cmd = commands.add_parser("render", help="render the matrix from a git ref")
    render_cmd.add_argument("ref")
    render_cmd.add_argument("out", type=Path)
    compare_cmd = commands.add_parser("compare", help="compare two renders")
    compare_cmd.add_argument("old", type=Path)
    compare_cmd.add_argument("new", type=Path)
    compare_cmd.add_argument("--allow", action="append", default=[], help="a path glob expected to change")
    args = parser.parse_args()
    if args.command == "render":
        render(args.ref, args.out)
        print(f"rendered {len(matrix())} projects from {args.ref} into {args.out}")
        return 0
    problems = compare(args.old, args.new, args.allow)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} differences in {len(matrix())} projects" if problems else "equivalent")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
