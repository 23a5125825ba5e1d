"""rlkit.addresses: IPv6 literals are bracketed in every host:port rlkit builds."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from urllib.parse import urlparse

import pytest

from rlkit.addresses import (bare_host, format_host_port, free_port, has_ipv6_loopback, is_ipv6,
                                         local_ip, split_host_port, tcp_init_method)


@pytest.mark.parametrize("host, expected", [
    ("10.0.0.1", "10.0.0.1:29500"),
    ("node-7.cluster", "node-7.cluster:29500"),
    ("::1", "[::1]:29500"),
    ("[::1]", "[::1]:29500"),  # already bracketed: not twice
    ("fd00:0:0:1::2", "[fd00:0:0:1::2]:29500"),
    ("fe80::1%eth0", "[fe80::1%eth0]:29500"),  # link-local with a zone
    ("::ffff:10.0.0.1", "[::ffff:10.0.0.1]:29500"),  # IPv4-mapped IPv6 is IPv6
])
def test_format_host_port(host, expected):
    assert format_host_port(host, 29500) == expected
    assert split_host_port(expected) == (bare_host(host), 29500)  # round trip


def test_tcp_init_method_parses_back():
    for host in ("::1", "fd00::2", "10.1.2.3", "localhost"):
        url = urlparse(tcp_init_method(host, 1234))  # how torch.distributed reads it
        assert (url.scheme, url.hostname, url.port) == ("tcp", host, 1234)


@pytest.mark.parametrize("bad", [-1, 65536, "x", None, True])
def test_bad_port(bad):
    with pytest.raises(ValueError, match="port must be"):
        format_host_port("::1", bad)


def test_split_refuses_ambiguous_ipv6():
    with pytest.raises(ValueError, match=r"needs brackets, e.g. '\[fd00::2\]:6379'"):
        split_host_port("fd00::2:6379")
    with pytest.raises(ValueError, match="expected 'host:port'"):
        split_host_port("node-1")


def test_is_ipv6():
    assert is_ipv6("::") and is_ipv6("[2001:db8::1]") and not is_ipv6("localhost") and not is_ipv6("1.2.3.4")


def test_local_ip_and_free_port_v4():
    ip = local_ip()
    assert not is_ipv6(ip)
    port = free_port(ip)
    import socket

    with socket.socket() as s:  # the port is free: it binds
        s.bind((ip, port))


def test_free_port_v6():
    ok, why = has_ipv6_loopback()
    if not ok:
        pytest.skip(why)
    assert 0 < free_port("::1") < 65536 and 0 < free_port("[::1]") < 65536
    assert is_ipv6(local_ip(ipv6=True))


RANK = textwrap.dedent("""
    import sys, datetime, torch, torch.distributed as dist
    from rlkit.addresses import tcp_init_method
    rank, port = int(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo", init_method=tcp_init_method("::1", port), rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t)
    dist.barrier()
    print("sum", t.item(), flush=True)
    dist.destroy_process_group()
""")


def test_gloo_rendezvous_over_ipv6_loopback():
    """Two processes meet at tcp://[::1]:port and all-reduce over gloo."""
    ok, why = has_ipv6_loopback()
    if not ok:
        pytest.skip(f"no IPv6 loopback on this machine: {why}")
    port = free_port("::1")
    procs = [subprocess.Popen([sys.executable, "-c", RANK, str(r), str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "sum 3.0" in out
