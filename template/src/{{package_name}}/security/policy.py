"""Per-tool authorization from a TOML policy file. Default deny.

A caller may use a tool when one ``[[allow]]`` rule matches one of the caller's names and
the tool's name, and the caller's access token carries every scope the rule lists (a rule
without ``scopes`` needs none; a caller known by certificate alone has none). Patterns are
shell-style (``*``, ``?``, ``[...]``); ``*`` also crosses ``/``. When only scopes are
missing, the decision names them (for the audit trail); what an OAuth client is told to ask
for (step-up) is ``grantable_scopes``, the same whatever tool it asked for.

Decisions are cached per caller and tool, in tables bounded by size and by age: at most
``_CACHE_LIMIT`` entries, all forgotten when full or ``_CACHE_SECONDS`` old (looked at on a
miss only); a tool name longer than MCP allows (a caller's invention) is decided uncached.

The policy is one file and the files of its include directory, read at start-up: for
``config/policy.toml``, every ``config/policy.d/*.toml`` (the directory named after the file's
stem, plus ``.d``), in sorted order after the main file. They are the organisation's own (an
organisation layer writes them; the template never does): the same ``[[allow]]`` schema, the
same checks, each error naming its own file and entry. Rules only add grants.

At start-up, ``check_callers`` refuses a principal pattern that no caller of this server can
ever match: a token name (``sub:``, ``client_id:``) where no bearer token is taken, or a
certificate name (``spiffe://...``, ``dns:``, ``cn:``) where no client presents a certificate.
Such a rule is left over from another ``auth_mode`` (``copier update --data auth_mode=...``)
and would silently grant nobody.
"""

from __future__ import annotations

import fnmatch
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..errors import ConfigError
from .identity import Principal

Pattern = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]
# RFC 6749 section 3.3 scope-token characters.
Scope = Annotated[str, StringConstraints(pattern=r"^[\x21\x23-\x5b\x5d-\x7e]+$")]
_CACHE_LIMIT = 10_000
_CACHE_SECONDS = 3600.0
_CACHED_TOOL_NAME = 128  # MCP's longest tool name
# The kinds of name a caller can have (security.identity.Principal.names).
CERTIFICATE, TOKEN = "certificate", "token"
_TOKEN_PREFIXES = ("sub:", "client_id:")
_CERTIFICATE_PREFIXES = ("dns:", "cn:")
_WILDCARDS = re.compile(r"[*?\[]")


class PolicyError(ConfigError):
    """The policy file cannot be used; the message names the file and the faulty entry."""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    principals: list[Pattern] = Field(min_length=1)
    tools: list[Pattern] = Field(min_length=1)
    scopes: list[Scope] = Field(default_factory=list)


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: list[Rule] = Field(default_factory=list)


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # When not allowed only for want of scopes: the scopes one matching rule needs.
    missing_scopes: tuple[str, ...] = ()


ALLOW, DENY = Decision(allowed=True), Decision(allowed=False)


def name_kind(pattern: str) -> str | None:
    """The kind of name a pattern can only match, from its literal start; None: any kind."""
    literal = _WILDCARDS.split(pattern, maxsplit=1)[0]
    if literal.startswith(_TOKEN_PREFIXES):
        return TOKEN
    if literal.startswith(_CERTIFICATE_PREFIXES) or "://" in literal:
        return CERTIFICATE
    return None


_HOW_TO_NAME = {
    TOKEN: "this server takes no bearer tokens: name callers by certificate (spiffe://..., dns:<name>, cn:<name>)",
    CERTIFICATE: "no client presents a certificate to this server: name callers by token (sub:<sub>, client_id:<id>)",
}


def include_dir(path: Path) -> Path:
    """The policy file's include directory: ``policy.d`` beside ``policy.toml``."""
    return path.with_name(f"{path.stem}.d")


def _read(path: Path) -> PolicyDocument:
    try:
        return PolicyDocument.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise PolicyError(f"{path}: {where}: {error['msg']}") from None


class Policy:
    def __init__(
        self,
        document: PolicyDocument,
        source: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        origins: Sequence[tuple[Path | None, int]] | None = None,
    ) -> None:
        self.document, self.source, self.clock = document, source, clock
        # Where each rule was written (file, index in that file's allow), for error messages.
        self.origins = list(origins) if origins is not None else [(source, n) for n in range(len(document.allow))]
        self.rules = [
            (_compile(rule.principals), _compile(rule.tools), frozenset(rule.scopes)) for rule in document.allow
        ]
        self._tool_patterns = [pattern for rule in document.allow for pattern in rule.tools]
        self.scopes = sorted({scope for rule in document.allow for scope in rule.scopes})
        self._decisions: dict[tuple[tuple[str, ...], frozenset[str], str], Decision] = {}
        self._grantable: dict[tuple[tuple[str, ...], frozenset[str]], tuple[str, ...]] = {}
        self._forget_at = clock() + _CACHE_SECONDS

    @classmethod
    def load(cls, path: Path) -> Policy:
        """``path``, then each ``*.toml`` of its include directory in sorted order."""
        files = [path, *sorted(f for f in include_dir(path).glob("*.toml") if not f.name.startswith("."))]
        rules: list[Rule] = []
        origins: list[tuple[Path | None, int]] = []
        for file in files:
            document = _read(file)
            rules += document.allow
            origins += [(file, number) for number in range(len(document.allow))]
        return cls(PolicyDocument(allow=rules), path, origins=origins)

    def check_callers(self, kinds: Iterable[str]) -> None:
        """Refuse a principal pattern only names of another kind than ``kinds`` could match."""
        possible = frozenset(kinds)
        for (source, number), rule in zip(self.origins, self.document.allow, strict=True):
            for pattern in rule.principals:
                kind = name_kind(pattern)
                if kind is not None and kind not in possible:
                    raise PolicyError(
                        f"{source}: allow.{number}.principals: {pattern!r} can never match: {_HOW_TO_NAME[kind]}"
                    )

    def allows(self, principal: Principal | None, tool: str) -> bool:
        return self.decide(principal, tool).allowed

    def decide(self, principal: Principal | None, tool: str) -> Decision:
        if principal is None:
            return DENY
        key = (principal.names, principal.scopes, tool)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(principal.names, principal.scopes, tool)
            if len(tool) <= _CACHED_TOOL_NAME:
                self._make_room(self._decisions)
                self._decisions[key] = decision
        return decision

    def _make_room(self, cache: dict[Any, Any]) -> None:
        """Forget every cached answer when they are ``_CACHE_SECONDS`` old, or this cache's when it is full."""
        if self.clock() >= self._forget_at:
            self._decisions.clear()
            self._grantable.clear()
            self._forget_at = self.clock() + _CACHE_SECONDS
        elif len(cache) >= _CACHE_LIMIT:
            cache.clear()

    def cached(self) -> int:
        """Answers cached."""
        return len(self._decisions) + len(self._grantable)

    def _decide(self, names: tuple[str, ...], granted: frozenset[str], tool: str) -> Decision:
        fewest_missing: frozenset[str] | None = None
        for principals, tools, scopes in self.rules:
            if tools.fullmatch(tool) and any(principals.fullmatch(name) for name in names):
                if scopes <= granted:
                    return ALLOW
                missing = scopes - granted
                if fewest_missing is None or len(missing) < len(fewest_missing):
                    fewest_missing = missing
        if fewest_missing is None:
            return DENY
        return Decision(allowed=False, missing_scopes=tuple(sorted(fewest_missing)))

    def grantable_scopes(self, principal: Principal | None) -> tuple[str, ...]:
        """The scopes the caller lacks that some rule matching its names requires: what a
        wider token could let it do. The answer depends on the caller only, not on a tool."""
        if principal is None:
            return ()
        key = (principal.names, principal.scopes)
        grantable = self._grantable.get(key)
        if grantable is None:
            lacking: set[str] = set()
            for principals, _tools, scopes in self.rules:
                if any(principals.fullmatch(name) for name in principal.names):
                    lacking |= scopes - principal.scopes
            grantable = tuple(sorted(lacking))
            self._make_room(self._grantable)
            self._grantable[key] = grantable
        return grantable

    def unmatched_patterns(self, tool_names: Iterable[str]) -> list[str]:
        """Tool patterns in the policy that match no registered tool: usually a typo."""
        names = list(tool_names)
        return [pattern for pattern in self._tool_patterns if not fnmatch.filter(names, pattern)]
