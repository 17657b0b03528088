"""A budget of refused requests per client address, spent before anything costly runs.

Refusals cost a sender nothing and us something: a forged bearer token is verified (~160 µs of
signature check), a malformed message parsed, an audit line counted. So an address whose
requests were refused ``per_minute`` times in the last minute gets 429 for its next requests,
without any check, until its budget refills (one refusal's worth every ``60 / per_minute`` s).
Only refusals spend it: callers behind one NAT address whose requests succeed never meet it,
which a budget of all requests per address could not promise. The 429s it answers itself spend
nothing, so a flood that goes on is let through at the refill rate, never shut out for good.

Nor do the answers that clients following the MCP specification get in normal operation
(``PROTOCOL_ANSWERS``), however many of them share an address: 405 for ``GET /mcp`` (the
TypeScript SDK and the MCP Inspector ask for an event stream on every connect; it is reached
only after authentication and the caller's own rate limit), 401 for a request without any token
(how OAuth discovery starts; refused before anything costly runs, it costs no more than the 429
would), and 404 for a ``/.well-known/`` document this server does not serve (clients probe the
metadata path variants). An attacker gains nothing from them that the 429 would save us; what
costs us something (a forged, expired or foreign token, a malformed message, a refused Host or
Origin, a bad certificate) still spends.

The budget is a GCRA (generic cell rate algorithm): one float per address, the time its budget
would be full again. The table is bounded by size and by age: the least recently refused
addresses are forgotten beyond ``max_sources``, and an address whose budget is full again is
forgotten within a window (looked for once per window, from the least recently refused on), so
after a flood the table empties and requests go back to the no-lookup path.
An IPv6 address counts by its /64, the block one host is usually given.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable

WINDOW_SECONDS = 60.0

# Answers that spend no budget (see above), by their name in mcp_requests_refused_total.
STREAM_NOT_OFFERED = "stream_not_offered"  # 405 for GET /mcp
NO_BEARER = "missing_token"  # 401 for a request with no bearer token at all
NO_METADATA = "no_metadata"  # 404 for a /.well-known/ path this server serves nothing at
PROTOCOL_ANSWERS = frozenset({STREAM_NOT_OFFERED, NO_BEARER, NO_METADATA})
WELL_KNOWN = "/.well-known/"


def source_of(address: str | None) -> str:
    """The key an address spends its budget under: itself, or its /64 for IPv6."""
    if address is None or ":" not in address:
        return address or ""
    try:
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    except ValueError:
        return address


class RefusalBudget:
    def __init__(self, per_minute: int, max_sources: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = WINDOW_SECONDS / per_minute  # what one refusal spends
        self.tolerance = WINDOW_SECONDS - self.interval  # how far ahead the budget may be spent
        self.max_sources = max_sources
        self.clock = clock
        self._full_at: OrderedDict[str, float] = OrderedDict()  # least recently refused first
        self._sweep_at = 0.0

    def retry_after(self, address: str | None) -> float:
        """0 when requests from ``address`` may go ahead, else seconds until they may."""
        if not self._full_at:
            return 0.0
        now = self.clock()
        if now >= self._sweep_at:
            self._forget_full(now)
        full_at = self._full_at.get(source_of(address))
        if full_at is None:
            return 0.0
        return max(full_at - now - self.tolerance, 0.0)

    def spend(self, address: str | None) -> None:
        """A request from ``address`` was refused."""
        source = source_of(address)
        now = self.clock()
        if now >= self._sweep_at:
            self._forget_full(now)
        full_at = self._full_at.pop(source, now)
        self._full_at[source] = max(full_at, now) + self.interval
        if len(self._full_at) > self.max_sources:
            self._full_at.popitem(last=False)

    def _forget_full(self, now: float) -> None:
        """Forget the addresses whose budget is full again, least recently refused first, up to
        the first one still refilling: those after it were refused later, and go at a later sweep."""
        self._sweep_at = now + WINDOW_SECONDS
        full_at = self._full_at
        while full_at and next(iter(full_at.values())) <= now:
            full_at.popitem(last=False)

    def __len__(self) -> int:
        return len(self._full_at)
