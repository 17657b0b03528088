"""OAuth 2.1 resource server, as the MCP authorization specification asks of an MCP server.

``JWKS`` keeps the issuer's signing keys: fetched over HTTPS, cached, fetched again when a
token names a key it does not know (at most once per ``min_refresh`` seconds, so forged key
ids cannot hammer the issuer), and kept when the issuer cannot be reached.
``TokenVerifier`` checks a bearer JWT (allowed asymmetric algorithms only, signature, ``exp``,
``nbf``, ``iat``, exact ``iss``, ``aud`` = this server's resource URI per RFC 8707) and caches
the result until the token expires, so a client's repeated calls cost one hash and one lookup
(at most ``max_tokens`` tokens, the first seen forgotten first; expired ones are dropped once a
minute, when a new token arrives).
``BearerAuth`` is the HTTP layer: 401/403 with ``WWW-Authenticate`` as RFC 6750 and RFC 9728
describe, the Protected Resource Metadata document, certificate-bound tokens (RFC 8705), and
the token removed from the request before anything else sees it (no token passthrough).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2
import jwt
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..lifecycle import Part
from .audit import AuditLog
from .floods import NO_BEARER
from .identity import Principal, certificate_principal, client_ip
from .policy import TOKEN

log = logging.getLogger(__name__)

# Asymmetric algorithms only: an HMAC "key" would be the public JWKS itself (key confusion),
# and "none" is no signature at all.
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
METADATA_PATH = "/.well-known/oauth-protected-resource"
_JWKS_LIMIT_BYTES = 1_048_576
# Where a token names its client, first match wins: RFC 9068, then the IdPs' own spellings.
CLIENT_ID_CLAIMS = ("client_id", "azp", "appid", "cid")
# Until the first key set arrives the server is not ready; it asks the issuer this often.
FIRST_FETCH_RETRY_SECONDS = 2.0
_CACHE_LIMIT = 10_000
# How often the verified-token cache drops expired tokens (on the arrival of a new token).
_CACHE_SWEEP_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified access token says about its caller. Never the token itself."""

    subject: str
    client_id: str | None
    scopes: frozenset[str]
    token_id: str | None = None
    certificate_thumbprint: str | None = None  # RFC 8705 cnf "x5t#S256"


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenPrincipal(Principal):
    """A caller identified by a token, and by its certificate too when it presented one."""

    token: TokenClaims

    def audit_fields(self) -> dict[str, object]:
        """What the audit trail records of this caller: both identities when there are two."""
        return Principal.audit_fields(self) | {
            "token_sub": self.token.subject,
            "token_client_id": self.token.client_id,
            "token_scopes": sorted(self.token.scopes),
            "token_jti": self.token.token_id,
        }


def with_token(certificate: Principal | None, claims: TokenClaims) -> TokenPrincipal:
    """The caller as the certificate (if any) and the token together identify it."""
    token_names = (f"sub:{claims.subject}",) + ((f"client_id:{claims.client_id}",) if claims.client_id else ())
    if certificate is None:
        return TokenPrincipal(
            id=token_names[0],
            names=token_names,
            subject=claims.subject,
            authenticated_by="oauth",
            scopes=claims.scopes,
            token=claims,
        )
    return TokenPrincipal(
        id=certificate.id,
        names=certificate.names + token_names,
        subject=certificate.subject,
        authenticated_by="mtls+oauth",
        certificate_thumbprint=certificate.certificate_thumbprint,
        scopes=claims.scopes,
        token=claims,
    )


class InvalidTokenError(Exception):
    """The token cannot be accepted. The message is safe to send to the client."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token says, and until when the verification holds."""

    claims: TokenClaims
    expires_at: float


class JWKS:
    """The issuer's signing keys by key id."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        issuer: str,
        jwks_uri: str | None,
        *,
        max_age: float,
        min_refresh: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.issuer = issuer
        self.jwks_uri = jwks_uri
        self.max_age = max_age
        self.min_refresh = min_refresh
        self.clock = clock
        self._keys: dict[str, dict[str, Any]] = {}
        self._parsed: dict[tuple[str, str], jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    async def get(self, kid: str, algorithm: str) -> jwt.PyJWK | None:
        """The key with this id for this algorithm, refreshing the set when it is stale or
        lacks the id. None when there is no such key, or it is for another algorithm or key type."""
        now = self.clock()
        stale = self._fetched_at is None or now - self._fetched_at > self.max_age
        if stale or kid not in self._keys:
            await self.refresh()
        parsed = self._parsed.get((kid, algorithm))
        jwk = self._keys.get(kid)
        if parsed is None and jwk is not None and jwk.get("alg", algorithm) == algorithm:
            try:
                parsed = self._parsed[kid, algorithm] = jwt.PyJWK(jwk, algorithm=algorithm)
            except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, ValueError):
                return None  # e.g. an EC key named by an RS256 token, or a malformed JWK
        return parsed

    @property
    def loaded(self) -> bool:
        """Whether a key set has been fetched: until then no token can be verified."""
        return self._fetched_at is not None

    async def load(self, retry_seconds: float = FIRST_FETCH_RETRY_SECONDS) -> None:
        """The first key set, fetched at start-up and tried again every ``retry_seconds`` until
        the issuer answers: the server reports not ready until then (observability.ops_app)."""
        while not self.loaded:
            async with self._lock:
                await self._fetch(self.clock())
            if not self.loaded:
                await asyncio.sleep(retry_seconds)

    async def refresh(self) -> None:
        async with self._lock:  # one fetch at a time; waiters use its result
            now = self.clock()
            if self._attempted_at is not None and now - self._attempted_at < self.min_refresh:
                return
            await self._fetch(now)

    async def _fetch(self, now: float) -> None:
        self._attempted_at = now
        try:
            uri = self.jwks_uri or await self._discover()
            document = await self._get_json(uri)
            keys = {
                str(key["kid"]): key
                for key in document.get("keys", [])
                if isinstance(key, dict) and "kid" in key and key.get("use", "sig") == "sig"
            }
        except (httpx2.HTTPError, ValueError, TypeError, KeyError) as exc:
            # Keep the keys we have: tokens signed with them stay valid while the issuer is down.
            log.warning("cannot refresh the issuer's signing keys", extra={"error": str(exc)[:200]})
            return
        self.jwks_uri = uri
        self._keys, self._parsed = keys, {}
        self._fetched_at = now

    async def _discover(self) -> str:
        """The ``jwks_uri`` from the issuer's RFC 8414 or OpenID Connect metadata."""
        parts = urlsplit(self.issuer)
        candidates = [
            f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path.rstrip('/')}",
            f"{self.issuer.rstrip('/')}/.well-known/openid-configuration",
        ]
        for url in candidates:
            try:
                metadata = await self._get_json(url)
            except (httpx2.HTTPError, ValueError):
                continue
            if metadata.get("issuer") == self.issuer and str(metadata.get("jwks_uri", "")).startswith("https://"):
                return str(metadata["jwks_uri"])
        raise ValueError(f"no authorization server metadata with issuer {self.issuer} and an https jwks_uri")

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self.http.get(url, headers={"accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > _JWKS_LIMIT_BYTES:
            raise ValueError(f"{url}: document larger than {_JWKS_LIMIT_BYTES} bytes")
        document = response.json()
        if not isinstance(document, dict):
            raise TypeError(f"{url}: not a JSON object")
        return document


class TokenVerifier:
    def __init__(
        self,
        jwks: JWKS,
        *,
        issuer: str,
        audience: str,
        algorithms: Iterable[str],
        leeway: float,
        clock: Callable[[], float] = time.time,
        max_tokens: int = _CACHE_LIMIT,
    ) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.algorithms = frozenset(algorithms)
        self.leeway = leeway
        self.clock = clock
        self.max_tokens = max_tokens
        self._grants: dict[bytes, Grant] = {}  # first seen first
        self._sweep_at = 0.0

    async def verify(self, token: str) -> TokenClaims:
        key = hashlib.sha256(token.encode()).digest()
        grant = self._grants.get(key)
        if grant is not None:
            if self.clock() < grant.expires_at:
                return grant.claims
            del self._grants[key]
        grant = await self._verify(token)
        self._remember(key, grant)
        return grant.claims

    def _remember(self, key: bytes, grant: Grant) -> None:
        """Cache a grant: expired ones are dropped at most once per ``_CACHE_SWEEP_SECONDS``,
        and beyond ``max_tokens`` the first seen."""
        grants, now = self._grants, self.clock()
        if now >= self._sweep_at:
            self._sweep_at = now + _CACHE_SWEEP_SECONDS
            self._grants = grants = {k: g for k, g in grants.items() if g.expires_at > now}
        while len(grants) >= self.max_tokens:
            del grants[next(iter(grants))]
        grants[key] = grant

    @property
    def cached(self) -> int:
        """Tokens in the verified-token cache."""
        return len(self._grants)

    async def _verify(self, token: str) -> Grant:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidTokenError("malformed token") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self.algorithms:
            raise InvalidTokenError("signing algorithm not allowed")
        if not isinstance(kid, str):
            raise InvalidTokenError("token names no signing key")
        signing_key = await self.jwks.get(kid, algorithm)
        if signing_key is None:
            raise InvalidTokenError("unknown signing key")
        try:
            claims = jwt.decode(
                token,
                key=signing_key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidTokenError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError("token is not for this resource") from None
        except jwt.InvalidIssuerError:
            raise InvalidTokenError("token from another issuer") from None
        except jwt.InvalidTokenError:
            raise InvalidTokenError("invalid token") from None
        return Grant(_token_claims(claims), expires_at=float(claims["exp"]) + self.leeway)


def _token_claims(claims: dict[str, Any]) -> TokenClaims:
    """RFC 9068 claims, and the spellings some IdPs use instead (``scp``; the client id in
    ``azp`` for OpenID Connect and Keycloak, ``appid`` for Entra ID v1.0, ``cid`` for Okta)."""
    raw_scopes = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw_scopes, str):
        scopes = raw_scopes.split()
    else:
        scopes = [str(scope) for scope in raw_scopes] if isinstance(raw_scopes, list) else []
    cnf = claims.get("cnf")
    thumbprint = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
    client_id = next((claims[name] for name in CLIENT_ID_CLAIMS if claims.get(name) is not None), None)
    return TokenClaims(
        subject=str(claims["sub"]),
        client_id=str(client_id) if client_id is not None else None,
        scopes=frozenset(scopes),
        token_id=str(claims["jti"]) if "jti" in claims else None,
        certificate_thumbprint=str(thumbprint) if thumbprint is not None else None,
    )


def metadata_paths(resource: str) -> frozenset[str]:
    """RFC 9728 serves the document at the well-known path suffixed with the resource's path;
    clients that ask at the bare path get it too."""
    return frozenset({METADATA_PATH, METADATA_PATH + urlsplit(resource).path.rstrip("/")})


def metadata_url(resource: str) -> str:
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{METADATA_PATH}{parts.path.rstrip('/')}"


class BearerAuth:
    """Every request but the metadata document needs a valid bearer token with the required
    scopes. Tool-level scopes are decided by the policy in ToolGuard, which leaves the scope
    it needed in the request state; this layer turns that into the 403 clients step up on."""

    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier,
        *,
        resource: str,
        authorization_servers: list[str],
        required_scopes: Iterable[str],
        scopes_supported: Iterable[str],
        require_certificate: bool,
        audit: AuditLog,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.required_scopes = frozenset(required_scopes)
        self.require_certificate = require_certificate
        self.audit = audit
        self.paths = metadata_paths(resource)
        self.metadata_url = metadata_url(resource)
        self.metadata = json.dumps(
            {
                "resource": resource,
                "authorization_servers": authorization_servers,
                "scopes_supported": sorted(set(scopes_supported) | self.required_scopes),
                "bearer_methods_supported": ["header"],
                "tls_client_certificate_bound_access_tokens": require_certificate,
            }
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.paths:
            await self._metadata(scope, send)
            return
        token = _bearer_token(scope)
        if token is None:
            await self._refuse(scope, send, 401, None, "bearer token required")
            return
        try:
            claims = await self.verifier.verify(token)
        except InvalidTokenError as exc:
            await self._refuse(scope, send, 401, "invalid_token", str(exc))
            return
        certificate = certificate_principal(scope)
        if claims.certificate_thumbprint is not None and (
            certificate is None or certificate.certificate_thumbprint != claims.certificate_thumbprint
        ):
            await self._refuse(scope, send, 401, "invalid_token", "token is bound to another certificate")
            return
        missing = self.required_scopes - claims.scopes
        if missing:
            await self._refuse(scope, send, 403, "insufficient_scope", "token lacks a required scope", missing)
            return
        state = scope.setdefault("state", {})
        state["principal"] = with_token(certificate, claims)
        # No token passthrough: nothing behind this layer (tools included) can read the token.
        scope["headers"] = [(name, value) for name, value in scope["headers"] if name != b"authorization"]
        await self.app(scope, receive, self._step_up(scope, send, state))

    def _step_up(self, scope: Scope, send: Send, state: dict[str, Any]) -> Send:
        """Replace the JSON-RPC error of a tool call refused for a missing scope with 403."""
        replaced = False

        async def send_or_step_up(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and state.get("insufficient_scope"):
                replaced = True
                state["rejection"] = "insufficient_scope"  # counted by the edge; ToolGuard audited the denial
                needed = state["insufficient_scope"]
                await self._respond(send, 403, "insufficient_scope", "the tool needs another scope", needed)
                # The rest of the JSON-RPC error is dropped below.
            elif not replaced:
                await send(message)

        return send_or_step_up

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        status: int,
        error: str | None,
        description: str,
        scopes: Iterable[str] | None = None,
    ) -> None:
        state = scope.setdefault("state", {})
        self.audit.refused(
            scope,
            "auth_failed",
            error or NO_BEARER,  # spends no refusal budget: how OAuth discovery starts
            status=status,
            error=error or NO_BEARER,
            reason=description,
            method=scope["method"],
            path=scope["path"],
            certificate=(principal.id if (principal := certificate_principal(scope)) else None),
            client_ip=client_ip(scope),
            http_request_id=state.get("request_id"),
        )
        await self._respond(send, status, error, description, scopes or self.required_scopes)

    async def _respond(
        self, send: Send, status: int, error: str | None, description: str, scopes: Iterable[str]
    ) -> None:
        params = [f'resource_metadata="{self.metadata_url}"', f'scope="{" ".join(sorted(scopes))}"']
        if error is not None:  # RFC 6750 3.1: no error code when the request carried no token
            params = [f'error="{error}"', f'error_description="{description}"', *params]
        body = json.dumps({"error": error or "unauthorized", "error_description": description}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", ("Bearer " + ", ".join(params)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _metadata(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            headers = [(b"allow", b"GET, HEAD"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 405, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.metadata)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.metadata if scope["method"] == "GET" else b""})


def _bearer_token(scope: Scope) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token and " " not in token:
                return token
            return None
    return None


class BearerTokens(Part):
    """Serving with bearer tokens: ``gate`` (BearerAuth) in front of the rate limit, and the
    issuer's keys, loaded beside the server."""

    caller_names = frozenset({TOKEN})

    def __init__(self, verifier: TokenVerifier, gate: Callable[[ASGIApp], ASGIApp]) -> None:
        self.verifier, self.gate = verifier, gate

    def wrap(self, app: ASGIApp, inner: ASGIApp) -> ASGIApp:
        return self.gate(app)

    async def start(self) -> None:
        await self.verifier.jwks.load()  # ready once the issuer's keys are in

    def ready(self) -> bool:
        """Holding the issuer's keys: a new pod that cannot verify any token takes no traffic,
        while pods that have keys keep theirs through an outage."""
        return self.verifier.jwks.loaded

    async def aclose(self) -> None:
        await self.verifier.jwks.http.aclose()
