"""The generated README's "Add a tool" steps, followed to the letter: the project's linters and
the tests of policy, start-up and what callers see still pass, and the new tool answers the
callers the new rule names. A template test that breaks on the edits the template asks for
would make those edits conflict on every update."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from conftest import project_venv, render, run_in

# Step 5: the team's own test of its tool, as README step 5 asks.
TEAM_TEST = '''\
"""The team's tool: readers may check a service's status."""

from __future__ import annotations

import pytest

from conftest import RunningServer

pytestmark = pytest.mark.anyio


async def test_a_reader_checks_a_service(server: RunningServer) -> None:
    async with server.connect("reader") as client:
        assert "service_status" in {tool.name for tool in (await client.list_tools()).tools}
        result = await client.call_tool("service_status", {"service": "api"})
    assert result.structured_content == {"service": "api", "status": "ok"}
'''


def add_a_tool_section(readme: str) -> str:
    return readme.split("## Add a tool", 1)[1].split("\n## ", 1)[0]


def code_block(section: str, language: str) -> str:
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block in the README's Add a tool section"
    return textwrap.dedent(match.group(1))


@pytest.mark.parametrize("auth_mode", ["mtls", "oauth"])
def test_following_the_readme_keeps_the_project_green(tmp_path: Path, auth_mode: str) -> None:
    project = render(tmp_path / "project", {"auth_mode": auth_mode})
    section = add_a_tool_section((project / "README.md").read_text())

    # Step 1: the function inside build_server(), before it returns.
    server = project / "src" / "acme_mcp_server" / "server.py"
    tool = textwrap.indent(code_block(section, "python"), "    ")
    text = server.read_text()
    assert text.count("\n    return server\n") == 1
    server.write_text(text.replace("\n    return server\n", f"\n{tool}\n    return server\n"))
    # Step 2: the rule, appended to the policy.
    policy = project / "config" / "policy.toml"
    policy.write_text(policy.read_text() + "\n" + code_block(section, "toml"))
    (project / "tests" / "test_service_status.py").write_text(TEAM_TEST)

    venv = project_venv(project)
    for command in (("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)):
        linted = run_in(project, venv, *command)
        assert linted.returncode == 0, linted.stdout + linted.stderr
    # The suites that check policy and what callers see (the whole suite runs in test_generated).
    suites = [f"tests/test_{name}.py" for name in ("policy", "transport", "startup", "service_status")]
    tested = run_in(project, venv, "pytest", "-q", "-rp", "-x", *suites, timeout=900)
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    assert "PASSED tests/test_service_status.py::test_a_reader_checks_a_service" in tested.stdout
