"""Per-tool authorization from a TOML policy file. Default deny.

A caller may use a tool when one ``[[allow]]`` rule matches one of the caller's names and
the tool's name. Patterns are shell-style (``*``, ``?``, ``[...]``); ``*`` also crosses ``/``.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from .identity import Principal

Pattern = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]
_CACHE_LIMIT = 10_000


class PolicyError(Exception):
    """The policy file cannot be used; the message names the file and the faulty entry."""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    principals: list[Pattern] = Field(min_length=1)
    tools: list[Pattern] = Field(min_length=1)


class PolicyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    allow: list[Rule] = Field(default_factory=list)


def _compile(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns))


class Policy:
    def __init__(self, document: PolicyDocument) -> None:
        self.rules = [(_compile(rule.principals), _compile(rule.tools)) for rule in document.allow]
        self._tool_patterns = [pattern for rule in document.allow for pattern in rule.tools]
        self._decisions: dict[tuple[tuple[str, ...], str], bool] = {}

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
            return cls(PolicyDocument.model_validate(raw))
        except OSError as exc:
            raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{path}: not valid TOML: {exc}") from None
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise PolicyError(f"{path}: {where}: {error['msg']}") from None

    def allows(self, principal: Principal | None, tool: str) -> bool:
        if principal is None:
            return False
        key = (principal.names, tool)
        decision = self._decisions.get(key)
        if decision is None:
            decision = any(
                tools.fullmatch(tool) and any(principals.fullmatch(name) for name in principal.names)
                for principals, tools in self.rules
            )
            if len(self._decisions) >= _CACHE_LIMIT:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def unmatched_patterns(self, tool_names: Iterable[str]) -> list[str]:
        """Tool patterns in the policy that match no registered tool: usually a typo."""
        names = list(tool_names)
        return [pattern for pattern in self._tool_patterns if not fnmatch.filter(names, pattern)]
