"""Each answer's effect lives in one place: facts derived from the answers are computed answers
in copier.yml, and each feature's files are left out by one `_exclude` entry there."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, questions
from copier import run_copy
from pathspec import PathSpec
from pymarkdown.api import PyMarkdownApi

TEMPLATE = ROOT / "template"
CONFIG = yaml.safe_load((ROOT / "copier.yml").read_text())
COMPUTED = {name: spec["default"] for name, spec in questions().items() if spec.get("when") is False}
# The one path that keeps a condition: the managed clouds' overlay folder would otherwise render
# to overlays/on-prem, where the on-prem overlay is.
CONDITIONAL_PATHS = {"deploy/k8s/overlays/{% if cloud != 'on-prem' %}{{ cloud }}{% endif %}"}
# Projects that, together, have every feature on.
FEATURES_ON = [
    {"architecture": "hub-and-spoke", "auth_mode": "mtls+oauth", "service_mesh": "istio", "cloud": "gcp"},
    {
        "architecture": "federated",
        "auth_mode": "oauth",
        "service_mesh": "linkerd",
        "ci_provider": "gitlab",
        "cloud": "azure",
    },
    {"architecture": "standalone", "cloud": "aws"},
]
CLOUDS = ["on-prem", "aws", "gcp", "azure"]


def template_files() -> list[Path]:
    return [path for path in TEMPLATE.rglob("*") if path.is_file()]


def derivations() -> dict[str, str]:
    """Each computed answer's expression as files would re-derive it, e.g. ``'oauth' in auth_mode``."""
    found = {}
    for name, default in COMPUTED.items():
        expression = re.fullmatch(r"\{\{ (.*) \}\}_?", str(default))
        if expression and " if " not in expression[1]:
            found[name] = expression[1].removesuffix(" | to_json")
    return found


def test_the_computed_answers_cover_the_derived_facts() -> None:
    assert {"env_prefix", "uses_mtls", "uses_oauth", "is_hub", "is_federated", "is_relay", "upstreams"} <= set(COMPUTED)
    assert derivations()["uses_oauth"] == "'oauth' in auth_mode"


@pytest.mark.parametrize("name", sorted(derivations()))
def test_no_template_file_derives_a_computed_answer_again(name: str) -> None:
    expression = derivations()[name]
    again = [str(path.relative_to(ROOT)) for path in template_files() if expression in path.read_text()]
    assert again == [], f"use {name} instead of {expression}"


def test_only_one_template_path_carries_a_condition() -> None:
    conditional = {str(path.relative_to(TEMPLATE)) for path in TEMPLATE.rglob("*{% if*")}
    assert {path for path in conditional if "{% if" not in Path(path).parent.as_posix()} == CONDITIONAL_PATHS


def exclude_patterns() -> list[str]:
    """Every path pattern of copier.yml's ``_exclude``, with its condition taken off."""
    lines = []
    for entry in CONFIG["_exclude"]:
        bare = re.sub(r"\{%.*?%\}", "", entry)
        lines += [line for line in bare.splitlines() if line.strip()]
    return lines


def test_every_excluded_path_is_a_file_the_template_writes(tmp_path: Path) -> None:
    """A stale pattern (a file renamed, a feature folder moved) would exclude nothing and leave
    the new file in projects that should not have it: render with no feature left out, and
    every pattern must match something."""
    template_only = ["*.pyc", "__pycache__", ".DS_Store", "_includes"]
    everything = tmp_path / "template"
    shutil.copytree(TEMPLATE, everything / "template")
    (everything / "copier.yml").write_text(
        yaml.safe_dump({**CONFIG, "_exclude": template_only, "_tasks": []}, sort_keys=False)
    )
    rendered: set[str] = set()
    for index, answers in enumerate(FEATURES_ON):
        project = tmp_path / str(index)
        run_copy(str(everything), project, data=answers, defaults=True, quiet=True)
        rendered |= {path.relative_to(project).as_posix() for path in project.rglob("*")}
    # A folder named after the cloud is written under every cloud's name (on-prem's too, where
    # its contents could not render).
    for path in TEMPLATE.rglob("*{{ cloud }}*"):
        name = path.relative_to(TEMPLATE).as_posix().removesuffix(".jinja")
        if "{%" not in name:
            rendered |= {name.replace("{{ cloud }}", cloud) for cloud in CLOUDS}
    for pattern in exclude_patterns():
        if pattern not in template_only:
            spec = PathSpec.from_lines("gitignore", [pattern])
            assert any(spec.match_file(path) for path in rendered), f"_exclude pattern {pattern} matches nothing"


@pytest.mark.parametrize("family", sorted(p.name for p in (TEMPLATE / "_includes" / "docs").iterdir() if p.is_dir()))
def test_each_answers_docs_vocabulary_defines_the_same_passages(family: str) -> None:
    """The docs import one vocabulary file per answer value (auth/oauth.jinja, ...). Copier's
    Jinja renders an undefined name as nothing, so a passage missing from one value's file
    would silently vanish from that value's docs."""
    names = {
        path.name: re.findall(r"^\{% set (\w+)", path.read_text(), flags=re.MULTILINE)
        for path in sorted((TEMPLATE / "_includes" / "docs" / family).glob("*.jinja"))
    }
    first, *others = names.items()
    for name, defined in others:
        assert sorted(set(defined)) == sorted(set(first[1])), f"{family}/{name} and {family}/{first[0]} differ"


def test_what_each_answer_leaves_out_names_recorded_answers_only() -> None:
    """`copier update` applies the new `_exclude` to its render of the project's old template
    version, where computed answers added since are undefined: a condition on one would leave
    that feature's files out of the old render, and the update would then see the project's
    copies as the team's own additions (conflicts, stale files)."""
    for entry in CONFIG["_exclude"]:
        used = set(re.findall(r"\b[a-z_]+\b", " ".join(re.findall(r"\{%(.*?)%\}", entry))))
        assert not used & set(COMPUTED), f"{entry!r} uses {sorted(used & set(COMPUTED))}"


def test_the_templates_own_markdown_passes_the_linter() -> None:
    # Keep a Changelog repeats "### Security" under every release: headings may repeat, not among siblings.
    linter = (
        PyMarkdownApi().disable_rule_by_identifier("md013").set_boolean_property("plugins.md024.siblings_only", True)
    )
    failures = [
        f"{f.scan_file}:{f.line_number} {f.rule_id} {f.rule_description}"
        for path in [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
        for f in linter.scan_path(str(path)).scan_failures
    ]
    assert failures == []
