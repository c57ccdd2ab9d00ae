"""Issue 15, the agent-side doors: tool calls from sandbox code validated like JSON tool calls,
`%agent fix` verified where the model never ran code and without credentials, terminal control
sequences out of every text the analyst's terminal or an export shows, and the SSRF guard on every
IPv6 form that carries an IPv4 address."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from agent_kernel.base_tools import URLNotAllowed, VisitWebpageTool, _non_public

# -- the SSRF guard: IPv6 addresses that carry an IPv4 one ---------------------------------------------

REFUSED = [
    "2002:7f00:1::",                          # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",                      # 6to4 of 169.254.169.254 (cloud metadata)
    "2002:a00:1::",                           # 6to4 of 10.0.0.1
    "::ffff:127.0.0.1",                       # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:0:127.0.0.1",                     # IPv4-translated
    "::127.0.0.1",                            # IPv4-compatible (deprecated)
    "::169.254.169.254",
    "64:ff9b::7f00:1",                        # NAT64 well-known prefix, 127.0.0.1
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::a9fe:a9fe",                   # local-use NAT64
    "2001:0:4136:e378:8000:63bf:80ff:fffe",   # Teredo, client 127.0.0.1 (XORed)
    "2001:0:4136:e378:8000:63bf:5601:5601",   # Teredo, client 169.254.169.254
    "2606:4700::5efe:7f00:1",                 # ISATAP interface id of 127.0.0.1 under a public prefix
    "2606:4700::200:5efe:a9fe:a9fe",          # ISATAP, the universal bit set
    "fc00::1", "fd12:3456::1",                # unique local
    "fe80::1", "fe80::1%eth0",                # link-local
    "fec0::1",                                # site-local (deprecated)
    "ff02::1", "ff0e::1",                     # multicast
    "::", "::1",                              # unspecified, loopback
    "127.0.0.1", "169.254.169.254", "10.1.2.3", "100.64.0.1", "0.0.0.0",
]


@pytest.mark.parametrize("address", REFUSED)
def test_ssrf_guard_refuses_every_non_public_address_also_inside_ipv6(address: str) -> None:
    assert _non_public(address) is not None


def test_ssrf_guard_names_the_ipv4_address_an_ipv6_one_carries() -> None:
    assert _non_public("2002:7f00:1::") == "a loopback address (127.0.0.1, carried inside the IPv6 address)"
    assert "169.254.169.254" in str(_non_public("2001:0:4136:e378:8000:63bf:5601:5601"))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "2606:4700:4700::1111",
                                     "2606:4700::5efe:808:808"])
def test_ssrf_guard_allows_public_addresses(address: str) -> None:
    assert _non_public(address) is None


def test_visit_webpage_refuses_a_host_resolving_to_6to4_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the tool: the name resolves (a stand-in resolver) to 6to4 of 127.0.0.1; no connection is made."""
    asked: list[str] = []

    async def resolve(self: Any, host: str, port: int, **_: Any) -> list[Any]:
        asked.append(host)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:7f00:1::", port, 0, 0))]

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", resolve)
    with pytest.raises(URLNotAllowed, match=r"sneaky\.example \(2002:7f00:1::\) is a loopback address"):
        VisitWebpageTool()(url="http://sneaky.example/")
    assert asked == ["sneaky.example"]
