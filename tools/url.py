"""URLs as they may be written to disk or printed: without credentials."""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
# Query parameter names whose values are credentials (api_key, access_token, X-Amz-Signature, ...).
_SECRET_NAME = r"[^\s=&#?]*(?:key|token|secret|passw|pwd|auth(?!or)|sig|credential|session)[^\s=&#?]*"
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#\"'<>]+@")  # up to the last @
_SECRET_QUERY_VALUE = re.compile(rf"(?i)([?&]{_SECRET_NAME}=)[^\s&#\"'<>]+")


def public_url(url: str) -> str:
    """`url` without credentials (user:password@) or query string, for names written to disk."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def redact_url(text: str) -> str:
    """`text` (a URL, or any text with URLs in it) with every `user:password@` and the value of
    every secret-looking query parameter (`key`, `api_key`, `token`, ...) replaced by `***`;
    other parts, and text without credentials, are unchanged."""
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    return _SECRET_QUERY_VALUE.sub(rf"\1{MASK}", text)


def split_query(url: str) -> tuple[str, dict[str, str]]:
    """`url` without its query string, and the query's parameters (SDKs that append paths to a
    base URL need the query passed separately)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url, {}
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", parts.fragment))
    return base, dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
