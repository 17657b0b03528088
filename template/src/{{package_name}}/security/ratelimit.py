"""Per-principal rate limit on MCP requests: 429 with ``Retry-After`` once the budget is spent.

Counters live in the ``limits`` storage named by a URI: ``memory://`` per replica, or
``redis://...`` (install ``limits[redis]``) when replicas must share one budget.
"""

from __future__ import annotations

import json
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Receive, Scope, Send

from .audit import AuditLog
from .identity import principal_from_scope


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, per_minute: int, storage_uri: str, audit: AuditLog) -> None:
        self.app = app
        self.item = RateLimitItemPerMinute(per_minute)
        self.limiter = MovingWindowRateLimiter(storage_from_string(f"async+{storage_uri}"))
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal = principal_from_scope(scope)
        key = principal.id if principal else f"ip:{(scope.get('client') or ('unknown',))[0]}"
        if await self.limiter.hit(self.item, key):
            await self.app(scope, receive, send)
            return
        stats = await self.limiter.get_window_stats(self.item, key)
        scope.setdefault("state", {})["audited"] = True
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        self.audit.record(
            "rate_limited",
            principal=key,
            request_id=scope.get("state", {}).get("request_id"),
            retry_after_seconds=retry_after,
        )
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32000, "message": f"Rate limit exceeded; retry after {retry_after} s"},
            }
        ).encode()
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
