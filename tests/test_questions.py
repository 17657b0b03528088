"""copier.yml: defaults give a project with no prompt; a wrong answer is refused, says what is
allowed, and writes nothing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, choice_values, questions, render


def test_every_question_has_help_text() -> None:
    missing = [name for name, spec in questions().items() if not str(spec.get("help", "")).strip()]
    assert missing == []


def test_defaults_derive_names_from_the_project_name(tmp_path: Path) -> None:
    project = render(tmp_path / "p", {"project_name": "Payments  Risk Gateway!"})
    answers = (project / ".copier-answers.yml").read_text()
    assert "project_slug: payments-risk-gateway\n" in answers
    assert "package_name: payments_risk_gateway\n" in answers
    assert (project / "src" / "payments_risk_gateway" / "server.py").is_file()


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        ({"project_name": "   "}, "project_name must not be empty"),
        ({"project_name": 'Say "hi" Server'}, "project_name must be one line of at most 60 characters"),
        ({"project_name": "x" * 61}, "project_name must be one line of at most 60 characters"),
        ({"project_slug": "Bad_Slug"}, r"project_slug must match \^\[a-z\]\[a-z0-9-\]\*\$"),
        ({"project_slug": "trailing-"}, "no trailing or double hyphen"),
        ({"package_name": "1abc"}, r"package_name must be a lowercase Python identifier"),
        ({"package_name": "mcp"}, "would shadow a module the server imports"),
        ({"package_name": "dev_pki"}, "would shadow a module the server imports"),
        ({"description": 'say "hi"'}, "description must be one line without double quotes"),
        ({"author_email": "not-an-email"}, "author_email must be an address like team@example.com"),
        ({"domain": "Not A Domain"}, "domain must be a lowercase fully qualified DNS name"),
        ({"domain": "localhost"}, "domain must be a lowercase fully qualified DNS name"),
        ({"container_registry": "Registry.Example.com/Team"}, "container_registry must be a lowercase image"),
        ({"k8s_namespace": "-payments"}, "k8s_namespace must be a DNS label"),
        ({"rate_limit_per_minute": 0}, "rate_limit_per_minute must be a whole number from 1 to 1000000"),
        (
            {"architecture": "mesh-of-meshes"},
            r"'mesh-of-meshes' is not in \['standalone', 'hub-and-spoke', 'federated'\]",
        ),
        ({"cloud": "mars"}, r"'mars' is not in \['on-prem', 'aws', 'gcp', 'azure'\]"),
        (
            {"architecture": "hub-and-spoke", "spokes": ["Public"]},
            "spokes must be a YAML list of 1 to 8 different zone names",
        ),
        ({"architecture": "hub-and-spoke", "spokes": "public"}, "spokes must be a YAML list"),
        ({"architecture": "hub-and-spoke", "spokes": ["edge", "edge"]}, "spokes must be a YAML list"),
        ({"architecture": "hub-and-spoke", "k8s_namespace": "n" * 48}, "k8s_namespace must be at most 47 characters"),
        ({"architecture": "federated", "federation_peers": "alpha"}, "federation_peers must be a YAML list of 2 to 8"),
        (
            {"architecture": "federated", "federation_peers": ["alpha"]},
            "federation_peers must be a YAML list of 2 to 8",
        ),
        ({"architecture": "federated", "federation_peers": ["alpha", "alpha"]}, "federation_peers must be a YAML list"),
        (
            {"architecture": "federated", "federation_peers": ["alpha", "Beta_1"]},
            "federation_peers must be a YAML list",
        ),
        (
            {"architecture": "federated", "federation_peers": [f"p{i}" for i in range(9)]},
            "federation_peers must be a YAML list",
        ),
        (
            {"architecture": "federated", "k8s_namespace": "n" * 48},
            "k8s_namespace must be at most 47 characters with federated",
        ),
        ({"auth_mode": "basic"}, r"'basic' is not in \['mtls', 'oauth', 'mtls\+oauth'\]"),
        (
            {"auth_mode": "oauth", "oauth_issuer_url": "http://idp.example.com"},
            "oauth_issuer_url must be an https:// URL",
        ),
        ({"auth_mode": "oauth", "oauth_resource_url": "https://mcp.example.com/mcp?x=1"}, "oauth_resource_url must be"),
        ({"auth_mode": "oauth", "oauth_required_scopes": "mcp:access"}, "oauth_required_scopes must be a list"),
        ({"auth_mode": "oauth", "oauth_required_scopes": ["a b"]}, '"a b" is not a scope name'),
        ({"package_name": "dev_issuer"}, "would shadow a module the server imports"),
        ({"python_version": "3.10"}, r"'3.10' is not in \['3.12', '3.13'\]"),
        ({"compliance": ["soc3"]}, "'soc3' is not in"),
    ],
    ids=lambda value: next(iter(reversed(value))) if isinstance(value, dict) else "",
)
def test_wrong_answer_is_refused_and_nothing_is_written(tmp_path: Path, answers: dict[str, Any], message: str) -> None:
    destination = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        render(destination, answers)
    assert not destination.exists() or not any(destination.iterdir())


def asked_questions() -> dict[str, dict[str, Any]]:
    """The questions copier.yml can ask (computed answers have ``when: false``)."""
    return {name: spec for name, spec in questions().items() if spec.get("when") is not False}


def doc_sections() -> dict[str, str]:
    text = (ROOT / "docs" / "questions.md").read_text()
    parts = re.split(r"^## \d+\. `([a-z0-9_]+)`\n", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def shown(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def test_the_questions_doc_names_every_question_in_order_with_its_choices_and_default() -> None:
    text = (ROOT / "docs" / "questions.md").read_text()
    summary = re.findall(r"^\| (\d+) \| `([a-z0-9_]+)` \| [a-z]+ \| (.*) \|$", text, flags=re.MULTILINE)
    asked = asked_questions()
    assert [name for _, name, _ in summary] == list(asked)
    assert list(doc_sections()) == list(asked)
    for (_, name, default_cell), section in zip(summary, doc_sections().values(), strict=True):
        spec = asked[name]
        default = spec.get("default")
        if "{{" not in str(default):
            assert f"`{shown(default)}`" in default_cell, name
            assert f"Default: `{shown(default)}`" in section, name
        for choice in choice_values(spec) if "choices" in spec else []:
            assert f"`{choice}`" in section, (name, choice)


def test_the_questions_doc_lists_every_refused_package_name() -> None:
    refused = re.search(r"package_name in \[(.*?)\] %\}", (ROOT / "copier.yml").read_text())
    assert refused
    section = doc_sections()["package_name"]
    for name in refused[1].split(","):
        assert f"`{name.strip()[1:-1]}`" in section, name
