"""URLs as they may be written to disk."""

from __future__ import annotations

import urllib.parse


def public_url(url: str) -> str:
    """`url` without credentials (user:password@) or query string, for names written to disk."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
