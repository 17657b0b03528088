"""Layout migrations: a release moved a file or folder; the team's changes go with it.

Without this, ``copier update`` deletes a file that a release moved even when the team changed
it, without a conflict: the team's version is only left in git history. copier.yml's
``_migrations`` run this script after the update has written the new release (Copier's default
``after`` stage), once for each entry whose ``version`` the update crosses, and only with
``--trust``. One entry per release that changes the layout:

    _migrations:
      - version: v1.3.0
        command: ["{{ _copier_python }}", "{{ _copier_conf.src_path }}/hooks/migrate.py",
                  "--answers-file", "{{ _copier_conf.answers_file }}",
                  "move", "docs/compliance.md", "docs/compliance/controls.md"]

Operations, any number, run in order in the project directory:

``move OLD NEW``
    OLD (a file, or a folder: each file under it) now lives at NEW. Paths are the rendered
    ones, relative to the project.

    - The update removed OLD and wrote the release's NEW: the team's changes to OLD (against
      the old release, rendered again with the recorded answers, as Copier renders it) are
      merged into NEW, 3-way, as ``copier update`` merges any file; where both changed the same
      lines NEW gets Copier's conflict markers (``before updating`` / ``after updating``).
      The move is recorded in git's index (OLD removed; NEW added when it merged cleanly).
    - OLD still exists and NEW does not (a team's own file in a moved folder, or a project
      that never went through the update): OLD is moved to NEW (``git mv`` when tracked).
    - Both exist, or the project had a NEW of its own before the update (then OLD is restored
      from git's index): both are left as they are, and the line says so.
    - Neither (already moved, or never part of this project): nothing happens.

Every operation is idempotent: once it has run, OLD is gone from the working tree and the
index, so a second run changes nothing. Each prints one line per file, ``migrate: OLD -> NEW:
what happened``. Run by hand in a project, with a Python that has copier (for the old render):

    python path/to/template/hooks/migrate.py move OLD NEW
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# The labels copier update writes around a conflict; the project's conflict guard looks for them.
LABELS = ("before updating", "last update", "after updating")


class MigrationError(Exception):
    """The migration cannot go on; the message says why and what to do."""


def git(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(["git", *args], capture_output=True, check=False)
    if check and result.returncode != 0:
        raise MigrationError(f"git {' '.join(args)}: {result.stderr.decode(errors='replace').strip()}")
    return result


def indexed(path: str) -> bytes | None:
    """The file as git's index holds it (the project before the update: copier stages nothing
    but conflicts, and refuses to start on a dirty tree), or None."""
    shown = git("show", f":./{path}", check=False)
    return shown.stdout if shown.returncode == 0 else None


def indexed_files(folder: str) -> list[str]:
    listed = git("ls-files", "-z", "--", folder).stdout.decode()
    return [name for name in listed.split("\0") if name]


class OldRelease:
    """The project's previous template release, rendered on first use with the answers the
    index records (the answers file before the update), into a temporary folder."""

    def __init__(self, answers_file: str) -> None:
        self.answers_file = answers_file
        self.scratch: tempfile.TemporaryDirectory[str] | None = None

    def file(self, path: str) -> bytes | None:
        if self.scratch is None:
            self.scratch = tempfile.TemporaryDirectory(prefix="migrate-old-release.")
            self.render(Path(self.scratch.name) / "project")
        rendered = Path(self.scratch.name) / "project" / path
        return rendered.read_bytes() if rendered.is_file() else None

    def render(self, destination: Path) -> None:
        import yaml  # copier's dependencies: present in the Python that runs copier
        from copier import run_copy

        recorded = indexed(self.answers_file)
        if recorded is None:
            raise MigrationError(f"{self.answers_file} is not in git's index: cannot tell the previous release")
        answers = yaml.safe_load(recorded)
        data = {name: value for name, value in answers.items() if not name.startswith("_")}
        run_copy(
            answers["_src_path"],
            destination,
            data=data,
            vcs_ref=answers["_commit"],
            answers_file=self.answers_file,
            defaults=True,
            quiet=True,
            skip_tasks=True,
            unsafe=True,
        )

    def close(self) -> None:
        if self.scratch is not None:
            self.scratch.cleanup()


def stage(path: str) -> None:
    """Stage a moved file so that ``git status`` shows the move (not needed for idempotency:
    OLD's absence from the index is; a file .gitignore excludes stays unstaged)."""
    git("add", "--", path, check=False)


def merge(ours: bytes, base: bytes, theirs: bytes) -> tuple[bytes, int]:
    """``git merge-file``: the merged text and its number of conflicts."""
    with tempfile.TemporaryDirectory(prefix="migrate-merge.") as scratch:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(scratch, name)
            path.write_bytes(text)
            paths.append(str(path))
        labels = [argument for label in LABELS for argument in ("-L", label)]
        result = git("merge-file", "-p", *labels, *paths, check=False)
    if not 0 <= result.returncode < 128:
        raise MigrationError(f"git merge-file failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout, result.returncode


def move_file(old: str, new: str, release: OldRelease) -> str:
    """Carry one file from OLD to NEW; returns what happened."""
    old_path, new_path = Path(old), Path(new)
    if not old_path.exists() and indexed(old) is not None and indexed(new) is not None:
        # The update removed OLD, but the project had a NEW of its own already: both stay.
        git("checkout", "--", old)
    if old_path.exists():
        if new_path.exists():
            return f"both exist; left both as they are: merge {old} into {new} yourself, then delete {old}"
        new_path.parent.mkdir(parents=True, exist_ok=True)
        if indexed(old) is not None:
            git("mv", "--", old, new)
        else:
            os.replace(old_path, new_path)
        return "moved"
    ours = indexed(old)
    if ours is None:
        return "nothing to do (already moved, or not part of this project)"
    # The update removed OLD; the project's version of it is still in the index.
    clean = True
    if not new_path.is_file():
        new_path.parent.mkdir(parents=True, exist_ok=True)
        new_path.write_bytes(ours)
        outcome = f"the release has no {new} here; your {old} is kept as {new}"
    elif ours == new_path.read_bytes():
        outcome = "moved (the same content)"
    # None: the old release did not write OLD for these answers; then all of it is the team's.
    elif (base := release.file(old)) == ours:
        outcome = "moved (you had not changed it: the release's version)"
    else:
        merged, conflicts = merge(ours, base or b"", new_path.read_bytes())
        new_path.write_bytes(merged)
        clean = not conflicts
        outcome = "moved your changes" + (
            "" if clean else f"; {conflicts} conflict(s) in {new}: resolve the markers, then git add {new}"
        )
    # Last, once NEW holds everything: OLD leaves the index, so a second run does nothing.
    git("rm", "--cached", "--quiet", "--", old)
    if clean:
        stage(new)
    return outcome


def move(old: str, new: str, release: OldRelease) -> list[str]:
    """``move OLD NEW`` for a file or each file of a folder; one line per file."""
    old, new = old.strip("/"), new.strip("/")
    if Path(old).is_dir() or (not Path(old).exists() and indexed(old) is None and indexed_files(old)):
        names = set(indexed_files(old)) | {
            path.as_posix() for path in Path(old).rglob("*") if path.is_file() or path.is_symlink()
        }
        pairs = [(name, new + name[len(old) :]) for name in sorted(names)]
    else:
        pairs = [(old, new)]
    lines = [f"migrate: {source} -> {target}: {move_file(source, target, release)}" for source, target in pairs]
    if Path(old).is_dir() and not any(path.is_file() or path.is_symlink() for path in Path(old).rglob("*")):
        shutil.rmtree(old)
    return lines


OPERATIONS: dict[str, tuple[int, Callable[..., list[str]]]] = {"move": (2, move)}


def parse(words: list[str]) -> list[tuple[str, list[str]]]:
    """``move A B move C D`` into [("move", [A, B]), ("move", [C, D])]; a usage error otherwise."""
    steps: list[tuple[str, list[str]]] = []
    position = 0
    while position < len(words):
        name = words[position]
        if name not in OPERATIONS:
            raise MigrationError(f"unknown operation {name!r}; known: {', '.join(OPERATIONS)}")
        count = OPERATIONS[name][0]
        arguments = words[position + 1 : position + 1 + count]
        if len(arguments) != count or any(not argument or argument.startswith("/") for argument in arguments):
            raise MigrationError(f"{name} takes {count} relative paths; got {arguments}")
        if any(".." in Path(argument).parts for argument in arguments):
            raise MigrationError(f"{name}: paths stay inside the project; got {arguments}")
        steps.append((name, arguments))
        position += 1 + count
    if not steps:
        raise MigrationError("no operation given")
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--answers-file", default=".copier-answers.yml", help="Copier's answers file of the project")
    parser.add_argument("operations", nargs=argparse.REMAINDER, help="move OLD NEW [move OLD NEW ...]")
    args = parser.parse_args(argv)
    release = OldRelease(args.answers_file)
    try:
        for name, arguments in parse(args.operations):
            for line in OPERATIONS[name][1](*arguments, release):
                print(line, flush=True)
    except MigrationError as error:
        print(f"migrate: {error}", file=sys.stderr)
        return 1
    finally:
        release.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
