"""Network helpers shared by the worker and the viewer."""

from __future__ import annotations

import email.utils
import ipaddress
import socket
import time
from collections.abc import Mapping, Sequence

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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (for starting a local worker or server)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _as_host_header(host: str) -> str:
    """How `host` appears in a Host header (IPv6 addresses in brackets), lower case."""
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def local_host_names() -> list[str]:
    """This machine's host name and the addresses of its network interfaces (Host header form)."""
    import psutil

    names = [socket.gethostname(), socket.getfqdn()]
    for addresses in psutil.net_if_addrs().values():
        names += [a.address.split("%")[0] for a in addresses
                  if a.family in (socket.AF_INET, socket.AF_INET6)]
    return [_as_host_header(name) for name in names if name]


def allowed_host_names(bind_host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host header names a server bound to `bind_host` accepts (DNS-rebinding defence).

    Always the loopback names and `extra` (names other machines use: `--allowed-host`). Bound
    to one address: that address too. Bound to every interface (`0.0.0.0`, `::`): this
    machine's host name and interface addresses too. Never any name: a page that rebinds its
    own name to this machine always gets 400."""
    names = [*LOOPBACK_HOST_NAMES, *(_as_host_header(name) for name in extra)]
    if bind_host.strip() in WILDCARD_ADDRESSES:
        names += local_host_names()
    else:
        names.append(_as_host_header(bind_host))
    return list(dict.fromkeys(names))


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date)."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
