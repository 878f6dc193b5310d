"""Network helpers shared by the worker and the viewer."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

LOOPBACK_HOST_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", "[::]", ""})


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _as_host_header(host: str) -> str:
    """How `host` appears in a Host header (IPv6 addresses in brackets), lower case."""
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def allowed_host_names(bind_host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host header names a server bound to `bind_host` accepts (DNS-rebinding defence).

    Bound to loopback: the loopback names, the bind address and `extra`. Bound to one other
    address: that address, the loopback names (local health checks) and `extra`. Bound to every
    interface (`0.0.0.0`, `::`): `extra` and the loopback names, or any name when `extra` is
    empty (such a bind needs a token on the worker and `--allow-remote` on the viewer)."""
    names = [*LOOPBACK_HOST_NAMES, *(_as_host_header(name) for name in extra)]
    if bind_host.strip() in WILDCARD_ADDRESSES:
        return names if extra else ["*"]
    return list(dict.fromkeys([*names, _as_host_header(bind_host)]))
