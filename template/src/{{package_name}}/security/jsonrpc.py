"""JSON-RPC hygiene: every malformed or refused message gets the code JSON-RPC 2.0 and MCP give
it, a short message in this server's words, and an audit event; no library text reaches a caller.

``JsonRpcGate`` reads each ``POST /mcp`` body before the SDK does and refuses, with HTTP 400:
a body that is not JSON (-32700); a batch (-32600: MCP 2025-06-18 removed JSON-RPC batching);
a message that is no object, has no ``"jsonrpc": "2.0"``, no string ``method`` or an ``id`` that
is not a string or an integer (-32600; MCP forbids null ids, JSON-RPC fractional ones); a
request method sent without an id, which the SDK would run as a notification and answer 202
(-32600); ``params`` that are not an object (-32602). The SDK would answer some of these with
pydantic's validation text, others by running the tool and answering nothing.
``JsonRpcErrors`` (SDK middleware) rewrites the errors of the SDK's handlers: its code 0 for
an uncaught exception becomes -32603, pydantic text and input echoes become our messages, and
an unknown method is audited and counted.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability import Metrics
from .audit import AuditLog
from .identity import client_ip, principal_from_scope, request_scope

log = logging.getLogger(__name__)

MESSAGES = {
    PARSE_ERROR: "Parse error: the body is not JSON",
    INVALID_REQUEST: "Invalid request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}
# Per method, the message for the SDK's INVALID_PARAMS (its own names the input back).
_INVALID_PARAMS_BY_METHOD = {
    "prompts/get": "Unknown prompt or invalid prompt arguments",
    "resources/read": "Unknown resource",
}
_METHOD_LIMIT = 64  # an unknown method is logged cut to this


class _DuplicateKeyError(ValueError):
    pass


class RefusedError(MCPError):
    """An error this server raised in its own words: ``JsonRpcErrors`` passes it on unchanged."""


def _error_body(code: int, message: str, request_id: object = None) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}).encode()


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _DuplicateKeyError("duplicate key")
    return result


def _reject_constant(_: str) -> None:
    raise ValueError("not JSON")  # NaN, Infinity: Python accepts them, JSON does not


def check(body: bytes) -> tuple[int, str, str, object] | None:
    """None for a message the SDK may have; else (code, message, audit reason, id to answer)."""
    try:
        message = json.loads(body, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except _DuplicateKeyError:  # two readers could take different values: ambiguous
        return INVALID_REQUEST, "Invalid request: a key appears twice in one object", "duplicate_key", None
    except (ValueError, RecursionError):
        return PARSE_ERROR, MESSAGES[PARSE_ERROR], "parse_error", None
    if isinstance(message, list):
        return INVALID_REQUEST, "Invalid request: batches are not supported", "batch", None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return INVALID_REQUEST, "Invalid request: not a JSON-RPC 2.0 message", "invalid_request", None
    if "method" not in message:
        if "id" in message and ("result" in message) != ("error" in message):
            return None  # a response to the server: the SDK takes it
        return INVALID_REQUEST, "Invalid request: method is missing", "missing_method", None
    method = message["method"]
    if not isinstance(method, str) or not method:
        return INVALID_REQUEST, "Invalid request: method must be a string", "invalid_request", None
    if "id" in message:
        request_id = message["id"]
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
            return INVALID_REQUEST, "Invalid request: id must be a string or an integer", "invalid_id", None
    elif not method.startswith("notifications/"):
        return INVALID_REQUEST, "Invalid request: a request needs an id", "request_without_id", None
    else:
        request_id = None
    if "params" in message and not isinstance(message["params"], dict):
        return INVALID_PARAMS, "Invalid params: params must be an object", "invalid_params", request_id
    return None


# What the gate answers: HTTP status, JSON-RPC code, message, audit reason, id to answer.
_Refusal = tuple[int, int, str, str, object]
_TOO_LARGE: _Refusal = (413, INVALID_REQUEST, "Request body too large", "body_too_large", None)


class JsonRpcGate:
    """Checks every ``POST /mcp`` body (at most ``max_body`` bytes, else 413) before the SDK.
    A request the SDK's Host and Origin checks refuse goes to the SDK, for its 421/403, whatever
    its body."""

    def __init__(
        self, app: ASGIApp, *, path: str, max_body: int, security: TransportSecuritySettings, metrics: Metrics
    ) -> None:
        self.app = app
        self.security = TransportSecurityMiddleware(security)
        self.path = path
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._body(receive)
        except _DisconnectedError:
            return  # the client left, or its body was too slow (security.connections): nobody to answer
        if body is None:
            refusal: _Refusal | None = _TOO_LARGE
        else:
            checked = check(body)
            refusal = None if checked is None else (400, *checked)
        # Only a request about to be refused pays for the SDK's Host and Origin checks here (the
        # SDK runs them again on every request it gets): one they fail is the SDK's to answer.
        if refusal is not None and await self.security.validate_request(Request(scope), is_post=True) is None:
            await self._refuse(scope, send, *refusal)
            return
        body = body or b""
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _DisconnectedError
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _refuse(
        self, scope: Scope, send: Send, status: int, code: int, text: str, reason: str, request_id: object
    ) -> None:
        # The HTTP edge (security.headers) writes the audit event with this reason.
        scope.setdefault("state", {})["rejection"] = reason
        self.metrics.record_jsonrpc_refusal(reason)
        body = _error_body(code, text, request_id)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _DisconnectedError(Exception):
    """The connection ended before the whole body came."""


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";")[0].strip().lower() == b"application/json")
    return False


def _caused_by_validation(exc: BaseException) -> bool:
    """Whether pydantic's validation of the caller's arguments is behind ``exc``."""
    seen: BaseException | None = exc
    for _ in range(8):  # the SDK wraps two or three times; a loop in the chain ends here
        if seen is None:
            return False
        if isinstance(seen, ValidationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class JsonRpcErrors:
    """SDK middleware, outside ``ToolGuard``: the SDK's errors in this server's words."""

    def __init__(self, server: MCPServer, audit: AuditLog, metrics: Metrics) -> None:
        self.server = server
        self.audit = audit
        self.metrics = metrics

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        try:
            return await call_next(ctx)
        except RefusedError:
            raise
        except MCPError as exc:
            code = exc.error.code
            if code == METHOD_NOT_FOUND:
                self._unknown_method(ctx)
            if code not in MESSAGES:
                return await self._internal(ctx, exc)
            text = MESSAGES[code]
            if code == INVALID_PARAMS:
                text = _INVALID_PARAMS_BY_METHOD.get(ctx.method, text)
            raise RefusedError(code, text) from None
        except ValidationError:
            text = _INVALID_PARAMS_BY_METHOD.get(ctx.method, MESSAGES[INVALID_PARAMS])
            raise RefusedError(INVALID_PARAMS, text) from None
        except Exception as exc:  # noqa: BLE001 - the SDK would answer code 0 with the exception's text
            if ctx.method in _INVALID_PARAMS_BY_METHOD and (
                _caused_by_validation(exc) or await self._unknown_name(ctx)
            ):
                raise RefusedError(INVALID_PARAMS, _INVALID_PARAMS_BY_METHOD[ctx.method]) from None
            return await self._internal(ctx, exc)

    async def _internal(self, ctx: ServerRequestContext[Any, Any], exc: Exception) -> HandlerResult:
        log.error("handler for %s failed: %s", ctx.method[:_METHOD_LIMIT], type(exc).__name__, exc_info=exc)
        raise RefusedError(INTERNAL_ERROR, MESSAGES[INTERNAL_ERROR]) from None

    async def _unknown_name(self, ctx: ServerRequestContext[Any, Any]) -> bool:
        """Whether a prompts/get or resources/read names nothing this server has."""
        params = ctx.params or {}
        if ctx.method == "prompts/get":
            return str(params.get("name")) not in {prompt.name for prompt in await self.server.list_prompts()}
        return str(params.get("uri")) not in {str(resource.uri) for resource in await self.server.list_resources()}

    def _unknown_method(self, ctx: ServerRequestContext[Any, Any]) -> None:
        scope = request_scope(ctx.request)
        principal = principal_from_scope(scope)
        state = scope.setdefault("state", {})
        self.audit.refused(
            scope,
            "request_rejected",
            "unknown_method",
            reason="unknown_method",
            method=ctx.method[:_METHOD_LIMIT],
            principal=principal.id if principal else None,
            client_ip=client_ip(scope),
            request_id=ctx.request_id,
            http_request_id=state.get("request_id"),
        )
        self.metrics.record_jsonrpc_refusal("unknown_method")
