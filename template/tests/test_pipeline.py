"""The supply-chain controls that only CI runs (image scan, SBOM, signature, provenance, dependency
review), read from this project's CI file: each test fails when its control is taken out of the
pipeline, so `make evidence` can evidence them without running the pipeline."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
yaml: Any = importlib.import_module("yaml")

# Per CI provider: its file, the jobs that scan, publish and review, and what each must say.
# A job's text is every key and value of it, one "key value" a line (tests below: job_text).
PIPELINES: dict[str, dict[str, Any]] = {
    "github": {
        "file": ".github/workflows/ci.yml",
        "scan": "image",
        "publish": "publish",
        "scans": [r"uses aquasecurity/trivy-action@[0-9a-f]{40}", r"exit-code 1$", r"severity HIGH,CRITICAL$"],
        "sbom": [r"format cyclonedx$"],
        "signs": [r'cosign sign --yes "\$\{IMAGE\}@\$\{DIGEST\}"', r"id-token write$"],
        "attests": [r'cosign attest --yes --type cyclonedx --predicate sbom\.cdx\.json "\$\{IMAGE\}@\$\{DIGEST\}"'],
        "provenance": [
            r"uses actions/attest-build-provenance@[0-9a-f]{40}",
            r"subject-digest .*steps\.push\.outputs\.digest",
        ],
    },
    "gitlab": {
        "file": ".gitlab-ci.yml",
        "scan": "image-scan",
        "publish": "image-publish",
        "scans": [r"trivy image --input image\.tar --severity HIGH,CRITICAL --ignore-unfixed --exit-code 1$"],
        "sbom": [r"--format cyclonedx --output sbom\.cdx\.json$"],
        "signs": [r'cosign sign --yes "\$\{IMAGE\}@\$\{DIGEST\}"', r"aud sigstore$"],
        "attests": [r'cosign attest --yes --type cyclonedx --predicate sbom\.cdx\.json "\$\{IMAGE\}@\$\{DIGEST\}"'],
        "provenance": [
            r'cosign attest --yes --type slsaprovenance1 --predicate provenance\.json "\$\{IMAGE\}@\$\{DIGEST\}"'
        ],
    },
}


def answers() -> dict[str, Any]:
    recorded: dict[str, Any] = yaml.safe_load((ROOT / ".copier-answers.yml").read_text(encoding="utf-8"))
    return recorded


PROVIDER = str(answers()["ci_provider"])
TABLE = PIPELINES[PROVIDER]


def pipeline() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / TABLE["file"]).read_text(encoding="utf-8"))
    return loaded


def jobs() -> dict[str, Any]:
    loaded = pipeline()
    found: dict[str, Any] = loaded["jobs"] if PROVIDER == "github" else loaded
    return found


def lines(value: Any, key: str = "") -> list[str]:
    """Every scalar below ``value`` as "key value" (the innermost key), list items under their key."""
    if isinstance(value, dict):
        return [line for name, item in value.items() for line in lines(item, str(name))]
    if isinstance(value, list):
        return [line for item in value for line in lines(item, key)]
    return [f"{key} {value}".strip() for value in str(value).splitlines() or [""]]


def job_text(name: str) -> str:
    return "\n".join(lines(jobs()[name]))


def needed(name: str) -> set[str]:
    """Every job ``name`` waits for, directly or through another job."""
    needs = jobs()[name].get("needs") or []
    needs = [needs] if isinstance(needs, str) else needs
    direct = {need["job"] if isinstance(need, dict) else need for need in needs}
    return direct.union(*(needed(job) for job in direct)) if direct else set()


def assert_says(job: str, patterns: list[str]) -> None:
    text = job_text(job)
    missing = [pattern for pattern in patterns if not re.search(pattern, text, re.MULTILINE)]
    assert missing == [], f"job {job} of {TABLE['file']} does not say {missing}"


def test_the_image_is_scanned_and_a_finding_fails_before_anything_is_published() -> None:
    assert_says(TABLE["scan"], TABLE["scans"])
    assert TABLE["scan"] in needed(TABLE["publish"])
    assert not re.search(r"docker push|^push true$", job_text(TABLE["scan"]), re.MULTILINE)


def test_the_sbom_is_made_from_the_scanned_image_and_attested_to_the_published_digest() -> None:
    assert_says(TABLE["scan"], TABLE["sbom"])
    assert_says(TABLE["publish"], TABLE["attests"])


def test_the_published_digest_is_signed_keyless() -> None:
    assert_says(TABLE["publish"], TABLE["signs"])
    assert "--key" not in job_text(TABLE["publish"])


def test_the_published_digest_gets_build_provenance() -> None:
    assert_says(TABLE["publish"], TABLE["provenance"])


def test_pull_requests_get_a_dependency_review() -> None:
    """GitHub's dependency review (SUP-03, a GitHub-only control): GitLab's pipeline has no such job."""
    if PROVIDER != "github":
        assert "dependency-review" not in jobs()
        return
    job = jobs()["dependency-review"]
    assert job.get("if") == "github.event_name == 'pull_request'"
    triggers: dict[Any, Any] = pipeline()
    assert "pull_request" in triggers[True]  # PyYAML reads the workflow's `on:` key as True
    assert_says("dependency-review", [r"uses actions/dependency-review-action@[0-9a-f]{40}", r"fail-on-severity \w+"])
