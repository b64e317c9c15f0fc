"""The SSRF guard: URL syntax, address policy and resolution. Pure checks; DNS only for localhost/.invalid."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, cast

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from app.core.models import ErrorType, ScanError
from app.core.settings import Settings
from app.core.urlpolicy import BLOCKED_MESSAGE, check_url, ip_of, is_public_address, parse_target, resolve_target

OPEN = Settings()


def error_of(url: str, settings: Settings = OPEN) -> ScanError:
    with pytest.raises(ScanError) as info:
        check_url(url, settings)
    return info.value


def allowing(*hosts: str) -> Settings:
    return Settings(fetch_allow_hosts=frozenset(hosts))


# --- addresses -------------------------------------------------------------------------------------

BLOCKED_HOSTS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0x7f.1",
    "0177.0.0.1",
    "0177.1",
    "017700000001",
    "127.0.0.1.",
    "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # fullwidth "127.0.0.1": IDNA maps it to ASCII
    "0.0.0.0",
    "0",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.0.1",
    "192.168.255.255",
    "169.254.169.254",
    "169.254.0.1",
    "100.64.0.1",
    "100.100.100.200",
    "198.18.0.1",
    "192.0.0.192",
    "192.0.2.1",
    "198.51.100.7",
    "203.0.113.9",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "[::1]",
    "[::]",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::ffff:a9fe:a9fe]",
    "[::ffff:10.0.0.1]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[64:ff9b::a9fe:a9fe]",
    "[64:ff9b::10.1.2.3]",
    "[64:ff9b:1::5db8:d822]",  # local-use NAT64 is refused outright
    "[2002:7f00:1::]",
    "[2002:a9fe:a9fe::1]",
    "[2002:c0a8:101::1]",
    "[2001::1]",  # Teredo
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",
    "[2001:db8::1]",
    "[3fff::1]",
    "[100::1]",
    "[fe80::1]",
    "[fec0::1]",
    "[fc00::1]",
    "[fd00:ec2::254]",
    "[ff02::1]",
    "[ff05::1:3]",
]

PUBLIC_HOSTS = {
    "93.184.216.34": "93.184.216.34",
    "8.8.8.8": "8.8.8.8",
    "1.1.1.1": "1.1.1.1",
    "0x5db8d822": "93.184.216.34",
    "[2606:4700::1111]": "[2606:4700::1111]",
    "[2606:4700:0:0:0:0:0:1111]": "[2606:4700::1111]",
    "[2001:4860:4860::8888]": "[2001:4860:4860::8888]",
    "[2002:5db8:d822::1]": "[2002:5db8:d822::1]",  # 6to4 of a public address
    "[64:ff9b::5db8:d822]": "[64:ff9b::5db8:d822]",  # NAT64 of a public address
}


@pytest.mark.parametrize("host", BLOCKED_HOSTS)
def test_non_public_address_literals_are_blocked(host: str) -> None:
    error = error_of(f"http://{host}/path")
    assert error.type is ErrorType.SSRF_BLOCKED
    assert not error.retryable
    assert error.message == BLOCKED_MESSAGE


@pytest.mark.parametrize(("host", "canonical"), PUBLIC_HOSTS.items())
def test_public_address_literals_are_allowed(host: str, canonical: str) -> None:
    assert check_url(f"http://{host}/x", OPEN) == f"http://{canonical}/x"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.251",
        "100.64.0.1",
        "198.19.255.255",
        "169.254.169.254",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:192.168.1.1",
        "64:ff9b::7f00:1",
        "2002:0a00:0001::",
        "2001::1",
        "fd00:ec2::254",
        "fe80::1%eth0",
        "ff02::1",
    ],
)
def test_is_public_address_refuses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34", "64:ff9b::808:808", "2002:808:808::1"]
)
def test_is_public_address_accepts(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


# --- URL syntax ------------------------------------------------------------------------------------

INVALID_URLS = [
    "",
    "example.com",
    "//example.com/",
    "ftp://example.com/file",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "data:text/html,<h1>hi</h1>",
    "gopher://example.com/",
    "mailto:someone@example.com",
    "http://",
    "http:///path",
    "http://:80/",
    "http://user:pass@example.com/",
    "http://user@example.com/",
    "http://@example.com/",
    "http://exa mple.com/",
    "http://example.com/a b",
    " http://example.com/",
    "http://example.com/\n",
    "http://example.com\r\n/",
    "http://example.com/\t",
    "http://example.com/\x00",
    "http://example.com/\u3000",  # ideographic space
    "http:\\\\example.com\\",
    "http://example.com\\@127.0.0.1/",
    "http://example.com:99999/",
    "http://example.com:0/",
    "http://example.com:abc/",
    "http://example.com:-1/",
    "http://example.com:\uff18\uff10/",  # fullwidth digits are not a port
    "http://[::1/",
    "http://[::1]x/",
    "http://[zz::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[v1.fe80::1]/",
    "http://::1/",
    "http://exa%6Dple.com/",
    "http://-bad-.com/",
    "http://a..b/",
    "http://a.b..",
    "http://exa!mple.com/",
    "http://256.0.0.1/",
    "http://1.2.3.4.5/",
    "http://0x100000000/",
    "http://08.0.0.1/",
    "http://" + "a" * 3000 + ".com/",
    "https://example.com/" + "a" * 3000,
]


@pytest.mark.parametrize("url", INVALID_URLS)
def test_invalid_urls(url: str) -> None:
    error = error_of(url)
    assert error.type is ErrorType.INVALID_URL, error
    assert not error.retryable


@pytest.mark.parametrize("value", [None, b"http://example.com/", 42])
def test_non_string_is_invalid(value: object) -> None:
    assert error_of(cast(str, value)).type is ErrorType.INVALID_URL


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("HTTP://Example.COM", "http://example.com/"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("http://example.com:443/a", "http://example.com:443/a"),
        ("https://example.com:8443", "https://example.com:8443/"),
        ("http://example.com:/a", "http://example.com/a"),
        ("http://example.com./a?b=1#frag", "http://example.com/a?b=1"),
        ("http://example.com?q", "http://example.com/?q"),
        ("http://example.com/päth?q=ü", "http://example.com/p%C3%A4th?q=%C3%BC"),
        ("http://example.com/a%20b", "http://example.com/a%20b"),
        ("http://例え.jp/", "http://xn--r8jz45g.jp/"),
        ("http://BÜCHER.example/", "http://xn--bcher-kva.example/"),
        ("http://my_host.example/", "http://my_host.example/"),
    ],
)
def test_normalisation(url: str, normalised: str) -> None:
    assert check_url(url, OPEN) == normalised
    assert check_url(normalised, OPEN) == normalised


# --- ports and the allow-list ----------------------------------------------------------------------


@pytest.mark.parametrize("port", [22, 25, 3000, 5432, 6379, 9200, 11211])
def test_ports_outside_the_allowed_set_are_blocked(port: int) -> None:
    error = error_of(f"http://example.com:{port}/")
    assert error.type is ErrorType.SSRF_BLOCKED


@pytest.mark.parametrize("port", [80, 443, 8080, 8443])
def test_allowed_ports(port: int) -> None:
    check_url(f"https://example.com:{port}/", OPEN)


def test_allowed_ports_come_from_settings() -> None:
    settings = Settings(fetch_allowed_ports=frozenset({8000}))
    check_url("http://example.com:8000/", settings)
    assert error_of("http://example.com/", settings).type is ErrorType.SSRF_BLOCKED


@pytest.mark.parametrize(
    ("entries", "url", "allowed"),
    [
        (("127.0.0.1",), "http://127.0.0.1:5432/", True),
        (("127.0.0.1",), "http://2130706433:5432/", True),  # same address, other spelling
        (("127.0.0.1",), "http://127.0.0.2/", False),
        (("127.0.0.1:8000",), "http://127.0.0.1:8000/", True),
        (("127.0.0.1:8000",), "http://127.0.0.1:8001/", False),
        (("127.0.0.1:8000",), "http://127.0.0.1/", False),
        (("[::1]",), "http://[::1]:9999/", True),
        (("[::1]:8080",), "http://[::1]:8080/", True),
        (("[::1]:8080",), "http://[::1]:8081/", False),
        (("[0:0::1]",), "http://[::1]/", True),
        (("example.com",), "http://example.com:2222/", True),
        (("example.com:2222",), "http://example.com:2222/", True),
        (("example.com:2222",), "http://example.com:22/", False),
        (("example.com",), "http://www.example.com:22/", False),
        (("localhost",), "http://127.0.0.1/", False),
        (("not a host!", "::1"), "http://[::1]/", False),
    ],
)
def test_allow_list(entries: tuple[str, ...], url: str, allowed: bool) -> None:
    settings = allowing(*entries)
    if allowed:
        check_url(url, settings)
    else:
        assert error_of(url, settings).type is ErrorType.SSRF_BLOCKED


# --- properties ------------------------------------------------------------------------------------

PRIVATE_V4 = [
    ipaddress.IPv4Network(n)
    for n in ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12")
] + [ipaddress.IPv4Network(n) for n in ("192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4")]
PRIVATE_V6 = [ipaddress.IPv6Network(n) for n in ("fc00::/7", "fe80::/10", "ff00::/8", "::1/128", "2001:db8::/32")]


def v4_in(networks: list[ipaddress.IPv4Network]) -> st.SearchStrategy[ipaddress.IPv4Address]:
    return (
        st.sampled_from(networks)
        .flatmap(lambda net: st.ip_addresses(network=net))
        .map(lambda ip: cast(ipaddress.IPv4Address, ip))
    )


def mapped(ip: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0xFFFF << 32) | int(ip))


def nat64(ip: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(ip))


def sixtofour(ip: ipaddress.IPv4Address, suffix: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80) | suffix)


@given(v4_in(PRIVATE_V4))
def test_every_address_of_a_private_network_is_refused(ip: ipaddress.IPv4Address) -> None:
    assert not is_public_address(ip)
    assert error_of(f"http://{ip}/").type is ErrorType.SSRF_BLOCKED


@given(st.sampled_from(PRIVATE_V6).flatmap(lambda net: st.ip_addresses(network=net)))
def test_every_address_of_a_private_v6_network_is_refused(ip: ipaddress.IPv6Address) -> None:
    assert not is_public_address(ip)
    assert error_of(f"http://[{ip}]/").type is ErrorType.SSRF_BLOCKED


@given(v4_in(PRIVATE_V4), st.integers(0, 2**80 - 1))
def test_ipv6_wrappers_of_private_ipv4_are_refused(ip: ipaddress.IPv4Address, suffix: int) -> None:
    for wrapped in (mapped(ip), nat64(ip), sixtofour(ip, suffix)):
        assert not is_public_address(wrapped), wrapped


@given(st.ip_addresses(v=4), st.integers(0, 2**80 - 1))
def test_ipv6_wrappers_are_judged_by_their_ipv4(ip: ipaddress.IPv4Address, suffix: int) -> None:
    expected = is_public_address(ip)
    assert is_public_address(mapped(ip)) == expected
    assert is_public_address(nat64(ip)) == expected
    assert is_public_address(sixtofour(ip, suffix)) == expected


def render_number(value: int, style: str) -> str:
    if style == "hex":
        return hex(value)
    if style == "HEX":
        return "0X" + format(value, "X")
    if style == "oct":
        return "0" + format(value, "o")
    return str(value)


@st.composite
def ipv4_spellings(draw: st.DrawFn, value: int) -> str:
    """Any inet_aton/WHATWG spelling of `value`: 1 to 4 parts, each decimal, hex or octal."""
    parts = draw(st.integers(1, 4))
    octets = value.to_bytes(4, "big")
    numbers = [*octets[: parts - 1], int.from_bytes(octets[parts - 1 :], "big")]
    styles = draw(st.lists(st.sampled_from(["dec", "hex", "HEX", "oct"]), min_size=parts, max_size=parts))
    return ".".join(render_number(n, s) for n, s in zip(numbers, styles, strict=True))


@given(st.integers(0x7F000000, 0x7FFFFFFF).flatmap(lambda v: st.tuples(st.just(v), ipv4_spellings(v))))
@example((0x7F000001, "2130706433"))
@example((0x7F000001, "0x7f.1"))
def test_every_spelling_of_a_loopback_address_is_refused(case: tuple[int, str]) -> None:
    value, spelling = case
    address = ipaddress.IPv4Address(value)
    assert error_of(f"http://{spelling}/").type is ErrorType.SSRF_BLOCKED
    # ...and it is understood as exactly that address, not merely refused.
    assert parse_target(f"http://{spelling}/", allowing(str(address))).host == str(address)


@given(st.text(max_size=200))
@example("http://[::ffff:127.0.0.1]:80/")
@example("http://0x7f.1:8080/a?b#c")
def test_check_url_only_raises_scan_errors_and_is_idempotent(text: str) -> None:
    try:
        normalised = check_url(text, OPEN)
    except ScanError as error:
        assert error.type in (ErrorType.INVALID_URL, ErrorType.SSRF_BLOCKED)
        return
    assert check_url(normalised, OPEN) == normalised


@given(
    st.sampled_from(["http", "https", "HTTP"]),
    st.sampled_from(["example.com", "93.184.216.34", "[2606:4700::1111]", "bücher.example"]),
    st.sampled_from(["", ":80", ":443", ":8080"]),
    st.text(max_size=50).map(lambda s: s.replace("#", "")),
)
def test_generated_urls_normalise_stably(scheme: str, host: str, port: str, tail: str) -> None:
    url = f"{scheme}://{host}{port}/{tail}"
    try:
        normalised = check_url(url, OPEN)
    except ScanError as error:
        assert error.type is ErrorType.INVALID_URL  # the tail had whitespace or a backslash
        return
    assert normalised.isascii()
    assert check_url(normalised, OPEN) == normalised


# --- resolution ------------------------------------------------------------------------------------


async def resolve_error(host: str, port: int, settings: Settings) -> ScanError:
    with pytest.raises(ScanError) as info:
        await resolve_target(host, port, settings)
    return info.value


async def test_localhost_resolves_to_a_blocked_address() -> None:
    error = await resolve_error("localhost", 80, OPEN)
    assert error.type is ErrorType.SSRF_BLOCKED
    assert error.message == BLOCKED_MESSAGE  # says nothing about what lives there


async def test_allow_listed_localhost_resolves() -> None:
    addresses = await resolve_target("localhost", 8080, allowing("localhost"))
    assert addresses
    assert all(ip.is_loopback for ip in addresses)


async def test_allow_list_entry_with_port_limits_resolution() -> None:
    settings = allowing("localhost:8080")
    assert await resolve_target("localhost", 8080, settings)
    assert (await resolve_error("localhost", 8081, settings)).type is ErrorType.SSRF_BLOCKED


async def test_nxdomain_is_a_permanent_dns_error() -> None:
    error = await resolve_error("pagelens-test-does-not-exist.invalid", 80, OPEN)
    assert error.type is ErrorType.DNS_ERROR
    assert not error.retryable


@pytest.mark.parametrize(("host", "expected"), [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1"), ("0x7f.1", "127.0.0.1")])
async def test_literals_are_not_looked_up(monkeypatch: pytest.MonkeyPatch, host: str, expected: str) -> None:
    async def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an address literal must not go to DNS")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_dns)
    assert (await resolve_error(host, 80, OPEN)).type is ErrorType.SSRF_BLOCKED
    assert await resolve_target(host, 80, allowing(host)) == [ipaddress.ip_address(expected)]


def fake_resolver(monkeypatch: pytest.MonkeyPatch, answer: list[str] | BaseException | None) -> None:
    """Answers every lookup with `answer` (addresses or an exception); None means hang."""

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        if answer is None:
            await asyncio.sleep(3600)
            raise AssertionError("the resolver timeout should have fired")
        if isinstance(answer, BaseException):
            raise answer
        infos: list[Any] = []
        for address in answer:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            infos.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return infos

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)


async def test_public_answers_are_returned_deduplicated_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_resolver(monkeypatch, ["2606:4700::1111", "93.184.216.34", "93.184.216.34"])
    addresses = await resolve_target("example.com", 443, OPEN)
    assert addresses == [ipaddress.ip_address("2606:4700::1111"), ipaddress.ip_address("93.184.216.34")]


@pytest.mark.parametrize("internal", ["10.0.0.5", "::ffff:169.254.169.254", "fd00::1"])
async def test_one_internal_answer_blocks_the_name(monkeypatch: pytest.MonkeyPatch, internal: str) -> None:
    fake_resolver(monkeypatch, ["93.184.216.34", internal])
    error = await resolve_error("rebind.example", 443, OPEN)
    assert error.type is ErrorType.SSRF_BLOCKED
    assert internal not in error.message


async def test_allow_listed_name_may_resolve_internally(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_resolver(monkeypatch, ["10.0.0.5"])
    assert await resolve_target("intranet.example", 80, allowing("intranet.example")) == [
        ipaddress.ip_address("10.0.0.5")
    ]


@pytest.mark.parametrize(
    ("failure", "retryable"),
    [
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), True),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), False),
        (socket.gaierror(socket.EAI_FAIL, "Non-recoverable failure in name resolution"), False),
        (OSError(5, "I/O error"), True),
    ],
)
async def test_resolver_failures(monkeypatch: pytest.MonkeyPatch, failure: OSError, retryable: bool) -> None:
    fake_resolver(monkeypatch, failure)
    error = await resolve_error("example.com", 80, OPEN)
    assert error.type is ErrorType.DNS_ERROR
    assert error.retryable is retryable


async def test_resolver_timeout_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_resolver(monkeypatch, None)
    error = await resolve_error("example.com", 80, OPEN.with_(fetch_connect_timeout=0.05))
    assert error.type is ErrorType.DNS_ERROR
    assert error.retryable


async def test_empty_answer_is_a_dns_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_resolver(monkeypatch, [])
    assert (await resolve_error("example.com", 80, OPEN)).type is ErrorType.DNS_ERROR


def _ip_of_by_exceptions(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """What ip_of answered when it parsed every host through ipaddress.ip_address."""
    try:
        return ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return None


HOST_CHARS = st.sampled_from([*"0123456789abcdefABCDEF.:%[]x-_ \n", "\u0663", "\uff11", "\u00b2"])


@given(st.text(HOST_CHARS, max_size=45) | st.ip_addresses().map(str) | st.ip_addresses(v=6).map(lambda a: f"[{a}]"))
@example("1.2.3.4")
@example("01.2.3.4")  # leading zeros: not an address to ipaddress, so a name here
@example("1.2.3.4.")
@example("256.1.1.1")
@example("\u0661.2.3.4")  # Arabic-Indic digit one: str.isdigit() but not ASCII
@example("::ffff:127.0.0.1")
@example("[fe80::1%eth0]")
@example("1.2.3.4\n")
@example("shop.example.com")
def test_ip_of_decides_by_shape_exactly_as_parsing_through_exceptions(host: str) -> None:
    # ip_of looks at the host's shape before it parses; it must agree with the parser on every input.
    assert ip_of(host) == _ip_of_by_exceptions(host)
