"""Which URLs and addresses the fetcher may contact (SSRF guard).

`check_url` is pure (no DNS) so the API can answer 422 synchronously; `resolve_target` does the DNS
lookup and refuses any non-public answer. The fetcher connects to exactly the address returned here,
so what was checked is what gets contacted.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import idna

from app.core.models import ErrorType, ScanError
from app.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
BLOCKED_MESSAGE = "destination is not allowed"

# Ranges that are never a public web server. `ipaddress.is_global` covers most of them, but its
# tables changed between 3.11 patch releases (and it calls multicast "global"), so the policy is
# spelled out here and `is_global` is only a second opinion.
_V4_BLOCKED = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",
        "100.64.0.0/10",  # CGNAT (also Alibaba's metadata 100.100.100.200)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments (Oracle metadata 192.0.0.192)
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes broadcast 255.255.255.255
    )
)
_V6_BLOCKED = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, includes Teredo 2001::/32 (tunnel: client address is obfuscated)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "64:ff9b:1::/48",  # local-use NAT64: where the IPv4 sits depends on the prefix length, so refuse
        "fc00::/7",  # unique local, includes AWS metadata fd00:ec2::254
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V6_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
# Dot-separated labels, in one match rather than one per label (labels hold no dots).
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DIGITS = re.compile(r"[0-9]+")
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_HEX = re.compile(r"0x[0-9a-f]*")
# Printable ASCII minus space: anything else inside a URL is either an attack on a parser or a typo.
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\\]|\s")
_PATH_SAFE = "/%:@!$&'()*+,;=~"
_QUERY_SAFE = _PATH_SAFE + "?"


def _invalid(message: str) -> ScanError:
    return ScanError(ErrorType.INVALID_URL, message)


def _blocked(message: str = BLOCKED_MESSAGE) -> ScanError:
    return ScanError(ErrorType.SSRF_BLOCKED, message)


@dataclass(frozen=True)
class Target:
    """A checked URL split into what the fetcher needs."""

    scheme: str
    host: str  # lower-case ASCII name, dotted-quad IPv4 or compressed IPv6 without brackets
    port: int
    path: str  # path and query, percent-encoded ASCII, starts with "/"

    @property
    def url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def authority(self) -> str:
        """The Host header value: the port only when it is not the scheme's default."""
        if self.port == DEFAULT_PORTS[self.scheme]:
            return self.url_host
        return f"{self.url_host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


def _ipv4_number(part: str) -> int | None:
    """One part of a WHATWG IPv4 host: decimal, 0x-hex or 0-octal (as inet_aton reads it too)."""
    if _HEX.fullmatch(part):
        return int(part[2:] or "0", 16)
    if not _DIGITS.fullmatch(part):
        return None
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8) if set(part) <= set("01234567") else None
    return int(part)


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address a numeric host denotes (127.1, 2130706433, 0x7f.1, 0177.0.0.1), None for a name.

    Follows the WHATWG URL parser, which agrees with inet_aton: the resolver would connect to these
    forms, so they must be judged as the address they mean, not as a name.
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    last = parts[-1]
    if not (_DIGITS.fullmatch(last) or _HEX.fullmatch(last)):
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise _invalid("URL host is not a valid IPv4 address")
    values = [n for n in numbers if n is not None]
    if any(n > 255 for n in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
        raise _invalid("URL host is not a valid IPv4 address")
    value = values[-1]
    for i, n in enumerate(values[:-1]):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _normalise_name(host: str) -> str:
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise _invalid("URL host is not a valid domain name") from None
    host = host.lower()
    ipv4 = _parse_ipv4(host)
    if ipv4 is not None:
        return str(ipv4)
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not _NAME.fullmatch(name):
        raise _invalid("URL host is not a valid domain name")
    return name


def normalise_host(host: str) -> str:
    """Canonical form of a URL host (brackets allowed for IPv6); raises INVALID_URL."""
    if host.startswith("["):
        if not host.endswith("]") or "%" in host:
            raise _invalid("URL host is not a valid IPv6 address")
        try:
            return str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise _invalid("URL host is not a valid IPv6 address") from None
    if not host or "%" in host or ":" in host:
        raise _invalid("URL host is not valid")
    return _normalise_name(host)


def _split_authority(netloc: str) -> tuple[str, str | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise _invalid("URL host is not a valid IPv6 address")
        host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _invalid("URL host is not valid")
        return host, rest[1:] if rest else None
    host, colon, port = netloc.rpartition(":")
    return (host, port) if colon else (netloc, None)


def _parse_port(raw: str | None, scheme: str) -> int:
    if raw is None or raw == "":
        return DEFAULT_PORTS[scheme]
    if not _DIGITS.fullmatch(raw) or len(raw) > 10 or not 0 < int(raw) <= 65535:
        raise _invalid("URL port is not valid")
    return int(raw)


def ip_of(host: str) -> IPAddress | None:
    """The address of a normalised host when it is a literal, else None.

    Decided by shape before parsing: `ipaddress.ip_address` on a name raises twice (IPv4, then
    IPv6), and names are what nearly every request carries. The shapes are no looser than the
    parsers: an IPv6 literal has a colon (a name never does), an IPv4 literal is four decimal parts;
    anything of either shape is still parsed by ipaddress, and refused as a literal if it fails."""
    if host.startswith("["):
        host = host[1:-1]
    try:
        if ":" in host:
            return ipaddress.IPv6Address(host)
        if _DOTTED_QUAD.fullmatch(host):
            return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    return None


def _canonical(host: str) -> str:
    """Like normalise_host, but also takes the bare IPv6 form that Target.host uses."""
    ip = ip_of(host)
    return str(ip) if ip is not None else normalise_host(host)


@functools.lru_cache(maxsize=64)
def _allow_entries(entries: frozenset[str]) -> frozenset[tuple[str, int | None]]:
    parsed: set[tuple[str, int | None]] = set()
    for entry in entries:
        host, port = _split_authority(entry.strip().lower())
        try:
            parsed.add((normalise_host(host), int(port) if port else None))
        except (ScanError, ValueError):
            continue  # a malformed entry allows nothing rather than something unexpected
    return frozenset(parsed)


def is_allow_listed(host: str, port: int, settings: Settings) -> bool:
    """An entry without a port allows every port of that host; `host:port` allows only that port."""
    if not settings.fetch_allow_hosts:
        return False
    key = _canonical(host)
    entries = _allow_entries(settings.fetch_allow_hosts)
    return (key, None) in entries or (key, port) in entries


def parse_target(url: str, settings: Settings) -> Target:
    """Syntax and policy checks without DNS. Raises INVALID_URL or SSRF_BLOCKED."""
    if not isinstance(url, str) or not url:
        raise _invalid("URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f"URL is longer than {MAX_URL_LENGTH} characters")
    if _BAD_CHARS.search(url):
        raise _invalid("URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _invalid("URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise _invalid("URL must use http or https")
    if not parts.netloc:
        raise _invalid("URL has no host")
    if "@" in parts.netloc:
        raise _invalid("URL must not contain credentials")
    raw_host, raw_port = _split_authority(parts.netloc)
    host = normalise_host(raw_host)
    port = _parse_port(raw_port, scheme)
    allowed = is_allow_listed(host, port, settings)
    if port not in settings.fetch_allowed_ports and not allowed:
        raise _blocked("destination port is not allowed")  # the number is left out, like every detail of a target
    ip = ip_of(host)
    if ip is not None and not allowed and not is_public_address(ip):
        raise _blocked()
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_QUERY_SAFE)
    target = Target(scheme, host, port, path)
    if len(target.url) > MAX_URL_LENGTH:
        raise _invalid(f"URL is longer than {MAX_URL_LENGTH} characters")
    return target


def check_url(url: str, settings: Settings) -> str:
    """The normalised URL (fragment dropped, host canonical), or ScanError INVALID_URL / SSRF_BLOCKED."""
    return parse_target(url, settings).url


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _V6_NAT64 or ip in _V6_V4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def is_public_address(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses; IPv6 wrappers are judged by their IPv4."""
    if ip in _METADATA:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.is_global and not ip.is_multicast and not any(ip in net for net in _V4_BLOCKED)
    if ip.scope_id:
        return False
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        return is_public_address(embedded)
    if any(ip in net for net in _V6_BLOCKED):
        return False
    return ip in _V6_GLOBAL_UNICAST and ip.is_global and not ip.is_multicast


def _dns_error(exc: OSError) -> ScanError:
    if isinstance(exc, socket.gaierror) and exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
        return ScanError(ErrorType.DNS_ERROR, "the host name does not resolve")
    if isinstance(exc, socket.gaierror) and exc.errno != socket.EAI_AGAIN:
        return ScanError(ErrorType.DNS_ERROR, "the host name could not be resolved")
    # EAI_AGAIN and system errors are the resolver's trouble, not the name's.
    return ScanError(ErrorType.DNS_ERROR, "DNS lookup failed temporarily", retryable=True)


async def _getaddrinfo(host: str, port: int, budget: float) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(budget):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except TimeoutError:
        raise ScanError(ErrorType.DNS_ERROR, "DNS lookup timed out", retryable=True) from None
    except UnicodeError:
        raise _invalid("URL host is not a valid domain name") from None
    except OSError as exc:
        raise _dns_error(exc) from None
    addresses: list[IPAddress] = []
    for info in infos:
        raw = info[4][0]
        try:
            if not isinstance(raw, str):
                raise ValueError(raw)
            ip = ipaddress.ip_address(raw)
        except ValueError:
            raise _blocked() from None  # an answer we cannot judge is refused, not trusted
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise ScanError(ErrorType.DNS_ERROR, "the host name does not resolve")
    return addresses


async def resolve_target(host: str, port: int, settings: Settings) -> list[IPAddress]:
    """Addresses to connect to, in resolver order; refuses the whole name if any answer is not public.

    Refusing on ANY bad answer (not just filtering it out) stops names that mix a public and an
    internal address from being used to probe the internal one.
    """
    name = _canonical(host)
    literal = ip_of(name)
    addresses = [literal] if literal is not None else await _getaddrinfo(name, port, settings.fetch_connect_timeout)
    if is_allow_listed(name, port, settings):
        return addresses
    if not all(is_public_address(ip) for ip in addresses):
        raise _blocked()
    return addresses
