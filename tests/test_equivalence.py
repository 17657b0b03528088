"""The refactoring check (tests/support/render_matrix.py, `make equivalence`) finds what it must."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT, single_choices

sys.path.insert(0, str(ROOT / "tests" / "support"))
import render_matrix

OBJECTS = {"aws": [{"kind": "Deployment", "metadata": {"name": "server", "namespace": "ns"}, "spec": {"replicas": 2}}]}


def test_the_matrix_meets_every_choice_and_every_architecture_with_every_auth_mode() -> None:
    combos = list(render_matrix.matrix().values())
    assert len(combos) >= 12
    for name, choices in single_choices().items():
        assert {combo[name] for combo in combos} == set(choices), name
    pairs = {(combo["architecture"], combo["auth_mode"]) for combo in combos}
    assert len(pairs) == len(single_choices()["architecture"]) * len(single_choices()["auth_mode"])


def fake_render(root: Path, files: dict[str, str], objects: dict[str, list[object]]) -> Path:
    project = root / "standalone-aws-mtls-none"
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    (project / render_matrix.KUSTOMIZED).write_text(json.dumps(objects))
    return root


@pytest.fixture
def before(tmp_path: Path) -> Path:
    files = {".copier-answers.yml": "_commit: abc\ncloud: aws\n", "src/app.py": "x = 1\n", "README.md": "hi\n"}
    return fake_render(tmp_path / "before", files, OBJECTS)


def test_equal_renders_are_equivalent_whatever_commit_they_came_from(before: Path, tmp_path: Path) -> None:
    files = {".copier-answers.yml": "_commit: def\ncloud: aws\n", "src/app.py": "x = 1\n", "README.md": "hi\n"}
    assert render_matrix.compare(before, fake_render(tmp_path / "after", files, OBJECTS), []) == []


def test_a_changed_gone_or_new_file_is_found_unless_allowed(before: Path, tmp_path: Path) -> None:
    files = {".copier-answers.yml": "_commit: abc\ncloud: aws\n", "src/app.py": "x = 2\n", "NEW.md": "new\n"}
    after = fake_render(tmp_path / "after", files, OBJECTS)
    assert render_matrix.compare(before, after, []) == [
        "standalone-aws-mtls-none: NEW.md is new",
        "standalone-aws-mtls-none: README.md is gone",
        "standalone-aws-mtls-none: src/app.py differs",
    ]
    assert render_matrix.compare(before, after, ["src/*", "*.md"]) == []


def test_other_kustomize_objects_are_found_even_where_files_may_change(before: Path, tmp_path: Path) -> None:
    files = {".copier-answers.yml": "_commit: abc\ncloud: aws\n", "src/app.py": "x = 1\n", "README.md": "hi\n"}
    changed = json.loads(json.dumps(OBJECTS))
    changed["aws"][0]["spec"]["replicas"] = 3
    after = fake_render(tmp_path / "after", files, changed)
    assert render_matrix.compare(before, after, ["*"]) == [
        "standalone-aws-mtls-none: kubectl kustomize deploy/k8s/overlays/aws builds other objects"
    ]
