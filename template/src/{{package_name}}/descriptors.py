"""The open-file limit. Every connection costs a descriptor, and container runtimes commonly
start a process with a soft ``RLIMIT_NOFILE`` of 1024 under a far higher hard limit, which
Python never raises itself: at 1024 held connections, ``accept()`` fails and valid callers are
refused at random. Start-up raises the soft limit to the hard one, which needs no privilege,
and logs both; a hard limit that is still low is logged as a warning with the fix. The MCP
port holds at most the limit less a reserve (``connection_capacity``), so a full table never
takes the descriptors the server needs for its own work.
"""

from __future__ import annotations

import logging
import resource

from .errors import ConfigError
from .settings import ENV_PREFIX

log = logging.getLogger(__name__)

# Below this many descriptors the per-address and concurrency bounds cannot all be reached
# before the table is full (docs/deployment.md: "Open files").
ADVISED_MINIMUM = 65536
# What Linux allows at most when the hard limit is "unlimited" (fs.nr_open's default).
LINUX_NR_OPEN = 1 << 20


def _counted(limit: int) -> int:
    """A limit as a number of descriptors: "unlimited" is what Linux allows at most."""
    return LINUX_NR_OPEN if limit == resource.RLIM_INFINITY else limit


def raise_open_file_limit() -> None:
    """Raise the soft open-file limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _counted(hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("open-file limit left as it was", extra={"soft": soft, "hard": hard, "error": str(exc)})
        else:
            log.info("open-file limit raised", extra={"soft_before": soft, "soft": wanted, "hard": hard})
            soft = wanted
    if soft != resource.RLIM_INFINITY and soft < ADVISED_MINIMUM:
        log.warning(
            "open-file limit is low: raise the container's nofile limit (docs/deployment.md)",
            extra={"soft": soft, "hard": hard, "advised": ADVISED_MINIMUM},
        )


def connection_capacity(reserve: int) -> int:
    """Connections the MCP port may hold: the open-file limit less ``reserve``, the descriptors
    kept for the server's own work (listening sockets, files, key fetches, upstream calls)."""
    limit = _counted(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    if limit - reserve < 1:
        raise ConfigError(
            f"{ENV_PREFIX}RESERVED_FILE_DESCRIPTORS: {reserve} leaves no connection under the open-file limit of"
            f" {limit} (lower it, or raise the container's nofile limit: docs/deployment.md)"
        )
    return limit - reserve
