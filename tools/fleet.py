"""The fleet: every service made from this template, read with git alone, and the services
told when a release ships.

    python tools/fleet.py [--services fleet.txt] [--json] [--jobs 8] [--cache .cache/fleet]
                          [--fail-behind-security]
    python tools/fleet.py notify --version vX.Y.Z [--services fleet.txt] [--github-api URL]
                                 [--gitlab-api URL] [--dry-run]

``make fleet SERVICES=fleet.txt [FORMAT=json]`` runs the first form (docs/fleet.md).

The services file: one repository a line, a git URL (``https://``, ``ssh://``, ``git@host:path``,
``gh:owner/name``, ``gl:group/name``) or a local path (relative to the file's folder), then
optionally a display name; ``#`` starts a comment. For ``notify`` a line may end with options:
``notify=github|gitlab|none`` (what the host is, when its name does not say), ``ref=BRANCH``
(the branch a GitLab pipeline runs on, default ``main``), ``api=URL`` (that host's API).

The report reads each service with git only: its branches are fetched into a bare copy under the
cache folder (``git ls-remote`` first: an unchanged repository is not fetched again), then
``.copier-answers.yml`` (this template: ``_src_path``, ``_commit``, the answers) and each
``.copier-answers.<layer>.yml`` (an organisation layer: a second Copier template) on the default
branch. For each source (``_src_path``) it lists the release tags (``git ls-remote --tags``),
takes the newest ``vX.Y.Z`` and reads its CHANGELOG.md at that tag (a depth-1 fetch, cached): the
releases after the service's version whose section has a ``### Security`` part are the security
releases the service lacks. An update branch is open when a branch ``template-update*`` or
``template-answers*`` holds changes the default branch lacks. Services and sources are read in
parallel threads (``--jobs``). A repository that cannot be read is a row with its error; the exit
code is 2 for a usage error only (with ``--fail-behind-security``: 1 when a service lacks a
security release).

``notify`` asks each service to update to ``--version``: a GitHub ``repository_dispatch`` of
type ``template-release`` with ``client_payload.version`` (token: ``FLEET_GITHUB_TOKEN``), or a
GitLab pipeline trigger on ``ref`` with ``TEMPLATE_UPDATE=true`` and ``TEMPLATE_UPDATE_TO``
(tokens: ``FLEET_GITLAB_TRIGGER_TOKENS``, a line ``group/project TOKEN`` per project). Local paths
are skipped. Exit 1 when a notification failed, 2 for a usage error. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_VERSION = 1
ANSWERS = ".copier-answers.yml"
LAYER_ANSWERS = re.compile(r"^\.copier-answers\.(?P<name>[A-Za-z0-9][A-Za-z0-9_-]*)\.ya?ml$")
# The answers of this template the report shows.
KEY_ANSWERS = ("architecture", "auth_mode", "cloud", "ci_provider")
# Branches of the update jobs: template-update, template-update-vX.Y.Z, template-answers...
UPDATE_BRANCHES = ("template-update", "template-answers")
RELEASE_TAG = re.compile(r"v([0-9]+)\.([0-9]+)\.([0-9]+)")
# A version as copier records it: a tag, or ``git describe`` of a commit after one.
RECORDED_VERSION = re.compile(r"v?([0-9]+)\.([0-9]+)\.([0-9]+)(?:-(?P<after>[0-9]+)-g[0-9a-f]+)?")
# A CHANGELOG release heading: ``## [1.2.0] - 2026-12-04`` (Keep a Changelog), ``## v1.2.0``.
RELEASE_HEADING = re.compile(r"^## \[?v?([0-9]+)\.([0-9]+)\.([0-9]+)\]?", re.MULTILINE)
SHORTCUTS = {"gh:": "https://github.com/", "gl:": "https://gitlab.com/"}
OPTIONS = ("notify", "ref", "api")
GIT_TIMEOUT = float(os.environ.get("FLEET_GIT_TIMEOUT", "300"))
HTTP_TIMEOUT = 30.0
GITHUB_API = "https://api.github.com"
DISPATCH_EVENT = "template-release"

Version = tuple[int, int, int]
T = TypeVar("T")
R = TypeVar("R")


class FleetError(Exception):
    """A repository or source that could not be read; the message says why."""


class UsageError(Exception):
    """The command was called wrongly (exit 2)."""


# --- the services file ---------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    location: str  # a git URL, or an absolute local path
    name: str
    options: dict[str, str] = field(default_factory=dict)


def is_url(location: str) -> bool:
    return "://" in location or bool(re.match(r"^[\w.-]+@[\w.-]+:", location))


def expand(location: str) -> str:
    for prefix, url in SHORTCUTS.items():
        if location.startswith(prefix):
            return url + location.removeprefix(prefix)
    return location


def default_name(location: str) -> str:
    tail = re.split(r"[/:]", location.rstrip("/"))[-1]
    return tail.removesuffix(".git") or location


def read_services(path: Path) -> list[Service]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read the services file {path}: {error.strerror or error}") from error
    services = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        location, *rest = line.split()
        options = {}
        words = []
        for word in rest:
            key, sep, value = word.partition("=")
            if sep and key in OPTIONS:
                options[key] = value
            else:
                words.append(word)
        if options.get("notify", "github") not in {"github", "gitlab", "none"}:
            raise UsageError(f"{path}:{number}: notify= takes github, gitlab or none")
        location = expand(location)
        if not is_url(location):
            location = str((path.parent / location).resolve())
        services.append(Service(location, " ".join(words) or default_name(location), options))
    if not services:
        raise UsageError(f"{path} lists no service (one git URL or path a line)")
    return services


def redact(location: str) -> str:
    """A URL without the credentials it may carry (``https://user:token@host/...``)."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]+@", r"\1***@", location)


# --- git -----------------------------------------------------------------------------------


def git(*args: str | Path, timeout: float = GIT_TIMEOUT) -> str:
    """Run git, never prompting for credentials; a failure is a FleetError with git's reason."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    command = ["git", *map(str, args)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired as error:
        raise FleetError(f"git {command_name(args)} timed out after {timeout:.0f} s") from error
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = next((line for line in lines if line.startswith("fatal:")), lines[-1] if lines else "")
        raise FleetError(f"git {command_name(args)} failed: {redact_text(reason) or f'exit {result.returncode}'}")
    return result.stdout


def command_name(args: Sequence[str | Path]) -> str:
    words = [str(arg) for arg in args]
    while words[:1] == ["-C"]:
        words = words[2:]
    return words[0] if words else ""


def redact_text(text: str) -> str:
    return re.sub(r"([a-z][a-z0-9+.-]*://)[^/@\s]+@", r"\1***@", text)


def cache_path(folder: Path, location: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", default_name(location))[:40]
    digest = hashlib.sha256(location.encode()).hexdigest()[:10]
    return folder / f"{slug}-{digest}.git"


def bare(path: Path) -> Path:
    if not (path / "HEAD").is_file():
        shutil.rmtree(path, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", "--bare", path)
    return path


def release(text: str) -> Version | None:
    match = RELEASE_TAG.fullmatch(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def tag(version: Version) -> str:
    return "v{}.{}.{}".format(*version)


# --- sources: this template and the organisation layers --------------------------------------


@dataclass
class Source:
    """A template's releases, read once however many services use it."""

    location: str
    newest: Version | None = None
    # version -> whether its CHANGELOG section has a Security part (of the newest tag's CHANGELOG)
    security: dict[Version, bool] | None = None
    changelog_error: str | None = None
    error: str | None = None


def changelog_security(changelog: str) -> dict[Version, bool]:
    """Each release section of a Keep a Changelog file -> whether it has a ``### Security`` part
    with an entry."""
    found: dict[Version, bool] = {}
    headings = list(RELEASE_HEADING.finditer(changelog))
    for index, heading in enumerate(headings):
        end = headings[index + 1].start() if index + 1 < len(headings) else len(changelog)
        body = changelog[heading.end() : end]
        parts = re.split(r"^### ", body, flags=re.MULTILINE)[1:]
        version = (int(heading[1]), int(heading[2]), int(heading[3]))
        found[version] = any(
            part.partition("\n")[0].strip() == "Security" and part.partition("\n")[2].strip() for part in parts
        )
    return found


def read_source(location: str, cache: Path) -> Source:
    source = Source(location)
    try:
        listed = git("ls-remote", "--tags", "--refs", location)
        tags = (line.rsplit("refs/tags/", 1)[-1] for line in listed.splitlines())
        versions = sorted(found for name in tags if (found := release(name)))
        if not versions:
            raise FleetError("no release tag (vX.Y.Z)")
        source.newest = versions[-1]
    except FleetError as error:
        source.error = str(error)
        return source
    newest = tag(source.newest)
    try:
        repository = bare(cache_path(cache / "sources", location))
        ref = f"refs/tags/{newest}"
        if not git("-C", repository, "tag", "--list", newest).strip():
            git("-C", repository, "fetch", "--quiet", "--depth", "1", "--no-tags", location, f"+{ref}:{ref}")
        try:
            text = git("-C", repository, "show", f"{ref}:CHANGELOG.md")
        except FleetError as error:
            raise FleetError(f"no CHANGELOG.md at {newest}") from error
        source.security = changelog_security(text)
    except FleetError as error:
        source.changelog_error = str(error)
    return source


# --- services --------------------------------------------------------------------------------


@dataclass
class Recorded:
    """What one answers file records: the source and version, and the answers."""

    answers_file: str
    source: str
    version: str
    answers: dict[str, str]


@dataclass
class Reading:
    """A service as its repository says (before the sources are read)."""

    service: Service
    default_branch: str | None = None
    commit: str | None = None
    template: Recorded | None = None
    layers: list[tuple[str, Recorded | None, str | None]] = field(default_factory=list)
    branches: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def scalars(text: str) -> dict[str, str]:
    """The top-level ``key: value`` lines of an answers file (copier writes them plainly)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z_][\w-]*):[ \t]+(.+?)\s*$", line)
        if not match or match[2].startswith(("|", ">", "[", "{", "&", "*", "#")):
            continue
        value = match[2]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1].replace("''", "'") if value[0] == "'" else value[1:-1]
        found[match[1]] = value
    return found


def recorded(repository: Path, ref: str, name: str) -> Recorded:
    try:
        text = git("-C", repository, "show", f"{ref}:{name}")
    except FleetError as error:
        raise FleetError(f"no {name} on the default branch (not made with copier?)") from error
    values = scalars(text)
    missing = [key for key in ("_src_path", "_commit") if not values.get(key)]
    if missing:
        raise FleetError(f"{name} records no {' or '.join(missing)}")
    answers = {key: value for key, value in values.items() if not key.startswith("_")}
    return Recorded(name, expand(values["_src_path"]), values["_commit"], answers)


def sync(location: str, cache: Path) -> tuple[Path, str, dict[str, str]]:
    """The repository's branches in a bare copy under ``cache``: (copy, default branch, heads)."""
    listed = git("ls-remote", "--symref", location, "HEAD", "refs/heads/*")
    heads: dict[str, str] = {}
    default = None
    for line in listed.splitlines():
        if line.startswith("ref: ") and line.endswith("\tHEAD"):
            default = line[5:].split("\t")[0].removeprefix("refs/heads/")
            continue
        sha, _, ref = line.partition("\t")
        if ref.startswith("refs/heads/"):
            heads[ref.removeprefix("refs/heads/")] = sha
    if not heads:
        raise FleetError("the repository has no branch")
    if default not in heads:
        default = next((name for name in ("main", "master") if name in heads), sorted(heads)[0])
    repository = bare(cache_path(cache / "services", location))
    have = git("-C", repository, "for-each-ref", "--format=%(objectname) %(refname:lstrip=2)", "refs/heads/")
    if dict(reversed(line.split(" ", 1)) for line in have.splitlines()) != heads:
        git("-C", repository, "fetch", "--quiet", "--prune", "--no-tags", location, "+refs/heads/*:refs/heads/*")
    return repository, default, heads


def merged(repository: Path, base: str, head: str) -> bool:
    """Whether ``head`` brings nothing ``base`` lacks, merged in any way (merge, rebase, squash)."""
    try:
        tree = git("-C", repository, "merge-tree", "--write-tree", base, head).split()[0]
        return tree == git("-C", repository, "rev-parse", f"{base}^{{tree}}").strip()
    except (FleetError, IndexError):
        return False


def update_branches(repository: Path, default: str, heads: dict[str, str]) -> list[dict[str, Any]]:
    found = []
    for name in sorted(heads):
        if name == default or not name.startswith(UPDATE_BRANCHES):
            continue
        base, head = f"refs/heads/{default}", f"refs/heads/{name}"
        ahead = int(git("-C", repository, "rev-list", "--count", f"{base}..{head}").strip())
        if ahead == 0 or merged(repository, base, head):
            continue
        try:
            version = scalars(git("-C", repository, "show", f"{head}:{ANSWERS}")).get("_commit")
        except FleetError:
            version = None
        found.append({"name": name, "commit": heads[name], "ahead": ahead, "version": version})
    return found


def read_service(service: Service, cache: Path) -> Reading:
    reading = Reading(service)
    try:
        repository, default, heads = sync(service.location, cache)
        reading.default_branch, reading.commit = default, heads[default]
        ref = f"refs/heads/{default}"
        reading.template = recorded(repository, ref, ANSWERS)
        names = git("-C", repository, "ls-tree", "--name-only", ref).splitlines()
        for name in sorted(names):
            match = LAYER_ANSWERS.match(name)
            if not match:
                continue
            try:
                reading.layers.append((match["name"], recorded(repository, ref, name), None))
            except FleetError as error:
                reading.layers.append((match["name"], None, str(error)))
        reading.branches = update_branches(repository, default, heads)
    except FleetError as error:
        reading.error = str(error)
    return reading


# --- the report ------------------------------------------------------------------------------


def recorded_version(text: str) -> Version | None:
    match = RECORDED_VERSION.fullmatch(text)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def standing(record: Recorded, source: Source) -> dict[str, Any]:
    """One source of a service: its version against the source's newest release."""
    entry: dict[str, Any] = {
        "source": redact(record.source),
        "version": record.version,
        "newest": tag(source.newest) if source.newest else None,
        "behind": None,
        "security_releases": None,
        "behind_security": None,
        "error": source.error,
    }
    current = recorded_version(record.version)
    if source.newest is None:
        return entry
    if current is None:
        entry["error"] = f"the recorded version {record.version!r} is no release (vX.Y.Z)"
        return entry
    entry["behind"] = current < source.newest
    if source.security is None:
        entry["error"] = f"security releases unknown: {source.changelog_error}"
        return entry
    missed = [tag(v) for v, has in sorted(source.security.items()) if has and current < v <= source.newest]
    entry["security_releases"] = missed
    entry["behind_security"] = bool(missed)
    return entry


def any_of(values: Iterable[bool | None]) -> bool | None:
    """True if any is true, else None if any is unknown, else False."""
    values = list(values)
    return True if True in values else (None if None in values else False)


def service_entry(reading: Reading, sources: dict[str, Source]) -> dict[str, Any]:
    service = reading.service
    entry: dict[str, Any] = {
        "name": service.name,
        "repository": redact(service.location),
        "default_branch": reading.default_branch,
        "commit": reading.commit,
        "error": reading.error,
        "template": None,
        "layers": [],
        "behind": None,
        "behind_security": None,
        "update_branches": reading.branches,
    }
    if reading.template is None:
        return entry
    template = standing(reading.template, sources[reading.template.source])
    template["answers"] = {key: reading.template.answers.get(key) for key in KEY_ANSWERS}
    entry["template"] = template
    for name, record, error in reading.layers:
        layer: dict[str, Any]
        if record is None:
            layer = {"source": None, "version": None, "newest": None, "behind": None}
            layer |= {"security_releases": None, "behind_security": None, "error": error}
        else:
            layer = standing(record, sources[record.source])
        entry["layers"].append({"name": name, "answers_file": record.answers_file if record else None, **layer})
    standings = [template, *entry["layers"]]
    entry["behind"] = any_of(item["behind"] for item in standings)
    entry["behind_security"] = any_of(item["behind_security"] for item in standings)
    return entry


def parallel(function: Callable[[T], R], items: Sequence[T], jobs: int) -> list[R]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(items)))) as pool:
        return list(pool.map(function, items))


def report(services: list[Service], cache: Path, jobs: int) -> dict[str, Any]:
    started = time.monotonic()
    readings = parallel(lambda service: read_service(service, cache), services, jobs)
    locations = sorted(
        {
            record.source
            for reading in readings
            for record in [reading.template, *(layer for _, layer, _ in reading.layers)]
            if record is not None
        }
    )
    sources = dict(
        zip(locations, parallel(lambda location: read_source(location, cache), locations, jobs), strict=True)
    )
    entries = [service_entry(reading, sources) for reading in readings]
    summary = {
        "services": len(entries),
        "unreadable": sum(entry["error"] is not None for entry in entries),
        "behind": sum(entry["behind"] is True for entry in entries),
        "behind_security": sum(entry["behind_security"] is True for entry in entries),
        "update_branches_open": sum(bool(entry["update_branches"]) for entry in entries),
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.monotonic() - started, 3),
        "summary": summary,
        "services": entries,
    }


def yes_no(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


def table_row(entry: dict[str, Any]) -> list[str]:
    template = entry["template"]
    if template is None:
        return [entry["name"], f"error: {entry['error']}"]
    answers = template["answers"]
    standings = [("template", template), *((layer["name"], layer) for layer in entry["layers"])]
    layers = ", ".join(
        f"{layer['name']} {layer['version'] or '?'}"
        + (f" (newest {layer['newest']})" if layer["behind"] else "")
        + (" (error)" if layer["error"] and layer["behind"] is None else "")
        for layer in entry["layers"]
    )
    behind = ", ".join(name for name, item in standings if item["behind"])
    security = "; ".join(
        f"{name} {', '.join(item['security_releases'])}" for name, item in standings if item["behind_security"]
    )
    branches = ", ".join(
        f"{branch['name']} ({branch['version'] or '?'}, {branch['ahead']} commit{'s' if branch['ahead'] != 1 else ''})"
        for branch in entry["update_branches"]
    )
    return [
        entry["name"],
        template["version"],
        template["newest"] or "?",
        *(answers[key] or "-" for key in KEY_ANSWERS),
        layers or "-",
        behind or yes_no(entry["behind"]),
        security or yes_no(entry["behind_security"]),
        branches or "-",
    ]


HEADER = ["SERVICE", "TEMPLATE", "NEWEST", "ARCHITECTURE", "AUTH", "CLOUD", "CI", "LAYERS", "BEHIND"]
HEADER += ["BEHIND SECURITY", "UPDATE BRANCH"]


def table(document: dict[str, Any]) -> str:
    rows = [table_row(entry) for entry in document["services"]]
    full = [row for row in [HEADER, *rows] if len(row) > 2]  # an unreadable repository's row has 2 cells
    widths = [max(len(row[0]) for row in [HEADER, *rows])]
    widths += [max(len(row[index]) for row in full) for index in range(1, len(HEADER))]
    lines = []
    for row in [HEADER, *rows]:
        if len(row) == 2:  # an unreadable repository: its error after the name
            lines.append(f"{row[0].ljust(widths[0])}  {row[1]}")
        else:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    notes = [
        f"{entry['name']}: {source}: {item['error']}"
        for entry in document["services"]
        if entry["template"]
        for source, item in [("template", entry["template"]), *((layer["name"], layer) for layer in entry["layers"])]
        if item["error"]
    ]
    summary = document["summary"]
    lines.append("")
    lines.append(
        f"{summary['services']} services: {summary['behind_security']} behind a security release, "
        f"{summary['behind']} behind, {summary['update_branches_open']} with an update branch open, "
        f"{summary['unreadable']} unreadable ({document['seconds']:.1f} s)"
    )
    return "\n".join(lines + notes) + "\n"


# --- notify ----------------------------------------------------------------------------------


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the token never follows it to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def hosted(location: str) -> tuple[str, str] | None:
    """(host, path without .git) of a git URL; None for a local path."""
    match = re.match(r"^[a-z][a-z0-9+.-]*://(?:[^/@]+@)?(?P<host>[^/:]+)(?::\d+)?/(?P<path>.+)$", location)
    match = match or re.match(r"^[\w.-]+@(?P<host>[\w.-]+):(?P<path>.+)$", location)
    if not match:
        return None
    return match["host"].lower(), match["path"].strip("/").removesuffix(".git")


def kind_of(service: Service) -> str:
    if "notify" in service.options:
        return service.options["notify"]
    found = hosted(service.location)
    if found is None:
        return "none"
    host = found[0]
    return "github" if host == "github.com" else "gitlab" if "gitlab" in host else "none"


def safe_api(url: str) -> str:
    """An API base URL that a token may be sent to: https, or http on the loopback interface."""
    parts = urllib.parse.urlsplit(url)
    loopback = parts.hostname in {"127.0.0.1", "localhost", "::1"}
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise FleetError(f"refusing to send a token to {url}: https only")
    return url.rstrip("/")


def post(url: str, headers: dict[str, str], data: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with OPENER.open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        raise FleetError(f"HTTP {error.code}" + (f": {message}" if message else "")) from error
    except (urllib.error.URLError, OSError) as error:
        raise FleetError(
            f"{urllib.parse.urlsplit(url).netloc} unreachable: {getattr(error, 'reason', error)}"
        ) from error


def gitlab_tokens() -> dict[str, str]:
    tokens = {}
    for line in os.environ.get("FLEET_GITLAB_TRIGGER_TOKENS", "").splitlines():
        words = line.replace("=", " ", 1).split() if not line.lstrip().startswith("#") else []
        if len(words) == 2:
            tokens[words[0].strip("/")] = words[1]
    return tokens


def notify_github(service: Service, version: str, api: str) -> str:
    owner_repo = (hosted(service.location) or ("", ""))[1]
    if owner_repo.count("/") != 1:
        raise FleetError(f"{redact(service.location)} names no GitHub owner/repository")
    token = os.environ.get("FLEET_GITHUB_TOKEN", "")
    if not token:
        raise FleetError("FLEET_GITHUB_TOKEN is not set")
    url = f"{safe_api(service.options.get('api', api))}/repos/{owner_repo}/dispatches"
    payload = {"event_type": DISPATCH_EVENT, "client_payload": {"version": version}}
    headers = {
        "Accept": "application/vnd.github+json",
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "User-Agent": "secure-mcp-template-fleet",
        "X-GitHub-Api-Version": "2022-11-28",
    }
    status, _ = post(url, headers, json.dumps(payload).encode())
    return f"repository_dispatch {DISPATCH_EVENT} to {owner_repo} (HTTP {status})"


def notify_gitlab(service: Service, version: str, api: str | None) -> str:
    found = hosted(service.location)
    if found is None:
        raise FleetError(f"{service.location} is no GitLab URL")
    host, project = found
    token = gitlab_tokens().get(project)
    if not token:
        raise FleetError(f"FLEET_GITLAB_TRIGGER_TOKENS has no trigger token for {project}")
    base = safe_api(service.options.get("api") or api or f"https://{host}/api/v4")
    url = f"{base}/projects/{urllib.parse.quote(project, safe='')}/trigger/pipeline"
    ref = service.options.get("ref", "main")
    form = {
        "token": token,
        "ref": ref,
        "variables[TEMPLATE_UPDATE]": "true",
        "variables[TEMPLATE_UPDATE_TO]": version,
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "secure-mcp-template-fleet"}
    status, body = post(url, headers, urllib.parse.urlencode(form).encode())
    try:
        web_url = json.loads(body).get("web_url")
    except (ValueError, AttributeError):
        web_url = None
    return f"pipeline trigger on {project}@{ref} (HTTP {status})" + (f": {web_url}" if web_url else "")


def notify(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"v[0-9]+\.[0-9]+\.[0-9]+", args.version):
        raise UsageError(f"--version {args.version!r}: a release tag like v1.2.0")
    services = read_services(args.services)

    def one(service: Service) -> tuple[str, bool]:
        kind = kind_of(service)
        try:
            if kind == "none":
                return "skipped: not a GitHub or GitLab repository (notify=github|gitlab says which)", True
            if args.dry_run:
                return f"would notify ({kind})", True
            if kind == "github":
                return notify_github(service, args.version, args.github_api), True
            return notify_gitlab(service, args.version, args.gitlab_api), True
        except FleetError as error:
            return f"FAILED: {error}", False

    results = parallel(one, services, args.jobs)
    width = max(len(service.name) for service in services)
    for service, (message, _) in zip(services, results, strict=True):
        print(f"{service.name.ljust(width)}  {message}")
    failed = sum(not ok for _, ok in results)
    print(f"\n{len(services) - failed} of {len(services)} services notified or skipped, {failed} failed")
    return 1 if failed else 0


# --- the command -----------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    notifying = argv[:1] == ["notify"]
    parser = argparse.ArgumentParser(
        prog="fleet.py notify" if notifying else "fleet.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--services", type=Path, default=Path("fleet.txt"), help="the services file")
    parser.add_argument("--jobs", type=int, default=8, help="repositories read (or notified) at once")
    if notifying:
        parser.add_argument("--version", required=True, help="the release to update to, vX.Y.Z")
        parser.add_argument("--github-api", default=os.environ.get("FLEET_GITHUB_API", GITHUB_API))
        parser.add_argument("--gitlab-api", default=os.environ.get("FLEET_GITLAB_API"), help="default: each host's")
        parser.add_argument("--dry-run", action="store_true", help="say what would be sent, send nothing")
        argv = argv[1:]
    else:
        parser.add_argument("--json", action="store_true", help="the JSON document (docs/fleet.md) instead of a table")
        parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "fleet", help="where the copies are kept")
        parser.add_argument(
            "--fail-behind-security", action="store_true", help="exit 1 when a service lacks a security release"
        )
        argv = argv[1:] if argv[:1] == ["report"] else argv
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    try:
        if notifying:
            return notify(args)
        document = report(read_services(args.services), args.cache.resolve(), args.jobs)
    except UsageError as error:
        print(f"fleet: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(document, indent=2) + "\n" if args.json else table(document))
    return 1 if args.fail_behind_security and document["summary"]["behind_security"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
