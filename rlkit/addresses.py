"""Network addresses for Ray, ``torch.distributed`` and SGLang, IPv4 and IPv6 alike.

Every ``host:port`` string rlkit builds goes through :func:`format_host_port`, which brackets an
IPv6 literal (``[fd00::1]:29500``) as RFC 3986 asks: without the brackets ``fd00::1:29500`` is
itself a valid IPv6 address, and Ray's ``address``, ``torch.distributed``'s ``tcp://`` init method
and SGLang's ``dist_init_addr`` would read the port as part of the host (or fail to parse).

Bare hosts (``MASTER_ADDR``, ``TCPStore``, ``socket.bind``) are never bracketed: use
:func:`bare_host` to undo a bracket someone wrote in an environment variable.

>>> from rlkit.addresses import format_host_port, tcp_init_method, split_host_port
>>> format_host_port("10.0.0.2", 29500), format_host_port("fd00::2", 29500)
('10.0.0.2:29500', '[fd00::2]:29500')
>>> tcp_init_method("::1", 1234), tcp_init_method("node-3", 1234)
('tcp://[::1]:1234', 'tcp://node-3:1234')
>>> split_host_port("[fd00::2]:6379"), split_host_port("10.0.0.2:6379")
(('fd00::2', 6379), ('10.0.0.2', 6379))

:func:`local_ip` and :func:`free_port` find the rendezvous address of rank 0 (this machine's
address other nodes can reach, and a port nobody listens on yet). Pure: only the standard library.
"""
from __future__ import annotations

import ipaddress
import socket

__all__ = ["is_ipv6", "bare_host", "format_host_port", "tcp_init_method", "split_host_port", "local_ip",
           "free_port", "has_ipv6_loopback"]


def bare_host(host: str) -> str:
    """``host`` without surrounding brackets (``[::1]`` -> ``::1``); anything else unchanged.

    >>> from rlkit.addresses import bare_host
    >>> bare_host("[fe80::1%eth0]"), bare_host("10.0.0.1")
    ('fe80::1%eth0', '10.0.0.1')
    """
    host = str(host).strip()
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host


def is_ipv6(host: str) -> bool:
    """True for an IPv6 literal, bracketed or not, with or without a zone (``fe80::1%eth0``).
    Host names are not resolved: ``localhost`` is False even where it maps to ``::1``.

    >>> from rlkit.addresses import is_ipv6
    >>> is_ipv6("::1"), is_ipv6("[fd00::2]"), is_ipv6("fe80::1%eth0"), is_ipv6("10.0.0.1"), is_ipv6("node-1")
    (True, True, True, False, False)
    """
    host = bare_host(host)
    try:
        return isinstance(ipaddress.ip_address(host.split("%", 1)[0]), ipaddress.IPv6Address)
    except ValueError:
        return False


def _port(port) -> int:
    if isinstance(port, bool) or not isinstance(port, (int, str)):
        raise ValueError(f"port must be an int 0..65535, got {port!r}")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"port must be an int 0..65535, got {port!r}") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"port must be an int 0..65535, got {port!r}")
    return p


def format_host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 literal in brackets (``[::1]:80``); an already bracketed host is
    not bracketed twice.

    >>> from rlkit.addresses import format_host_port
    >>> format_host_port("[::1]", "80"), format_host_port("fe80::1%eth0", 80)
    ('[::1]:80', '[fe80::1%eth0]:80')
    """
    if not str(host).strip():
        raise ValueError("empty host")
    host = bare_host(host)
    p = _port(port)
    return f"[{host}]:{p}" if is_ipv6(host) else f"{host}:{p}"


def tcp_init_method(host: str, port: int | str) -> str:
    """``torch.distributed.init_process_group(init_method=...)`` for a TCP rendezvous at ``host:port``.
    torch parses the URL with ``urllib``, which reads the bracketed IPv6 form."""
    return "tcp://" + format_host_port(host, port)


def split_host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``host:port`` or ``[ipv6]:port``; raises ValueError naming the address for
    an unbracketed IPv6 literal (ambiguous: is the last group the port?).

    >>> from rlkit.addresses import split_host_port
    >>> split_host_port("fd00::2:6379")
    Traceback (most recent call last):
    ...
    ValueError: 'fd00::2:6379': an IPv6 address with a port needs brackets, e.g. '[fd00::2]:6379'
    """
    a = str(address).strip()
    if a.startswith("["):
        host, sep, rest = a[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{address!r}: expected '[ipv6]:port'")
        return host, _port(rest[1:])
    if a.count(":") > 1:
        host, _, port = a.rpartition(":")
        raise ValueError(f"{address!r}: an IPv6 address with a port needs brackets, e.g. '[{host}]:{port}'")
    host, sep, port = a.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r}: expected 'host:port'")
    return host, _port(port)


def local_ip(ipv6: bool = False) -> str:
    """This machine's address that other nodes can reach: the source address the kernel picks for
    an outgoing UDP socket (no packet is sent), then the host name's address, then the loopback
    (``127.0.0.1`` / ``::1``) when the machine has no route at all (single-node runs).

    Inside a Ray worker prefer ``ray.util.get_node_ip_address()``, the address Ray itself uses.
    """
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    probe = "2001:db8::1" if ipv6 else "192.0.2.1"  # documentation ranges (RFC 3849 / 5737): never routed for real
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            ip = s.getsockname()[0]
            if ip and ip not in ("0.0.0.0", "::"):
                return ip.split("%", 1)[0]
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, family, socket.SOCK_STREAM):
            ip = info[4][0]
            if ip:
                return ip
    except OSError:
        pass
    return "::1" if ipv6 else "127.0.0.1"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (IPv4 or IPv6 literal, or a name), found by binding port 0.
    Another process may take it before the caller binds it; rendezvous code retries on a clash."""
    host = bare_host(host)
    family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
    if not is_ipv6(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:  # a host name: bind where it resolves
            family = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return int(s.getsockname()[1])


def has_ipv6_loopback() -> tuple[bool, str]:
    """``(True, "")`` when a TCP socket can listen on ``::1``, else ``(False, why)``."""
    if not socket.has_ipv6:
        return False, "this Python was built without IPv6 support"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
            s.listen(1)
    except OSError as e:
        return False, f"cannot listen on [::1]: {e}"
    return True, ""
