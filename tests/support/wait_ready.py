"""Wait until a URL answers 200 (used by `make demo`); on time-out show the server's log."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def wait_ready(url: str, log: Path | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise SystemExit(f"not ready after {timeout:.0f} s: {url}\n{tail}")


if __name__ == "__main__":
    wait_ready(sys.argv[1], Path(sys.argv[2]) if len(sys.argv) > 2 else None)
