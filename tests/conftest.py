"""Shared machinery: render the template with Copier's API and give each rendered project a
virtualenv with its locked-down dependencies, cached across test sessions."""

from __future__ import annotations

import atexit
import fcntl
import functools
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from copier import run_copy

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"
# What a fresh machine may lack: the tests take these from pinned wheels (support/pinned_tools.py,
# the generated project's gates group), never from the system.
SYSTEM_TOOLS = ("kubectl", "kustomize", "node", "nodejs", "npm", "npx", "corepack")
# Every tool the tests start (checkov, the projects' servers, pre-commit's hooks) keeps its
# bytecode: with PYTHONDONTWRITEBYTECODE set, as on some CI images, each start compiles its
# whole import graph again (checkov: 9.5 s a start instead of 4.8 s).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@functools.cache
def path_without_system_tools() -> str:
    """This PATH with SYSTEM_TOOLS hidden, as on a fresh machine: each folder on it that holds
    one of them is replaced by a folder of links to its other entries."""
    links = Path(tempfile.mkdtemp(prefix="path-without-tools-"))
    atexit.register(shutil.rmtree, links, True)
    entries = []
    for index, entry in enumerate(os.environ["PATH"].split(os.pathsep)):
        folder = Path(entry)
        if not folder.is_dir() or not any(os.path.lexists(folder / name) for name in SYSTEM_TOOLS):
            entries.append(entry)
            continue
        stand_in = links / str(index)
        stand_in.mkdir()
        for item in folder.iterdir():
            if item.name not in SYSTEM_TOOLS:
                (stand_in / item.name).symlink_to(item)
        entries.append(str(stand_in))
    bare = os.pathsep.join(entries)
    assert [name for name in SYSTEM_TOOLS if shutil.which(name, path=bare)] == []
    return bare


def _compile_each_template_once() -> None:
    """Copier compiles every template file and path name again for each render: 1.7 s of a
    3 s render, some hundred renders a session. Jinja's code for a source depends only on that
    source and on the environment's syntax and options, the same in every render of this
    template, so each is compiled once a session (what Jinja's own bytecode cache does for
    templates from a loader; Copier's strings come through ``from_string``, which it skips)."""
    compile_source = jinja2.Environment.compile
    compiled: dict[tuple[Any, ...], Any] = {}

    @functools.wraps(compile_source)
    def compile_once(
        self: jinja2.Environment,
        source: Any,
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> Any:
        if not isinstance(source, str):
            return compile_source(self, source, name, filename, raw, defer_init)
        autoescape = self.autoescape(name) if callable(self.autoescape) else self.autoescape
        # Environments of the same syntax share one lexer object (jinja2.lexer.get_lexer).
        options = (type(self), self.lexer, tuple(self.extensions), self.optimized, self.is_async, self.finalize)
        key = (*options, autoescape, source, name, filename, raw, defer_init)
        if key not in compiled:
            compiled[key] = compile_source(self, source, name, filename, raw, defer_init)
        else:
            self.preprocess(source, name, filename)  # extensions' hooks still run (Copier's yield resets here)
        return compiled[key]

    jinja2.Environment.compile = compile_once  # type: ignore[method-assign]


_compile_each_template_once()


def questions() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load((ROOT / "copier.yml").read_text())
    return {name: spec for name, spec in config.items() if not name.startswith("_")}


def answers_with_computed(answers: dict[str, Any]) -> dict[str, Any]:
    """Every answer copier would hold for ``answers`` (the rest at their defaults), the computed
    ones (``when: false``) included: each default rendered in copier.yml's order with copier's
    Jinja filters, so a test reads what the template computed instead of deriving it again."""
    environment = jinja2.Environment(extensions=["jinja2_ansible_filters.AnsibleCoreFiltersExtension"])
    context: dict[str, Any] = {}
    for name, spec in questions().items():
        value = answers[name] if name in answers else spec.get("default")
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            value = environment.from_string(value).render(**context)
            value = yaml.safe_load(value) if spec.get("type") in ("bool", "int", "float", "yaml", "json") else value
        context[name] = value
    return context


def choice_values(spec: dict[str, Any]) -> list[Any]:
    choices = spec["choices"]
    return list(choices.values()) if isinstance(choices, dict) else list(choices)


def single_choices() -> dict[str, list[Any]]:
    """The single-choice questions copier.yml offers, with their choices."""
    return {
        name: choice_values(spec)
        for name, spec in questions().items()
        if "choices" in spec and not spec.get("multiselect")
    }


def covering(*vary: str) -> list[dict[str, Any]]:
    """Every combination of the questions named in ``vary``; each other single-choice question
    takes its choices in turn, so every offered choice of every question appears at least once.
    Tests name the questions their subject depends on and stay cheap as choices grow."""
    choices = single_choices()
    varied = list(itertools.product(*(choices[name] for name in vary)))
    others = {name: values for name, values in choices.items() if name not in vary}
    count = max([len(varied)] + [len(values) for values in others.values()])
    return [
        {
            name: (
                dict(zip(vary, varied[index % len(varied)], strict=True))
                | {other: values[index % len(values)] for other, values in others.items()}
            )[name]
            for name in choices
        }
        for index in range(count)
    ]


def combo_id(answers: dict[str, Any]) -> str:
    return "-".join(str(value) for value in answers.values())


# Names, domain and limits unlike the defaults, so nothing depends on a default value.
CUSTOM = {
    "project_name": "Payments Risk Gateway",
    "domain": "mcp.payments.internal.example.org",
    "k8s_namespace": "payments-risk",
    "author_email": "sec-team@payments.example.org",
    "rate_limit_per_minute": 7,
    "compliance": ["soc2", "iso27001", "nist-800-53", "pci-dss", "hipaa", "gdpr", "fedramp", "cis"],
}


def render(dest: Path, data: dict[str, Any] | None = None, *, trust: bool = True, skip_tasks: bool = False) -> Path:
    """``copier copy --defaults`` from this checkout's working tree into ``dest``."""
    run_copy(
        str(ROOT),
        dest,
        data=data or {},
        defaults=True,
        unsafe=trust,
        skip_tasks=skip_tasks,
        vcs_ref="HEAD",
        quiet=True,
    )
    return dest


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock shared by pytest-xdist workers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def npm_package(name: str) -> Path:
    """tests/support/<name> (package.json, its lock, its scripts) installed from the lock file
    (integrity hashes checked by npm) once per lock into .cache, with the npm of the template's
    pinned Node.js wheel and no Node.js on the PATH."""
    from support.pinned_tools import tool

    source = ROOT / "tests" / "support" / name
    lock = (source / "package-lock.json").read_bytes()
    target = CACHE / name / hashlib.sha256(lock).hexdigest()[:16]
    with locked(CACHE / f"{name}.lock"):
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
            subprocess.run(
                [tool("npm"), "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--silent"],
                cwd=target,
                env={**os.environ, "PATH": path_without_system_tools()},
                check=True,
            )
            (target / ".complete").touch()
    return target


def python_for(project: Path, version: str) -> str:
    """The interpreter the project asked for when this machine has it, else this one.
    Run in the project, where version managers such as pyenv honour its .python-version."""
    found = subprocess.run(
        [UV, "python", "find", "--no-python-downloads", "--python-preference", "only-system", version],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else sys.executable


def project_venv(project: Path, *, groups: tuple[str, ...] = ("dev",), runtime: bool = True) -> Path:
    """A venv with the project's runtime dependencies (unless ``runtime`` is false) and the given
    dependency groups, shared by every project that pins the same versions and cached in
    .cache/venvs across sessions. The versions come from the rendered pyproject alone."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    pins = (pyproject["project"]["dependencies"] if runtime else []) + [
        pin for group in groups for pin in pyproject["dependency-groups"][group]
    ]
    source = ["-r", "pyproject.toml"] if runtime else []
    group_flags = [flag for group in groups for flag in ("--group", group)]
    return cached_venv(project, pins, [*source, *group_flags])


def tool_venv(project: Path, *pins: str) -> Path:
    """A cached venv with just ``pins`` (tools the project pins outside its lock, e.g. semgrep)."""
    return cached_venv(project, list(pins), list(pins))


def cached_venv(project: Path, pins: list[str], install: list[str]) -> Path:
    """``uv pip install install`` into a venv under the project's Python, keyed by its pins."""
    version = (project / ".python-version").read_text().strip()
    interpreter = python_for(project, version)
    key = hashlib.sha256("\n".join([interpreter, *sorted(pins)]).encode()).hexdigest()[:16]
    venv = CACHE / "venvs" / key
    with locked(CACHE / "venvs" / f"{key}.lock"):
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
            subprocess.run([UV, "venv", "--quiet", "--python", interpreter, str(venv)], check=True, env=env)
            subprocess.run(
                [UV, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), *install],
                cwd=project,
                check=True,
                env=env,
            )
            (venv / ".complete").touch()
    return venv


def make(project: Path, target: str) -> subprocess.CompletedProcess[str]:
    """A make target of a rendered project, with this checkout's uv."""
    command = ["make", "--no-print-directory", target, f"UV={UV}"]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600, check=False)


def run_in(project: Path, venv: Path, *command: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a tool of the project's venv inside the project, as its Makefile would."""
    env = {
        **os.environ,
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(project / "src"), str(project / "scripts")]),
    }
    return subprocess.run(
        [str(venv / "bin" / command[0]), *command[1:]],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def default_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("default") / "project")
