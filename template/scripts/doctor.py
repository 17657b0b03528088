"""Check this machine for what the make targets need: one line per missing tool, and which
targets need it. Runs on the system Python alone (no uv yet), so it can say that uv is missing.

    python3 scripts/doctor.py        # exit 1 if a tool every target needs is missing
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# tool: (needed by, how to get it). The first group is needed by nearly every target.
REQUIRED = {
    "uv": ("install, test, lint, check, dev and every gate", "https://docs.astral.sh/uv/getting-started/installation/"),
    "git": ("secrets, template-update, the image's revision label", "your OS package manager"),
}
OPTIONAL = {
    # make iac runs the kubectl of the gates group in uv.lock; kind-up needs one for the cluster's version.
    "kubectl": ("kind-up", "https://kubernetes.io/docs/tasks/tools/"),
    "docker": ("image, kind-up", "a Docker engine, e.g. Docker Engine or Docker Desktop"),
    "kind": ("kind-up", "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"),
    "go": ("secrets-history (gitleaks; without Go, make evidence records it not run)", "https://go.dev/doc/install"),
}


def required_python() -> tuple[int, int]:
    """The Python version in .python-version (uv installs it; the system one runs this only)."""
    version = Path(__file__).resolve().parent.parent / ".python-version"
    major, minor = version.read_text(encoding="utf-8").strip().split(".")[:2]
    return int(major), int(minor)


def main() -> int:
    missing_required = [tool for tool in REQUIRED if shutil.which(tool) is None]
    for tool in missing_required:
        needed_by, source = REQUIRED[tool]
        print(f"missing: {tool}, needed by {needed_by}; install it from {source}")
    for tool, (needed_by, source) in OPTIONAL.items():
        if shutil.which(tool) is None:
            print(f"optional, missing: {tool}, needed by {needed_by}; install it from {source}")
    wanted = required_python()
    if shutil.which("uv") is not None:
        print(f"ok: uv installs Python {wanted[0]}.{wanted[1]} for this project (.python-version) on first use")
    if missing_required:
        return 1
    print("ok: every tool the everyday targets need is here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
