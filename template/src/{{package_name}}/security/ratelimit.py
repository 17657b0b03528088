"""Per-principal rate limit on MCP requests: 429 with ``Retry-After`` once the budget is spent.

A moving window of N requests per 60 s for each principal. ``memory://`` (the default) keeps
it in this process with no thread and no background task, in memory bounded whatever the
limit and the traffic (``LocalWindow``); any other storage URI (e.g.
``redis://host:6379``, with ``limits[async-redis]`` installed) shares one budget across replicas
through the ``limits`` library. (``limits``' own in-memory storage starts a timer thread or
task per request to expire entries, which cost more than the rest of our layers together.)
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import StorageTypes, storage_from_string
from starlette.types import ASGIApp, Receive, Scope, Send

from .audit import AuditLog
from .identity import client_ip, principal_from_scope

WINDOW_SECONDS = 60.0


# A key's accepted requests less than this far apart share one entry of its window (see below).
WINDOW_STEP_SECONDS = 1.0


class _Recent:
    """One key's accepted requests still in the window, oldest first: the time of the first
    request of each step and how many the step holds, and their total."""

    __slots__ = ("counts", "times", "total")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.counts: deque[int] = deque()
        self.total = 0


class LocalWindow:
    """A moving window in this process, in memory bounded by size and by age:

    - per key, at most ``WINDOW_SECONDS / step + 1`` entries (61), whatever the limit: requests
      accepted less than ``step`` seconds after the newest entry's first one are counted in it,
      and leave the window with it (a window exact to within ``step`` seconds, in the
      caller's favour); entries leave the window when it has moved past them;
    - at most ``max_keys`` keys, the least recently seen forgotten beyond; and a key idle for a
      whole window (nothing of it left in the window) is forgotten within another window.

    Most requests cost a clock read, a dict lookup, two comparisons and two increments; a
    step's first request also drops the entries that left the window, and looks for idle keys
    once per window, from the least recently seen on.
    (It used to keep the time of each of a key's last ``limit`` requests: 40 bytes a request
    for ever with a high limit, ``docs/benchmarks.md``.)"""

    def __init__(
        self,
        limit: int,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        step: float = WINDOW_STEP_SECONDS,
    ) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self.clock = clock
        self.step = step
        self._recent: OrderedDict[str, _Recent] = OrderedDict()
        self._sweep_at = clock() + WINDOW_SECONDS

    async def retry_after(self, key: str) -> float:
        """0 when the request may go ahead (and is counted), else seconds until it may."""
        now = self.clock()
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = _Recent()
            if len(self._recent) > self.max_keys:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(key)
            # Most requests: within the newest step, under the limit even counting entries that
            # left the window (they are dropped when a step is added or the limit is reached).
            if recent.total < self.limit and now - recent.times[-1] < self.step:
                recent.total += 1
                recent.counts[-1] += 1
                return 0.0
        return self._count(recent, now)

    def _count(self, recent: _Recent, now: float) -> float:
        times, counts = recent.times, recent.counts
        while times and now - times[0] >= WINDOW_SECONDS:
            times.popleft()
            recent.total -= counts.popleft()
        if recent.total >= self.limit:
            wait = WINDOW_SECONDS - (now - times[0])
        else:
            wait = 0.0
            recent.total += 1
            if times and now - times[-1] < self.step:
                counts[-1] += 1
            else:
                times.append(now)
                counts.append(1)
        # Every key in use comes here at least once a step, so the idle ones are looked for here
        # (after the count: this key has an entry in the window now, so it stays).
        if now >= self._sweep_at:
            self._forget_idle(now)
        return wait

    def _forget_idle(self, now: float) -> None:
        """Forget the keys nothing of which is left in the window, least recently seen first,
        up to the first key that still has some: every key after it was seen more recently."""
        self._sweep_at = now + WINDOW_SECONDS
        recent = self._recent
        while recent:
            times = next(iter(recent.values())).times
            if times and now - times[-1] < WINDOW_SECONDS:
                break
            recent.popitem(last=False)

    def __len__(self) -> int:
        """Keys remembered."""
        return len(self._recent)

    def entries(self, key: str) -> int:
        """Entries the key's window holds (0 for a key not remembered)."""
        recent = self._recent.get(key)
        return len(recent.times) if recent is not None else 0


def shared_storage(storage_uri: str) -> StorageTypes:
    """The asyncio ``limits`` storage for a URI; ``limits.errors.ConfigurationError`` for an
    unknown scheme or a missing driver."""
    return storage_from_string(storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}")


class SharedWindow:
    """Moving window in a storage shared by all replicas, through ``limits``."""

    def __init__(self, limit: int, storage_uri: str) -> None:
        self.item = RateLimitItemPerMinute(limit)
        self.limiter = MovingWindowRateLimiter(shared_storage(storage_uri))

    async def retry_after(self, key: str) -> float:
        if await self.limiter.hit(self.item, key):
            return 0.0
        stats = await self.limiter.get_window_stats(self.item, key)
        return max(stats.reset_time - time.time(), 0.001)


def window_for(limit: int, storage_uri: str) -> LocalWindow | SharedWindow:
    return LocalWindow(limit) if storage_uri == "memory://" else SharedWindow(limit, storage_uri)


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, per_minute: int, storage_uri: str, audit: AuditLog) -> None:
        self.app = app
        self.window = window_for(per_minute, storage_uri)
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal = principal_from_scope(scope)
        key = principal.id if principal else f"ip:{client_ip(scope)}"
        wait = await self.window.retry_after(key)
        if not wait:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        self.audit.refused(
            scope,
            "rate_limited",
            "rate_limited",
            principal=key,
            client_ip=client_ip(scope),
            http_request_id=scope.get("state", {}).get("request_id"),
            retry_after_seconds=retry_after,
        )
        await too_many_requests(send, retry_after, f"Rate limit exceeded; retry after {retry_after} s")


async def too_many_requests(send: Send, retry_after: int, message: str) -> None:
    """429 with ``Retry-After`` and a JSON-RPC error (the request's id is not read: it may be unparsed)."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
