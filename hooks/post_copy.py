"""Post-copy task: make the new project a git repository with a `main` branch.

A convenience only: `copier copy --skip-tasks` (which needs no `--trust`) gives the same
files; run `git init -b main` yourself then.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def main() -> int:
    git = shutil.which("git")
    if git is None:
        print("git not found: skipped `git init` (run it yourself)")
        return 0
    inside = subprocess.run([git, "rev-parse", "--is-inside-work-tree"], capture_output=True, check=False)
    if inside.returncode == 0:
        return 0
    subprocess.run([git, "init", "--quiet", "--initial-branch=main", str(Path.cwd())], check=True)
    print("initialised a git repository (branch main)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
