"""Where a webhook may go: only to globally routable addresses, unless the operator allows a network.

A webhook URL is checked when the task is created and again at every delivery. The host is resolved
(names, and the odd spellings of addresses the resolver accepts: ``127.1``, ``2130706433``,
``0x7f000001``) and *every* address it resolves to must be public (``ipaddress`` ``is_global``; for
IPv6 forms that carry an IPv4 address — mapped, 6to4, Teredo, NAT64 — the IPv4 address must be public
too) or inside ``webhook_allow_cidrs``. The delivery then connects to the address that was checked,
not to the name (no second lookup, so DNS rebinding cannot swap in an inside address), while the Host
header and the TLS server name stay those of the URL.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
getaddrinfo = socket.getaddrinfo  # the resolver (a module attribute, so tests can stand in for DNS)


class WebhookRefused(ValueError):
    """The URL may not be used as a webhook; the message says why (it names no internals)."""


@dataclass(frozen=True)
class Target:
    """A checked webhook: connect to ``url`` (host = the checked address), send ``host_header``."""

    url: httpx.URL
    host_header: str
    address: IPAddress
    sni_hostname: str | None  # the name TLS must present and verify (https with a host name)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if any(ip in net for net in NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _why_not_public(ip: IPAddress) -> str | None:
    """None if the address is globally routable, else what it is."""
    inner = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    for addr in (ip, inner):
        if addr is None:
            continue
        for kind in ("loopback", "private", "link_local", "multicast", "unspecified", "reserved"):
            if getattr(addr, f"is_{kind}"):
                return kind.replace("_", "-")
        if not addr.is_global:
            return "not globally routable"
    return None


def check_address(ip: IPAddress, allowed: list[Network]) -> str | None:
    """None if a webhook may connect to ``ip``, else the reason it may not."""
    if any(ip.version == net.version and ip in net for net in allowed):
        return None
    return _why_not_public(ip)


def resolve_target(url: str, allowed: list[Network]) -> Target:
    """Resolve and check the URL's host; the Target pins the first address (all of them were checked)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise WebhookRefused("not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise WebhookRefused("must be an absolute http:// or https:// URL")
    host, port = parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise WebhookRefused(f"its host {host!r} does not resolve") from None
    addresses: list[IPAddress] = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise WebhookRefused(f"its host {host!r} does not resolve")
    for ip in addresses:
        why = check_address(ip, allowed)
        if why:
            raise WebhookRefused(f"its host {host!r} is {ip}, a {why} address; webhooks go to public addresses "
                                 "only (an operator can allow networks with webhook_allow_cidrs)")
    ip = addresses[0]
    literal = _is_ip_literal(host)
    return Target(url=parsed.copy_with(host=str(ip).split("%")[0] if ip.version == 6 else str(ip)),
                  host_header=parsed.netloc.decode("ascii"), address=ip,
                  sni_hostname=None if literal or parsed.scheme != "https" else host)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True
