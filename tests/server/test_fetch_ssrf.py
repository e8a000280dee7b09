"""SSRF safety of URL fetching (server.inputs.fetch / server.inputs.ssrf), proven against local canary servers.

How "the internet" is simulated without one:
- `fetch.resolve` (the module's resolver hook) is replaced by FakeNet.resolve: fake names answer whatever
  addresses a test sets, "public" ones included (93.184.216.34, 2606:4700::1111).
- fetch_url's `client` argument gets an httpx client whose transport is the fake network (NetTransport): it
  records where each request was meant to go (the IP in the URL, the port, Host header, TLS SNI) and delivers
  it to a local server: the address a test mapped to the `public` server, or EVERY other destination to the
  canary. So a forbidden connection, whatever address it was for, lands on the canary and is recorded. If a
  request arrives with a host name instead of an IP (an unpinned fetcher), the transport resolves it again
  through FakeNet, as the OS would at connect time, so DNS rebinding is really exercised.
- Tests marked "real stack" use fetch_url's own client and the OS resolver against 127.0.0.1 servers, and a
  real TLS server, to show the same rules hold without the fake network.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from urllib.parse import unquote

import httpx
import pytest

from server.api.errors import http_status
from server.errors import ServiceError
from server.inputs import fetch
from server.inputs.fetch import fetch_url

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:4700::1111"
DEAD_PUBLIC_V4 = "93.184.216.35"  # "public", but nothing listens there
IMAGE = b"\x89PNG\r\n\x1a\n not really a png, but the fetcher does not care"
FIELD = "main_image"


# --- local servers -----------------------------------------------------------------------------------------------


@dataclass
class Wire:
    rfile: object
    wfile: object
    stop: threading.Event

    def send(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()


Route = Callable[[Wire], None]


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
    def route(wire: Wire) -> None:
        head = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
        lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
        wire.send(f"HTTP/1.1 {status} X\r\n{lines}\r\n".encode() + body)

    return route


def redirect(location: str, status: int = 302) -> Route:
    return answer(status, headers={"Location": location})


def raw(head: bytes, body_forever: bytes = b"", every_s: float = 0.0, first: bytes = b"") -> Route:
    """Headers, then optional bytes, then `body_forever` repeated (every `every_s`) until the client leaves."""

    def route(wire: Wire) -> None:
        wire.send(head + first)
        while body_forever and not wire.stop.is_set():
            wire.send(body_forever)
            if every_s:
                time.sleep(every_s)

    return route


def silent(wire: Wire) -> None:
    """Accept the request, never answer; return when the client hangs up."""
    wire.rfile.read(1)


class LocalServer:
    """A small HTTP/1.1 server on 127.0.0.1 that records every connection, request and TLS SNI it sees."""

    def __init__(self, default: Route, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.default = default
        self.connections: list[tuple] = []
        self.requests: list[dict] = []
        self.snis: list[str | None] = []
        self.stop = threading.Event()
        self.tls = tls
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.snis.append(name)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        self.routes.clear()
        self.connections.clear()
        self.requests.clear()
        self.snis.clear()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(peer)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            with conn, conn.makefile("rb") as rfile, conn.makefile("wb") as wfile:
                request_line = rfile.readline().decode("latin-1").split()
                headers = {}
                while (line := rfile.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                path = request_line[1] if len(request_line) > 1 else ""
                self.requests.append({"path": path, "headers": headers})
                self.routes.get(path.split("?")[0], self.default)(Wire(rfile, wfile, self.stop))
        except (OSError, ValueError):
            pass  # the client hung up: expected for endless, dripping and refused bodies

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture(scope="module")
def canary() -> Iterator[LocalServer]:
    """Stands for every forbidden destination (loopback, metadata, private...): must never see a connection."""
    server = LocalServer(answer(200, b"CANARY: a forbidden address was reached"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def public_server() -> Iterator[LocalServer]:
    """Stands for a public web server."""
    server = LocalServer(answer(404, b"no such image"))
    yield server
    server.close()


@pytest.fixture()
def public(public_server: LocalServer, canary: LocalServer) -> LocalServer:
    public_server.reset()
    canary.reset()
    c = canary.port
    public_server.routes.update(
        {
            "/cat.png": answer(200, IMAGE, {"Content-Type": "image/png"}),
            "/to-canary": redirect(f"http://127.0.0.1:{c}/secret"),
            "/to-localhost": redirect(f"http://localhost:{c}/secret"),
            "/to-v6-loopback": redirect(f"http://[::1]:{c}/secret", 307),
            "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/iam/", 301),
            "/to-metadata-decimal": redirect("http://2852039166/latest/meta-data/", 308),
            "/to-intranet": redirect("//intranet.example/admin"),
            "/to-file": redirect("file:///etc/passwd"),
            "/to-gopher": redirect(f"gopher://127.0.0.1:{c}/_INFO"),
            "/to-userinfo": redirect("http://user:pw@images.example/cat.png"),
            "/to-odd-port": redirect("http://images.example:8080/cat.png"),
            "/hop1": redirect("/hop2"),
            "/hop2": redirect("hop3", 307),
            "/hop3": redirect("http://images.example/cat.png", 303),
            "/loop": redirect("/loop"),
            "/no-location": answer(302),
            "/self-redirect": redirect("/cat.png"),
            "/endless-chunked": raw(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
            ),
            "/endless-close": raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"x" * 65536),
            "/small-cl-then-chunked": raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"10000\r\n" + b"x" * 0x10000 + b"\r\n",
            ),
            "/small-cl-more-bytes": raw(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"y" * 65536),
            "/huge-cl": raw(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", b"z" * 10, every_s=0.05),
            "/truncated": raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n", first=b"short"
            ),
            "/drip": raw(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b".", every_s=0.05),
            "/silent": silent,
            "/gzip": answer(200, gzip.compress(b"\0" * 100_000), {"Content-Encoding": "gzip"}),
        }
    )
    return public_server


# --- the fake network ----------------------------------------------------------------------------------------------


@dataclass
class Sent:
    ip: str
    port: int
    host_header: str
    sni: str | None


@dataclass
class FakeNet:
    canary: LocalServer
    dns: dict[str, object] = field(default_factory=dict)  # name -> list of addresses, or a callable giving one
    hosts: dict[str, LocalServer | int] = field(default_factory=dict)  # address -> server (or a closed port)
    lookups: list[str] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        answer_ = self.dns.get(host.lower())
        if answer_ is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(answer_() if callable(answer_) else answer_)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=NetTransport(self))


class NetTransport(httpx.AsyncBaseTransport):
    """Delivers each request to the local server standing for its destination address (default: the canary)."""

    def __init__(self, net: FakeNet) -> None:
        self.net = net
        self.real = httpx.AsyncHTTPTransport(verify=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or {"http": 80, "https": 443}[request.url.scheme]
        ip = _os_address(host)
        if ip is None:  # a name, not an address: what an unpinned fetcher would send; resolve it at "connect"
            ip = (await self.net.resolve(host, port))[0]
        ip = str(ip_address(ip.split("%")[0]))
        self.net.sent.append(Sent(ip, port, request.headers["host"], request.extensions.get("sni_hostname")))
        server = self.net.hosts.get(ip, self.net.canary)
        local_port = server if isinstance(server, int) else server.port
        # The fake network terminates TLS itself (real TLS is tested further down), then goes on in plain HTTP.
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=local_port)
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


def _os_address(host: str) -> str | None:
    """The address the OS would connect to for an IP literal (legacy IPv4 forms included), else None."""
    try:
        return str(ip_address(unquote(host).split("%")[0]))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


@pytest.fixture()
def net(canary: LocalServer, public: LocalServer, monkeypatch: pytest.MonkeyPatch) -> FakeNet:
    fake = FakeNet(canary)
    fake.dns.update(
        {
            "images.example": [PUBLIC_V4],
            "v6.example": [PUBLIC_V6],
            "intranet.example": ["10.0.0.5"],
            "localhost": ["127.0.0.1", "::1"],
        }
    )
    fake.hosts.update({PUBLIC_V4: public, PUBLIC_V6: public, DEAD_PUBLIC_V4: closed_port()})
    monkeypatch.setattr(fetch, "resolve", fake.resolve)
    return fake


async def _fetch(url: str, client: httpx.AsyncClient | None, **kwargs) -> bytes:
    kwargs = {"max_bytes": 100_000, "timeout_s": 5.0, **kwargs}
    backstop = kwargs["timeout_s"] + 3  # a fetcher that ignores its deadline fails here instead of hanging the run
    if client is None:
        return await asyncio.wait_for(fetch_url(url, FIELD, **kwargs), backstop)
    async with client:
        return await asyncio.wait_for(fetch_url(url, FIELD, client=client, **kwargs), backstop)


def fetch_via(net: FakeNet | None, url: str, **kwargs) -> bytes:
    return asyncio.run(_fetch(url, net.client() if net else None, **kwargs))


def refused(net: FakeNet | None, url: str, status: int = 400, **kwargs) -> str:
    """Fetch `url`, expect a refusal answered with HTTP `status`; return its message."""
    with pytest.raises(ServiceError) as info:
        fetch_via(net, url, **kwargs)
    assert http_status(info.value) == status, info.value.message
    message = info.value.message
    assert message.startswith(f"field '{FIELD}': "), message
    assert "\n" not in message and "Traceback" not in message
    return message


def assert_canary_untouched(net: FakeNet | None, canary: LocalServer) -> None:
    assert canary.connections == [], f"forbidden connection made: {canary.requests}"
    if net is not None:
        assert all(s.ip in (PUBLIC_V4, PUBLIC_V6) for s in net.sent), net.sent


# --- addresses in every spelling ----------------------------------------------------------------------------------

METADATA_SPELLINGS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254:80/latest/meta-data/",
    "https://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254./",  # trailing dot
    "http://2852039166/",  # decimal
    "http://0xA9FEA9FE/",  # hex
    "http://0xa9.0xfe.0xa9.0xfe/",  # dotted hex
    "http://025177524776/",  # octal
    "http://0251.0376.43518/",  # octal parts, short form
    "http://0251.0376.0251.0376/",  # dotted octal (httpx itself calls it invalid)
    "http://169.254.43518/",  # short forms
    "http://169.16689662/",
    "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64
    "http://[64:ff9b::169.254.169.254]/",
    "http://[2002:a9fe:a9fe::]/",  # 6to4
    "http://[2001:0:4136:e378:8000:63bf:5601:5601]/",  # Teredo, client 169.254.169.254
    "http://[fd00:ec2::254]/",  # the IPv6 metadata address (unique local)
]


@pytest.mark.parametrize("url", METADATA_SPELLINGS)
def test_metadata_address_in_every_spelling_is_refused_without_a_lookup_or_connection(net, canary, url):
    message = refused(net, url)
    assert "non-public address" in message or "not a valid URL" in message, message
    assert net.lookups == [] and net.sent == []
    assert_canary_untouched(net, canary)


NON_PUBLIC = [
    ("http://127.0.0.1/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://127.255.255.254/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped 127.0.0.1, loopback"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://169.254.0.1/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local with a zone id"),
    ("http://[2606:4700::1111%25eth0]/", "with a zone id"),
    ("http://[fec0::1]/", "site-local"),
    ("http://100.64.0.1/", "CGNAT"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://192.0.2.10/", "documentation"),
    ("http://198.51.100.7/", "documentation"),
    ("http://203.0.113.9/", "documentation"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://[64:ff9b:1::a9fe:a9fe]/", "local-use NAT64"),
    ("http://[::127.0.0.1]/", "IPv4-compatible"),
    ("http://[2002:a00:1::]/", "6to4 of 10.0.0.1, private"),
]


@pytest.mark.parametrize(("url", "reason"), NON_PUBLIC)
def test_non_public_literals_are_refused_with_the_reason(net, canary, url, reason):
    message = refused(net, url)
    assert "points to a non-public address" in message and reason in message, message
    assert message.endswith("image URLs must be public")
    assert net.sent == []
    assert_canary_untouched(net, canary)


@pytest.mark.parametrize(
    ("answers", "shown"),
    [
        (["10.0.0.5"], "10.0.0.5: private"),
        ([PUBLIC_V4, "192.168.0.10"], "192.168.0.10: private"),  # every address must be public
        (["::1"], "::1: loopback"),
        (["::ffff:127.0.0.1"], "loopback"),
        (["169.254.169.254"], "cloud metadata"),
        (["100.100.100.200"], "CGNAT"),
        (["0.0.0.0"], "unspecified"),
        (["fe80::1%2"], "link-local"),
    ],
)
def test_a_name_that_resolves_to_a_non_public_address_is_refused(net, canary, answers, shown):
    net.dns["sneaky.example"] = answers
    message = refused(net, "http://sneaky.example/cat.png")
    assert "resolves to a non-public address; image URLs must be public" in message, message
    address = shown.rsplit(": ", 1)[0] if ": " in shown else None
    assert "(" not in message and (address is None or address not in message)  # the name's address stays private
    assert net.lookups == ["sneaky.example"] and net.sent == []
    assert_canary_untouched(net, canary)


def test_localhost_and_unknown_names(net, canary):
    localhost = refused(net, "http://localhost/cat.png")
    assert "resolves to a non-public address" in localhost and "127.0.0.1" not in localhost
    assert "could not be resolved" in refused(net, "http://no-such-host.example/cat.png")
    assert net.sent == []
    assert_canary_untouched(net, canary)


# --- schemes, userinfo, ports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://images.example/cat.png",
        "gopher://127.0.0.1:70/_hello",
        "dict://127.0.0.1:11211/stat",
        "ws://images.example/",
        "javascript:alert(1)",
        "//images.example/cat.png",
    ],
)
def test_only_http_and_https(net, canary, url):
    assert "only http and https URLs can be fetched" in refused(net, url)
    assert net.lookups == [] and net.sent == []
    assert_canary_untouched(net, canary)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@images.example/cat.png",
        "http://user@images.example/cat.png",
        "http://127.0.0.1:80@images.example/cat.png",
        "http://images.example:80@127.0.0.1/",
    ],
)
def test_userinfo_is_refused(net, canary, url):
    assert "user name or password" in refused(net, url)
    assert net.sent == []
    assert_canary_untouched(net, canary)


def test_ports_80_and_443_only_unless_allow_listed(net, public, canary):
    assert "port 8080" in refused(net, "http://images.example:8080/cat.png")
    assert "port 22" in refused(net, "http://images.example:22/cat.png")
    assert "invalid port" in refused(net, "http://images.example:0/cat.png")
    assert "invalid port" in refused(net, "http://images.example:99999/cat.png", allow=["images.example"])
    assert net.sent == []
    assert fetch_via(net, "http://images.example:443/cat.png") == IMAGE
    assert fetch_via(net, "http://images.example:8080/cat.png", allow=["images.example"]) == IMAGE
    assert fetch_via(net, "http://images.example:8080/cat.png", allow=["93.184.216.0/24"]) == IMAGE
    assert [s.port for s in net.sent] == [443, 8080, 8080]
    assert_canary_untouched(net, canary)


# --- pinning and DNS rebinding ---------------------------------------------------------------------------------------


def test_success_goes_to_the_checked_address_with_the_original_host_header(net, public, canary):
    assert fetch_via(net, "http://images.example/cat.png") == IMAGE
    assert net.sent == [Sent(PUBLIC_V4, 80, "images.example", None)]
    request = public.requests[-1]
    assert request["path"] == "/cat.png"
    assert request["headers"]["host"] == "images.example"
    assert request["headers"]["accept-encoding"] == "identity"
    assert request["headers"]["connection"] == "close"
    assert_canary_untouched(net, canary)


def test_ipv6_https_and_explicit_port_keep_host_and_sni(net, public, canary):
    assert fetch_via(net, "http://v6.example/cat.png#frag") == IMAGE
    assert fetch_via(net, "https://images.example/cat.png") == IMAGE
    assert fetch_via(net, "https://images.example:443/cat.png?size=2") == IMAGE
    assert net.sent == [
        Sent(PUBLIC_V6, 80, "v6.example", None),
        Sent(PUBLIC_V4, 443, "images.example", "images.example"),
        Sent(PUBLIC_V4, 443, "images.example", "images.example"),  # httpx drops the default port
    ]
    assert [r["path"] for r in public.requests] == ["/cat.png", "/cat.png", "/cat.png?size=2"]
    assert_canary_untouched(net, canary)


def test_dns_answer_that_changes_between_check_and_connect_cannot_reach_loopback(net, public, canary):
    answers = iter([[PUBLIC_V4]])
    net.dns["rebind.example"] = lambda: next(answers, ["127.0.0.1"])  # public once, then loopback forever
    assert fetch_via(net, "http://rebind.example/cat.png") == IMAGE
    assert net.lookups == ["rebind.example"]  # resolved once; the request went to that answer
    assert net.sent == [Sent(PUBLIC_V4, 80, "rebind.example", None)]
    assert public.requests[-1]["headers"]["host"] == "rebind.example"
    assert_canary_untouched(net, canary)


def test_rebinding_on_a_redirect_hop_is_checked_again(net, public, canary):
    answers = iter([[PUBLIC_V4]])
    net.dns["rebind.example"] = lambda: next(answers, ["127.0.0.1"])
    message = refused(net, "http://rebind.example/self-redirect")
    assert "the redirect to http://rebind.example/cat.png resolves to a non-public address;" in message
    assert "127.0.0.1" not in message
    assert net.sent == [Sent(PUBLIC_V4, 80, "rebind.example", None)]
    assert_canary_untouched(net, canary)


def test_the_next_checked_address_is_tried_when_one_does_not_connect(net, public, canary):
    net.dns["multi.example"] = [DEAD_PUBLIC_V4, PUBLIC_V4]
    assert fetch_via(net, "http://multi.example/cat.png") == IMAGE
    assert [s.ip for s in net.sent] == [DEAD_PUBLIC_V4, PUBLIC_V4]
    assert net.lookups == ["multi.example"]


# --- redirects --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/to-canary", "points to a non-public address (127.0.0.1: loopback)"),
        ("/to-localhost", "resolves to a non-public address; image URLs must be public"),
        ("/to-v6-loopback", "points to a non-public address (::1: loopback)"),
        ("/to-metadata", "points to a non-public address (169.254.169.254: link-local, cloud metadata)"),
        ("/to-metadata-decimal", "points to a non-public address (169.254.169.254"),
        ("/to-intranet", "resolves to a non-public address; image URLs must be public"),
        ("/to-file", "uses file:; only http and https"),
        ("/to-gopher", "uses gopher:; only http and https"),
        ("/to-userinfo", "user name or password"),
        ("/to-odd-port", "uses port 8080"),
    ],
)
def test_redirects_are_checked_like_the_first_url(net, public, canary, path, expected):
    message = refused(net, f"http://images.example{path}")
    assert "the redirect to " in message and expected in message, message
    assert [s.ip for s in net.sent] == [PUBLIC_V4]  # the first hop only
    assert_canary_untouched(net, canary)


def test_redirect_from_an_allow_listed_internal_host_into_loopback_is_refused(net, public, canary):
    net.dns["images.internal"] = ["10.1.2.3"]
    net.hosts["10.1.2.3"] = public
    for allow in (["images.internal"], ["10.0.0.0/8"]):
        assert fetch_via(net, "http://images.internal/cat.png", allow=allow) == IMAGE  # non-public, but opened
        message = refused(net, "http://images.internal/to-canary", allow=allow)
        assert "points to a non-public address (127.0.0.1: loopback)" in message
    internal = refused(net, "http://images.internal/cat.png")  # not opened: refused
    assert "resolves to a non-public address" in internal and "10.1.2.3" not in internal
    assert_canary_untouched(None, canary)
    assert all(s.ip == "10.1.2.3" for s in net.sent)


def test_three_redirects_relative_locations_are_followed_a_fourth_is_refused(net, public, canary):
    assert fetch_via(net, "http://images.example/hop1") == IMAGE
    assert [r["path"] for r in public.requests] == ["/hop1", "/hop2", "/hop3", "/cat.png"]
    assert all(r["headers"]["host"] == "images.example" for r in public.requests)
    assert "redirects more than 3 times" in refused(net, "http://images.example/loop")
    assert "HTTP 302 without a Location" in refused(net, "http://images.example/no-location")
    assert "answered HTTP 404" in refused(net, "http://images.example/missing.png")
    assert_canary_untouched(net, canary)


# --- bytes and time ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "expected"),
    [
        ("/endless-chunked", 413, "larger than 100000 bytes"),
        ("/endless-close", 413, "larger than 100000 bytes"),
        ("/small-cl-then-chunked", None, ""),  # a Content-Length beside chunking must not cap the count
        ("/huge-cl", 413, "larger than 100000 bytes"),
        ("/truncated", 400, "could not be fetched"),
        ("/gzip", 400, "Content-Encoding gzip"),
    ],
)
def test_body_caps_hold_whatever_the_headers_say(net, public, canary, path, status, expected):
    start = time.monotonic()
    with pytest.raises(ServiceError) as info:
        fetch_via(net, f"http://images.example{path}")
    assert time.monotonic() - start < 2
    error = info.value
    assert error.message.startswith(f"field '{FIELD}': ")
    if status is None:
        assert http_status(error) in (400, 413), error.message
    else:
        assert http_status(error) == status and expected in error.message, error.message
    assert_canary_untouched(net, canary)


def test_bytes_past_a_short_content_length_are_never_read(net, public):
    assert fetch_via(net, "http://images.example/small-cl-more-bytes") == b"yyyyy"


@pytest.mark.parametrize("path", ["/drip", "/silent"])
def test_slow_servers_stop_at_the_total_deadline(net, public, canary, path):
    start = time.monotonic()
    message = refused(net, f"http://images.example{path}", timeout_s=1.0)
    assert "took longer than 1 s" in message
    assert time.monotonic() - start < 2
    assert_canary_untouched(net, canary)


# --- the real stack: fetch_url's own client and the OS resolver ------------------------------------------------------


def test_real_stack_loopback_canary_in_any_spelling_is_refused(canary):
    canary.reset()
    p = canary.port
    for url in [
        f"http://127.0.0.1:{p}/",
        f"http://127.1:{p}/",
        f"http://2130706433:{p}/",
        f"http://0x7f000001:{p}/",
        f"http://[::ffff:127.0.0.1]:{p}/",
        f"http://localhost:{p}/",
        f"http://LOCALHOST:{p}/",
    ]:
        assert "non-public address" in refused(None, url), url
    # ::ffff:127.0.0.1 is loopback too, but only 127.0.0.1/32 was opened: still refused
    assert "IPv4-mapped 127.0.0.1" in refused(None, f"http://[::ffff:127.0.0.1]:{p}/", allow=["127.0.0.1"])
    assert_canary_untouched(None, canary)


def test_real_stack_allow_listed_name_fetches_then_redirect_into_loopback_is_refused(public, canary):
    url = f"http://localhost:{public.port}"
    assert fetch_via(None, f"{url}/cat.png", allow=["localhost"]) == IMAGE
    assert public.requests[-1]["headers"]["host"] == f"localhost:{public.port}"
    message = refused(None, f"{url}/to-canary", allow=["localhost"])
    assert f"the redirect to http://127.0.0.1:{canary.port}/secret points to a non-public address" in message
    assert_canary_untouched(None, canary)


def test_real_stack_app_answers_400_json_never_500(client, body, canary):
    canary.reset()
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::ffff:127.0.0.1]:{canary.port}/",
        "file:///etc/passwd",
    ]:
        response = client.post("/v1/seg-swap", json={**body, "main_image": url})
        assert response.status_code == 400, response.text
        assert response.json()["error"].startswith("field 'main_image': ")
    assert_canary_untouched(None, canary)


# --- real TLS through a pinned connection ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    out = tmp_path_factory.mktemp("tls")
    cert, key = str(out / "cert.pem"), str(out / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=images.test",
         "-addext", "subjectAltName=DNS:images.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture()
def tls_server(tls_files) -> Iterator[LocalServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    server = LocalServer(answer(200, IMAGE), tls=context)
    yield server
    server.close()


def test_real_tls_to_the_pinned_address_uses_the_original_name_for_sni_and_certificate(
    tls_files, tls_server, monkeypatch
):
    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]  # images.test and other.test both live on the TLS server

    monkeypatch.setattr(fetch, "resolve", resolve)
    trusting = ssl.create_default_context(cafile=tls_files[0])
    url = f"https://images.test:{tls_server.port}/cat.png"
    # fetch_url's own client verifies against the public CAs: this self-signed certificate is refused
    assert "could not be fetched (ConnectError)" in refused(None, url, allow=["images.test"])
    assert asyncio.run(_fetch(url, httpx.AsyncClient(verify=trusting), allow=["images.test"])) == IMAGE
    assert tls_server.snis[-1] == "images.test"
    assert tls_server.requests[-1]["headers"]["host"] == f"images.test:{tls_server.port}"
    # the certificate is checked against the URL's name, not the address connected to
    with pytest.raises(ServiceError) as info:
        asyncio.run(
            _fetch(
                f"https://other.test:{tls_server.port}/cat.png",
                httpx.AsyncClient(verify=trusting),
                allow=["other.test"],
            )
        )
    assert http_status(info.value) == 400 and "could not be fetched (ConnectError)" in info.value.message
    assert tls_server.snis[-1] == "other.test"
