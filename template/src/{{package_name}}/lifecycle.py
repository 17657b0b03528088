"""What a feature adds to the served app and to serving (``service.py``): bearer tokens, a
federated peer's gate, the upstreams of a relay. Each hook does nothing unless the feature's
part overrides it, so the common code has no branch per answer."""

from __future__ import annotations

from starlette.types import ASGIApp


class Part:
    # The kinds of caller name (security.policy: CERTIFICATE, TOKEN) this feature gives callers.
    caller_names: frozenset[str] = frozenset()

    def wrap(self, app: ASGIApp, inner: ASGIApp) -> ASGIApp:
        """A layer between the rate limit and the security headers, around ``app`` (the
        rate-limited app); ``inner`` is the app inside the rate limit, for callers that get a
        budget of their own."""
        return app

    async def prepare(self) -> None:
        """Before the first client is served."""

    async def start(self) -> None:
        """Started beside the servers; may return early."""

    async def keep(self) -> None:
        """A background loop, cancelled when serving ends."""

    def ready(self) -> bool:
        """Whether the server may take traffic, as far as this part is concerned."""
        return True

    def certificates_reloaded(self) -> None:
        """After the server's certificate and key were reloaded from disk."""

    async def aclose(self) -> None:
        """After serving ended."""
