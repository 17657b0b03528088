"""What the settings of a relay (the hub, a federated peer) share: names and name=value lists."""

from __future__ import annotations

import re

from .base import https_url

# A zone's or peer's name: it prefixes tool names and names a Kubernetes namespace.
NAME = re.compile(r"[a-z][a-z0-9]{0,14}")


def name_value_pairs(value: str) -> dict[str, str]:
    """``"a=x, b=y"`` (an environment variable) as ``{"a": "x", "b": "y"}``."""
    pairs = [item.partition("=") for item in value.split(",") if item.strip()]
    if any(not separator for _, separator, _ in pairs):
        raise ValueError(f"use name=value pairs, comma-separated; got {value!r}")
    return {name.strip(): item.strip() for name, _, item in pairs}


def https_urls(urls: dict[str, str], kind: str) -> dict[str, str]:
    """Each ``kind`` (zone, peer) named as ``NAME`` allows, at an https:// URL without query or fragment."""
    for name, url in urls.items():
        if not NAME.fullmatch(name):
            raise ValueError(f"{kind} {name!r} must be lowercase letters and digits, starting with a letter")
        if not https_url(url):
            raise ValueError(f"the URL of {kind} {name} must be https:// without query or fragment; got {url!r}")
    return urls
