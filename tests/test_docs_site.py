"""The template's docs and each generated project's docs build as Material for MkDocs sites with
--strict: no broken link or anchor, every page in the nav, and every Mermaid block a diagram."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CUSTOM, ROOT, UV, combo_id, covering, make, render

# The pages a project has depend on its architecture (hub-and-spoke.md, federated.md) and auth
# mode (oauth.md); cloud, mesh and CI provider change what the pages say, and take their
# choices in turn, so every offered choice builds once.
MATRIX = covering("architecture", "auth_mode")
# One mkdocs for every site: the template's dev group pins the versions the projects' docs group does.
MKDOCS = Path(sys.executable).parent / "mkdocs"
MERMAID_FENCE = re.compile(r"^```mermaid$", re.MULTILINE)
# What Material's native Mermaid support (pymdownx.superfences custom fence) writes for a block.
MERMAID_HTML = '<pre class="mermaid"><code>'


class _Loader(yaml.SafeLoader):
    """mkdocs.yml with its ``!!python/name:`` tags (the Mermaid fence's formatter) as strings
    (``name:module.function``); yaml.safe_load refuses them."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: suffix)


def site_config(root: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.load((root / "mkdocs.yml").read_text(), Loader=_Loader)
    return config


def nav_pages(nav: list[Any]) -> list[str]:
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [str(MKDOCS), "build", "--strict", "--site-dir", str(site)]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)


def assert_site(root: Path, site: Path) -> None:
    """A strict build passes; the config keeps what makes it strict; every page is in the nav
    once; each page's Mermaid blocks are diagrams in its HTML."""
    built = build(root, site)
    assert built.returncode == 0, built.stdout + built.stderr
    config = site_config(root)
    assert config["strict"] is True
    assert config["validation"] == {
        "omitted_files": "warn",
        "absolute_links": "warn",
        "unrecognized_links": "warn",
        "anchors": "warn",
        "not_found": "warn",
    }
    (fence,) = next(
        extension["pymdownx.superfences"]["custom_fences"]
        for extension in config["markdown_extensions"]
        if isinstance(extension, dict) and "pymdownx.superfences" in extension
    )
    assert fence == {"name": "mermaid", "class": "mermaid", "format": "name:pymdownx.superfences.fence_code_format"}
    docs = root / config["docs_dir"]
    pages = sorted(path.relative_to(docs).as_posix() for path in docs.rglob("*.md"))
    in_nav = nav_pages(config["nav"])
    assert sorted(in_nav) == pages
    assert in_nav[0] == "index.md"
    assert config["theme"]["font"] is False
    assert "fonts.googleapis.com" not in (site / "index.html").read_text(), "no font requests to Google"
    diagrams = 0
    for page in pages:
        fences = len(MERMAID_FENCE.findall((docs / page).read_text()))
        html = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert html.read_text().count(MERMAID_HTML) == fences, page
        diagrams += fences
    if root != ROOT:
        assert diagrams >= 2, "architecture.md and the threat model or the topology's page draw diagrams"


def test_the_templates_site_builds_strictly(tmp_path: Path) -> None:
    assert_site(ROOT, tmp_path / "site")


@pytest.mark.parametrize("answers", MATRIX, ids=combo_id)
def test_each_generated_projects_site_builds_strictly(answers: dict[str, Any], tmp_path: Path) -> None:
    project = render(tmp_path / "project", {**CUSTOM, **answers}, skip_tasks=True)
    assert site_config(project)["site_name"] == CUSTOM["project_name"]
    assert_site(project, tmp_path / "site")


def test_a_broken_link_or_anchor_or_a_page_out_of_the_nav_fails_the_build(tmp_path: Path) -> None:
    """--strict with the validation settings (the same in every project: assert_site) turns what
    MkDocs only logs into failures. Shown on a copy of the template's own docs: no render."""
    root = tmp_path / "docs-site"
    shutil.copytree(ROOT / "docs", root / "docs")
    shutil.copy(ROOT / "mkdocs.yml", root)
    page = root / "docs" / "questions.md"
    original = page.read_text()
    cases = {
        "[a](updating.md#no-such-heading)": "does not contain an anchor '#no-such-heading'",
        "[b](../README.md)": "'../README.md', but the target is not found among documentation files",
    }
    for link, message in cases.items():
        page.write_text(f"{original}\n{link}\n")
        failed = build(root, tmp_path / "site")
        assert failed.returncode != 0
        assert message in failed.stderr
    page.write_text(original)
    assert build(root, tmp_path / "site").returncode == 0
    (root / "docs" / "extra.md").write_text("# Extra\n")
    failed = build(root, tmp_path / "site")
    assert failed.returncode != 0
    assert "not included in the" in failed.stderr
    assert "  - extra.md" in failed.stderr


def test_the_projects_make_docs_uses_its_docs_group(tmp_path: Path) -> None:
    """`make docs` builds with the project's own locked docs group, which `make install` (uv
    sync: the dev group) leaves out and `make audit` (every group) scans."""
    project = render(tmp_path / "project", {**CUSTOM, **MATRIX[1]}, skip_tasks=True)
    # An organisation layer's page (examples/org-layer writes docs/org.md) builds without a nav
    # entry: the layer never edits the template's mkdocs.yml.
    (project / "docs" / "org.md").write_text("# The organisation's layer\n\nSee [the runbooks](runbooks.md).\n")
    for target in ("lock", "docs"):
        result = make(project, target)
        assert result.returncode == 0, f"make {target}: {result.stdout}{result.stderr}"
    assert (project / "site" / "index.html").is_file()
    assert (project / "site" / "org" / "index.html").is_file()
    assert "site/" in (project / ".gitignore").read_text().splitlines()

    def exported(*flags: str) -> str:
        command = [UV, "export", "--quiet", "--frozen", "--no-emit-project", "--format", "requirements-txt", *flags]
        return subprocess.run(command, cwd=project, capture_output=True, text=True, check=True).stdout

    assert "mkdocs==" not in exported()
    assert re.search(r"^mkdocs-material==9\.8\.1 ", exported("--all-groups"), re.MULTILINE)
    makefile = (project / "Makefile").read_text()
    assert "--dev-addr 127.0.0.1:$(DOCS_PORT)" in makefile
    assert "$(UV) export --quiet --frozen --all-groups" in makefile

    # make docs-serve, on a free loopback port: serves the site until stopped.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["make", "--no-print-directory", "docs-serve", f"UV={UV}", f"DOCS_PORT={port}"]
    server = subprocess.Popen(
        command, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        page = ""
        for _ in range(100):
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                time.sleep(0.2)
        assert f"<title>{CUSTOM['project_name']}</title>" in page
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
