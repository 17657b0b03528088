"""Per-principal rate limit on MCP requests: 429 with ``Retry-After`` once the budget is spent.

A moving window of N requests per 60 s for each principal. ``memory://`` (the default) keeps
it in this process with no thread and no background task; any other storage URI (e.g.
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


class LocalWindow:
    """Exact moving window in this process: each key keeps the times of its last ``limit``
    requests. The least recently seen keys are forgotten beyond ``max_keys``."""

    def __init__(self, limit: int, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self.clock = clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    async def retry_after(self, key: str) -> float:
        """0 when the request may go ahead (and is counted), else seconds until it may."""
        now = self.clock()
        times = self._hits.get(key)
        if times is None:
            times = self._hits[key] = deque(maxlen=self.limit)
            if len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        if len(times) == self.limit and (age := now - times[0]) < WINDOW_SECONDS:
            return WINDOW_SECONDS - age
        times.append(now)
        return 0.0


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
