"""`make fleet` (tools/fleet.py) over real git repositories on disk: a template with releases
v1.0.0, v1.0.1 (Security) and v1.0.2, an organisation layer with v0.1.0 and v0.2.0, three
services at different versions (one behind the Security release, one with an update branch
open, one current) and one that cannot be read; and `fleet.py notify` against a loopback HTTP
server that records what it is sent. No network, no hosting API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from conftest import ROOT

pytestmark = pytest.mark.xdist_group("fleet")
FLEET = ROOT / "tools" / "fleet.py"
# The time `make fleet` may take for four repositories read from disk (measured: docs/fleet.md).
FLEET_BUDGET_SECONDS = 30


def git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    command += ["-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def changelog(*sections: tuple[str, str]) -> str:
    """A Keep a Changelog file, newest section first; each (version, kind) has one entry."""
    parts = ["# Changelog\n\n## [Unreleased]\n"]
    for version, kind in reversed(sections):
        parts.append(f"## [{version}] - 2027-01-0{version[-1]}\n\n### {kind}\n\n- A {kind.lower()} entry.\n")
        parts.append("### Upgrading\n\n- Nothing to do.\n")
    return "\n".join(parts)


def released_repo(path: Path, releases: list[tuple[str, str]]) -> Path:
    """A template repository with only CHANGELOG.md, one commit and tag per release."""
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    for index in range(len(releases)):
        (path / "CHANGELOG.md").write_text(changelog(*releases[: index + 1]))
        git(path, "add", "CHANGELOG.md")
        git(path, "commit", "--quiet", "-m", f"Release {releases[index][0]}")
        git(path, "tag", "--annotate", "-m", f"v{releases[index][0]}", f"v{releases[index][0]}")
    return path


def answers(source: Path, version: str, **values: str) -> str:
    """An answers file as copier writes it."""
    lines = ["# Changes here will be overwritten by Copier; NEVER EDIT MANUALLY", f"_commit: {version}"]
    lines += [f"_src_path: {source}", *(f"{key}: {value}" for key, value in sorted(values.items()))]
    return "\n".join(lines) + "\n"


def commit(repo: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", *files)
    git(repo, "commit", "--quiet", "-m", message)


def service_repo(path: Path, template: Path, layer: Path, version: str, layer_version: str, **values: str) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    project = {"project_name": path.name, "package_name": path.name.replace("-", "_")} | values
    files = {
        ".copier-answers.yml": answers(template, version, **project),
        ".copier-answers.org.yml": answers(layer, layer_version, registry="registry.example.org"),
        "README.md": f"# {path.name}\n",
    }
    commit(path, files, "Generated")
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fleet")
    template = released_repo(root / "template", [("1.0.0", "Added"), ("1.0.1", "Security"), ("1.0.2", "Changed")])
    layer = released_repo(root / "org-layer", [("0.1.0", "Added"), ("0.2.0", "Changed")])
    standard = {"architecture": "standalone", "auth_mode": "mtls", "cloud": "aws", "ci_provider": "github"}
    payments = service_repo(root / "services" / "payments", template, layer, "v1.0.0", "v0.1.0", **standard)
    search = service_repo(
        root / "services" / "search",
        template,
        layer,
        "v1.0.1",
        "v0.2.0",
        architecture="hub-and-spoke",
        auth_mode="oauth",
        cloud="gke",
        ci_provider="gitlab",
    )
    # An update branch open (the update job's commit to v1.0.2), and one merged already.
    git(search, "branch", "template-update-v1.0.1")
    git(search, "checkout", "--quiet", "-b", "template-update")
    commit(search, {".copier-answers.yml": answers(template, "v1.0.2", **standard)}, "Update template to v1.0.2")
    git(search, "checkout", "--quiet", "main")
    ledger = service_repo(
        root / "services" / "ledger", template, layer, "v1.0.2", "v0.2.0", **(standard | {"auth_mode": "mtls+oauth"})
    )
    services = root / "fleet.txt"
    services.write_text(
        "# The fleet of the payments platform\n"
        f"{payments}   Payments API   # behind the Security release\n"
        "services/search\n"  # relative to this file
        f"{ledger} ledger\n"
        "\n"
        f"{root / 'services' / 'gone'} archived\n"
    )
    return {"root": root, "services": services, "template": template, "layer": layer, "search": search}


def run_fleet(fleet: dict[str, Path], *args: str) -> subprocess.CompletedProcess[str]:
    cache = fleet["root"] / "cache"
    return subprocess.run(
        [sys.executable, str(FLEET), "--services", str(fleet["services"]), "--cache", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def make_fleet(fleet: dict[str, Path], *variables: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        ["make", "--no-print-directory", "fleet", f"SERVICES={fleet['services']}", *variables],
        cwd=ROOT,
        env={**os.environ, "FLEET_CACHE": str(fleet["root"] / "make-cache")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result, time.monotonic() - started


HEADER = ["SERVICE", "TEMPLATE", "NEWEST", "ARCHITECTURE", "AUTH", "CLOUD", "CI", "LAYERS", "BEHIND"]
HEADER += ["BEHIND SECURITY", "UPDATE BRANCH"]


def rows(table: str) -> dict[str, list[str]]:
    """The table's rows by service name, cut where the header's columns start."""
    header, *lines = table.splitlines()
    starts: list[int] = []
    for name in HEADER:
        starts.append(header.index(name, starts[-1] + 1 if starts else 0))
    found = {}
    for line in lines:
        if not line.strip():
            break
        cells = [line[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)]
        found[cells[0]] = cells
    return found


def test_make_fleet_prints_each_service_as_an_aligned_table(fleet: dict[str, Path]) -> None:
    result, seconds = make_fleet(fleet)
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"make fleet, 4 repositories (3 services + 1 unreadable), cold cache: {seconds:.2f} s")
    table = result.stdout
    assert table.splitlines()[0].split() == " ".join(HEADER).split()
    found = rows(table)
    assert found["Payments API"] == [
        "Payments API",
        "v1.0.0",
        "v1.0.2",
        "standalone",
        "mtls",
        "aws",
        "github",
        "org v0.1.0 (newest v0.2.0)",
        "template, org",
        "template v1.0.1",
        "-",
    ]
    assert found["search"] == [
        "search",
        "v1.0.1",
        "v1.0.2",
        "hub-and-spoke",
        "oauth",
        "gke",
        "gitlab",
        "org v0.2.0",
        "template",
        "no",
        "template-update (v1.0.2, 1 commit)",
    ]
    assert found["ledger"] == [
        "ledger",
        "v1.0.2",
        "v1.0.2",
        "standalone",
        "mtls+oauth",
        "aws",
        "github",
        "org v0.2.0",
        "no",
        "no",
        "-",
    ]
    # The unreadable repository: a row with git's reason, the others unaffected.
    archived = next(line for line in table.splitlines() if line.startswith("archived"))
    assert "error: git ls-remote failed: fatal: " in archived
    assert "4 services: 1 behind a security release, 2 behind, 1 with an update branch open, 1 unreadable" in table
    assert seconds < FLEET_BUDGET_SECONDS


def test_the_json_document_reports_each_source_of_each_service(fleet: dict[str, Path]) -> None:
    result = run_fleet(fleet, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema_version"] == 1
    assert set(document) == {"schema_version", "generated_at", "seconds", "summary", "services"}
    assert document["summary"] == {
        "services": 4,
        "unreadable": 1,
        "behind": 2,
        "behind_security": 1,
        "update_branches_open": 1,
    }
    services = {entry["name"]: entry for entry in document["services"]}
    assert list(services) == ["Payments API", "search", "ledger", "archived"], "the file's order"
    payments = services["Payments API"]
    assert payments["default_branch"] == "main"
    assert len(payments["commit"]) == 40
    assert payments["template"] == {
        "source": str(fleet["template"]),
        "version": "v1.0.0",
        "newest": "v1.0.2",
        "behind": True,
        "security_releases": ["v1.0.1"],
        "behind_security": True,
        "error": None,
        "answers": {"architecture": "standalone", "auth_mode": "mtls", "cloud": "aws", "ci_provider": "github"},
    }
    assert payments["layers"] == [
        {
            "name": "org",
            "answers_file": ".copier-answers.org.yml",
            "source": str(fleet["layer"]),
            "version": "v0.1.0",
            "newest": "v0.2.0",
            "behind": True,
            "security_releases": [],
            "behind_security": False,
            "error": None,
        }
    ]
    assert (payments["behind"], payments["behind_security"], payments["update_branches"]) == (True, True, [])

    search = services["search"]
    assert search["repository"] == str(fleet["search"])
    assert (search["template"]["behind"], search["template"]["behind_security"]) == (True, False)
    assert search["template"]["security_releases"] == []
    (branch,) = search["update_branches"]
    assert branch == {
        "name": "template-update",
        "commit": git(fleet["search"], "rev-parse", "template-update").strip(),
        "ahead": 1,
        "version": "v1.0.2",
    }, "template-update-v1.0.1 holds nothing main lacks: not open"

    ledger = services["ledger"]
    assert (ledger["behind"], ledger["behind_security"], ledger["update_branches"]) == (False, False, [])
    assert ledger["layers"][0]["behind"] is False

    archived = services["archived"]
    assert archived["error"].startswith("git ls-remote failed: fatal: ")
    assert (archived["template"], archived["layers"], archived["behind"]) == (None, [], None)


def fetch_times(fleet: dict[str, Path]) -> dict[str, int]:
    """When each cached copy of a service was last fetched into."""
    copies = (fleet["root"] / "cache" / "services").glob("*.git")
    return {copy.name.rsplit("-", 1)[0]: (copy / "FETCH_HEAD").stat().st_mtime_ns for copy in copies}


def test_a_second_run_reads_what_changed_since(fleet: dict[str, Path]) -> None:
    """The copies in the cache are fetched again only when a repository changed: the update
    branch merged (squashed) into main is no longer open, and main's answers are read anew."""
    first = run_fleet(fleet, "--json")
    fetched = fetch_times(fleet)
    search = fleet["search"]
    git(search, "merge", "--quiet", "--squash", "template-update")
    git(search, "commit", "--quiet", "-m", "Update template to v1.0.2 (squashed)")
    try:
        second = json.loads(run_fleet(fleet, "--json").stdout)
    finally:
        git(search, "reset", "--quiet", "--hard", "HEAD~1")
    refetched = fetch_times(fleet)
    assert [name for name in fetched if fetched[name] != refetched[name]] == ["search"], "the others are as they were"
    entry = next(entry for entry in second["services"] if entry["name"] == "search")
    assert entry["template"]["version"] == "v1.0.2"
    assert (entry["behind"], entry["update_branches"]) == (False, [])
    assert json.loads(first.stdout)["summary"]["update_branches_open"] == 1
    assert second["summary"]["update_branches_open"] == 0
    third = json.loads(run_fleet(fleet, "--json").stdout)
    assert third["summary"] == json.loads(first.stdout)["summary"], "the push undone, the first view again"


def test_exit_codes_usage_errors_only_unless_asked(fleet: dict[str, Path], tmp_path: Path) -> None:
    assert run_fleet(fleet).returncode == 0, "behind, and one unreadable: still a report"
    failing = run_fleet(fleet, "--fail-behind-security")
    assert failing.returncode == 1
    assert "Payments API" in failing.stdout
    missing = subprocess.run(
        [sys.executable, str(FLEET), "--services", str(tmp_path / "nope.txt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert "cannot read the services file" in missing.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody yet\n")
    result = subprocess.run(
        [sys.executable, str(FLEET), "--services", str(empty)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, "lists no service" in result.stderr) == (2, True)


def test_credentials_in_a_url_never_reach_the_report(tmp_path: Path) -> None:
    services = tmp_path / "fleet.txt"
    services.write_text("https://fleet-reader:s3cr3t-t0ken@127.0.0.1:9/acme/payments.git payments\n")
    result = subprocess.run(
        [sys.executable, str(FLEET), "--services", str(services), "--cache", str(tmp_path / "c"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["services"]
    assert entry["error"] and entry["repository"] == "https://***@127.0.0.1:9/acme/payments.git"
    assert "s3cr3t" not in result.stdout + result.stderr


# --- notify ------------------------------------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    """Records each request; answers as GitHub (204) and GitLab (201 with the pipeline) do, 404
    for the repository named ``missing``."""

    requests: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(  # type: ignore[attr-defined]
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode()}
        )
        if "missing" in self.path:
            self.send_json(404, {"message": "Not Found"})
        elif self.path.endswith("/dispatches"):
            self.send_response(204)
            self.end_headers()
        else:
            self.send_json(201, {"id": 7, "web_url": "https://gitlab.example.org/acme/search/-/pipelines/7"})

    def send_json(self, status: int, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def notify(services: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if not key.startswith("FLEET_")}
    return subprocess.run(
        [sys.executable, str(FLEET), "notify", "--services", str(services), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_notify_sends_a_repository_dispatch_and_a_pipeline_trigger(
    recorder: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, requests = recorder
    services = tmp_path / "fleet.txt"
    services.write_text(
        "https://github.com/acme/payments.git payments\n"
        "git@gitlab.example.org:acme/platform/search.git search ref=trunk\n"
        f"{tmp_path} local-checkout\n"
    )
    env = {
        "FLEET_GITHUB_TOKEN": "ghp-test-token",
        "FLEET_GITLAB_TRIGGER_TOKENS": "acme/platform/search glptt-search\nacme/other glptt-other\n",
    }
    result = notify(services, "--version", "v1.0.2", "--github-api", url, "--gitlab-api", f"{url}/api/v4", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    dispatch, trigger = sorted(requests, key=lambda request: request["path"])[::-1]
    assert dispatch["path"] == "/repos/acme/payments/dispatches"
    assert json.loads(dispatch["body"]) == {"event_type": "template-release", "client_payload": {"version": "v1.0.2"}}
    assert dispatch["headers"]["authorization"] == "Bearer ghp-test-token"
    assert dispatch["headers"]["accept"] == "application/vnd.github+json"
    assert trigger["path"] == "/api/v4/projects/acme%2Fplatform%2Fsearch/trigger/pipeline"
    assert parse_qs(trigger["body"]) == {
        "token": ["glptt-search"],
        "ref": ["trunk"],
        "variables[TEMPLATE_UPDATE]": ["true"],
        "variables[TEMPLATE_UPDATE_TO]": ["v1.0.2"],
    }
    assert "authorization" not in trigger["headers"]
    assert len(requests) == 2, "the local checkout is skipped"
    assert "local-checkout  skipped: not a GitHub or GitLab repository" in result.stdout
    assert "pipeline trigger on acme/platform/search@trunk (HTTP 201)" in result.stdout
    assert "ghp-test-token" not in result.stdout + result.stderr
    assert "glptt-search" not in result.stdout + result.stderr


def test_notify_reports_each_failure_and_sends_nothing_for_a_bad_version(
    recorder: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, requests = recorder
    services = tmp_path / "fleet.txt"
    services.write_text(
        "https://github.com/acme/missing\n"
        "https://github.com/acme/payments\n"
        "https://gitlab.example.org/acme/search\n"  # no trigger token for it
        "https://git.example.org/acme/ledger notify=github api=http://git.example.org/api/v3\n"
    )
    env = {"FLEET_GITHUB_TOKEN": "ghp-test-token"}
    for version in ("1.0.2", "v1.0", "v1.0.2\nv9.9.9", "v1.0.2; rm -rf /", "v\uff11.0.2"):
        refused = notify(services, "--version", version, "--github-api", url, env=env)
        assert refused.returncode == 2, version
        assert "a release tag like v1.2.0" in refused.stderr
    assert requests == []
    result = notify(services, "--version", "v1.0.2", "--github-api", url, "--gitlab-api", f"{url}/api/v4", env=env)
    assert result.returncode == 1
    lines = dict(
        line.split(None, 1) for line in result.stdout.splitlines() if line.startswith(("missing", "pay", "sea", "led"))
    )
    assert lines["missing"] == "FAILED: HTTP 404: Not Found"
    assert lines["payments"] == "repository_dispatch template-release to acme/payments (HTTP 204)"
    assert lines["search"] == "FAILED: FLEET_GITLAB_TRIGGER_TOKENS has no trigger token for acme/search"
    assert lines["ledger"] == "FAILED: refusing to send a token to http://git.example.org/api/v3: https only"
    assert [request["path"] for request in requests] in (
        ["/repos/acme/missing/dispatches", "/repos/acme/payments/dispatches"],
        ["/repos/acme/payments/dispatches", "/repos/acme/missing/dispatches"],
    )
    assert "1 of 4 services notified or skipped, 3 failed" in result.stdout
    no_token = notify(services, "--version", "v1.0.2", "--github-api", url)
    assert "FAILED: FLEET_GITHUB_TOKEN is not set" in no_token.stdout


def test_what_cannot_be_told_is_marked_unknown_never_guessed(fleet: dict[str, Path], tmp_path: Path) -> None:
    """A template source that cannot be read, a layer version that is no release tag: `?` in
    their columns, the reason after the table and in the JSON; the other rows as usual."""
    root = tmp_path / "repos"
    odd = service_repo(root / "odd", tmp_path / "nowhere", fleet["layer"], "v1.0.0", "v0.2.0", architecture="federated")
    commit(odd, {".copier-answers.org.yml": answers(fleet["layer"], "3f2a9c1")}, "Layer from a commit")
    services = tmp_path / "fleet.txt"
    services.write_text(f"{odd}\n{root / 'a-much-longer-name-than-odd'}\n")
    command = [sys.executable, str(FLEET), "--services", str(services), "--cache", str(tmp_path / "cache")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    found = rows(result.stdout)
    assert found["odd"][1:3] == ["v1.0.0", "?"]
    assert found["odd"][7:] == ["org 3f2a9c1 (error)", "?", "?", "-"]
    lines = result.stdout.splitlines()
    assert lines[0].index("TEMPLATE") == lines[2].index("error: "), "the name column fits the unreadable one too"
    assert "odd: template: git ls-remote failed: fatal: " in result.stdout
    assert "odd: org: the recorded version '3f2a9c1' is no release (vX.Y.Z)" in result.stdout
    document = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout)
    entry = document["services"][0]
    assert (entry["behind"], entry["behind_security"]) == (None, None)
    assert entry["template"]["newest"] is None and entry["template"]["error"].startswith("git ls-remote failed")
    assert entry["layers"][0]["newest"] == "v0.2.0" and entry["layers"][0]["behind"] is None
    assert document["summary"]["behind"] == 0 and document["summary"]["unreadable"] == 1
