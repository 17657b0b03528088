"""tools/release.py refuses a release the CHANGELOG does not describe, and tags one it does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import release

ENTRY = """# Changelog

## [Unreleased]

## [1.1.0] - 2027-01-10

### Security

- Refuse client certificates without the clientAuth usage.

### Upgrading

- Reissue client certificates that lack clientAuth.

## [1.0.0] - 2027-01-03

### Added

- First release.

### Upgrading

- Nothing to do.
"""


def git(repo: Path, *args: str) -> str:
    command = [
        "git",
        "-C",
        str(repo),
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "-c",
        "tag.gpgSign=false",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "--quiet", "--initial-branch=main")
    (tmp_path / "CHANGELOG.md").write_text(ENTRY)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "--quiet", "-m", "changes")
    return tmp_path


def test_a_described_version_is_tagged_with_its_notes(repo: Path) -> None:
    release.tag("1.0.0", repo)
    release.tag("1.1.0", repo)
    assert git(repo, "cat-file", "-t", "v1.1.0").strip() == "tag"
    message = git(repo, "tag", "--list", "--format=%(contents)", "v1.1.0")
    assert "Refuse client certificates without the clientAuth usage." in message
    assert "First release." not in message
    # git's default message cleanup would drop these as comments.
    assert "### Security\n" in message
    assert "### Upgrading\n" in message


def test_the_release_is_the_commit_that_dated_the_section_and_nothing_else_is_tagged(tmp_path: Path) -> None:
    git(tmp_path, "init", "--quiet", "--initial-branch=main")
    unreleased = "# Changelog\n\n## [Unreleased]\n\n### Fixed\n\n- x\n\n### Upgrading\n\n- Nothing to do.\n"
    dated = unreleased.replace("[Unreleased]", "[Unreleased]\n\n## [1.0.0] - 2026-12-07")
    steps = [
        ("work", unreleased),
        ("Release 1.0.0", dated),
        ("more work", dated.replace("## [Unreleased]", "## [Unreleased]\n\n### Added\n\n- y")),
    ]
    commits = []
    for message, text in steps:
        (tmp_path / "CHANGELOG.md").write_text(text)
        git(tmp_path, "add", "-A")
        git(tmp_path, "commit", "--quiet", "-m", message)
        commits.append(git(tmp_path, "rev-parse", "HEAD").strip())
    assert release.release_commit("1.0.0", tmp_path) == commits[1]

    # After the release commit, 1.0.0 is still due, at the release commit (CI tests and tags that
    # one, never the later commit); make release refuses to tag HEAD.
    assert release.pending(tmp_path) == ("1.0.0", commits[1])
    with pytest.raises(release.ReleaseError, match=re.escape("HEAD is not the commit that dated 1.0.0's section")):
        release.tag("1.0.0", tmp_path)

    # On the release commit itself make release tags it, and then nothing is due.
    git(tmp_path, "checkout", "--quiet", commits[1])
    release.tag("1.0.0", tmp_path)
    assert git(tmp_path, "rev-list", "-n", "1", "v1.0.0").strip() == commits[1]
    git(tmp_path, "checkout", "--quiet", "main")
    assert release.pending(tmp_path) is None

    # Before any release nothing is due.
    git(tmp_path, "checkout", "--quiet", commits[0])
    assert release.pending(tmp_path) is None


def test_pending_prints_a_step_output_line() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "release.py"), "pending"], capture_output=True, text=True, check=True
    )
    assert re.fullmatch(r"version=(\d+\.\d+\.\d+)?\ncommit=([0-9a-f]{40})?\n", result.stdout)


@pytest.mark.parametrize(
    ("version", "changelog", "reason"),
    [
        ("1.2.0", ENTRY, "no '## [1.2.0] - YYYY-MM-DD' section"),
        ("v1.0.0", ENTRY, "not a version like 1.2.0"),
        ("1.0.0", ENTRY.replace("[1.0.0] - 2027-01-03", "[1.0.0]"), "has no date"),
        ("1.0.0", ENTRY.replace("### Added", "Added"), "lists no change"),
        ("1.1.0", ENTRY.replace("### Upgrading\n\n- Reissue", "- Reissue"), "no '### Upgrading' part"),
        ("1.0.0", ENTRY.replace("- First release.", "- First release.\n\n### Misc\n\n- x"), "unknown parts ['Misc']"),
    ],
)
def test_an_undescribed_version_is_refused(repo: Path, version: str, changelog: str, reason: str) -> None:
    (repo / "CHANGELOG.md").write_text(changelog)
    git(repo, "commit", "--quiet", "--allow-empty", "-am", "edit")
    with pytest.raises(release.ReleaseError, match=re.escape(reason)):
        release.tag(version, repo)
    assert git(repo, "tag", "--list") == ""


def test_a_version_already_released_older_or_with_uncommitted_changes_is_refused(repo: Path) -> None:
    release.tag("1.1.0", repo)
    with pytest.raises(release.ReleaseError, match="already released"):
        release.tag("1.1.0", repo)
    with pytest.raises(release.ReleaseError, match=re.escape("older than the newest release 1.1.0")):
        release.tag("1.0.0", repo)
    (repo / "CHANGELOG.md").write_text(
        ENTRY.replace(
            "## [Unreleased]", "## [Unreleased]\n\n## [1.2.0] - 2027-02-01\n\n### Fixed\n\n- x\n\n### Upgrading\n\n- y"
        )
    )
    with pytest.raises(release.ReleaseError, match="uncommitted changes"):
        release.tag("1.2.0", repo)


def test_the_changelog_has_an_unreleased_part_and_every_release_in_it_is_complete() -> None:
    found = release.sections((ROOT / "CHANGELOG.md").read_text())
    assert "Unreleased" in found
    for version in found.keys() - {"Unreleased"}:
        release.notes(version)
