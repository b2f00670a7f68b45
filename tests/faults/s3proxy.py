"""An S3 fault-injection proxy: a small HTTP/1.1 reverse proxy, run as its own
process between S3 clients and an S3 server (moto), that fails requests the
way a flaky network or server would.

    python -m tests.faults.s3proxy --port 9001 --upstream http://127.0.0.1:9000

The proxy itself uses the standard library only (sockets and threads, one
thread per client connection; ``http.client`` to the upstream). It keeps
client connections alive, answers ``Expect: 100-continue`` itself (boto3 sends
it with every PUT of a file), reads the whole request, and forwards it
without the ``Expect`` header; the ``Host`` header and the signature are
passed on untouched. Responses are buffered and sent with a Content-Length.

Control, on the same port and never forwarded (``S3FaultProxy`` wraps it):

- ``GET /__fault__``: the fault and the counters, as JSON;
- ``POST /__fault__`` with ``{"mode": M, "methods": ["PUT"] | null,
  "count": N | null, "ms": MS}``: from now on the first ``count`` requests
  (all, if null) whose method is in ``methods`` (any, if null) get mode M;
- ``DELETE /__fault__``: back to ``pass`` (releases black-holed requests);
- ``POST /__fault__/reset-stats``: zero the counters.

Modes (``MODES``):

- ``pass``: forward everything;
- ``error500``, ``slowdown503``, ``denied403``: answer 500 ``InternalError`` /
  503 ``SlowDown`` / 403 ``AccessDenied`` (what a bucket or IAM policy denying
  the action gets) as S3 does (XML body, ``x-amz-request-id``), nothing
  forwarded;
- ``error500_after_forward``: forward (the object IS stored), then answer 500;
- ``reset_mid_body``: read half the request body (none if it has none), then
  reset the connection (``SO_LINGER`` 0 and close: an RST, not a FIN);
- ``blackhole``: read the request and say nothing (not even ``100
  Continue``) until the fault changes; then forward it as usual — a healed
  partition lets held connections continue, so a write the client gave up on
  may land late;
- ``blackhole_drop``: the same, but a partition that silently lost the held
  connections: after the fault changes they stay silent until the client
  gives up (its read timeout) and closes them;
- ``latency``: wait ``ms`` milliseconds, then forward;
- ``flip_byte``: flip the middle byte of the request body (requests with a
  body only; a ``Transfer-Encoding: chunked`` body is flipped as framed),
  then forward.

Response faults (``RESPONSE_MODES``): the request is forwarded as usual, and
a successful (2xx) answer with a body comes back damaged:

- ``flip_response``: with its middle byte flipped;
- ``truncate_response``: the headers (the full ``Content-Length``) and half
  the body, then the connection closes (a FIN);
- ``reset_response``: the same, then an RST;
- ``stall_response``: the headers and half the body, then nothing for
  ``ms`` milliseconds (until the fault changes, if 0), then the rest.

``match`` (optional) limits a fault to requests whose target contains it
(an object key, say); others pass and are not counted against ``count``.

With ``--verify-checksums`` the proxy also does what AWS S3 does and moto
does not: a request whose body (after any fault) does not match its
``Content-MD5`` or ``x-amz-checksum-sha256`` is answered 400 ``BadDigest``
and not forwarded.

With ``--opaque-etags`` it plays an endpoint whose ETags are no MD5 of the
bytes (AWS under SSE-KMS, several S3-compatible stores): every ETag it
relays, in headers and in listings' XML, is replaced by another 32-hex value
derived from the real one, and mapped back in ``If-Match`` /
``If-None-Match`` requests.

Counters, per HTTP method: ``seen`` (requests received), ``faulted`` (given a
mode other than pass), ``forwarded`` (sent to the upstream), ``with_md5``
(carrying ``Content-MD5``), ``refused`` (``BadDigest`` from the verification).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

CONTROL_PATH = "/__fault__"
MODES = frozenset(
    {
        "pass",
        "error500",
        "slowdown503",
        "denied403",
        "error500_after_forward",
        "reset_mid_body",
        "blackhole",
        "blackhole_drop",
        "latency",
        "flip_byte",
        "flip_response",
        "truncate_response",
        "reset_response",
        "stall_response",
    }
)
RESPONSE_MODES = frozenset(
    {"flip_response", "truncate_response", "reset_response", "stall_response"}
)
MAX_LINE = 65536
ETAG_CONDITIONS = frozenset({"if-match", "if-none-match"})
LISTED_ETAG = re.compile(rb"(<ETag>(?:&quot;|\")?)([0-9a-fA-F-]+)((?:&quot;|\")?</ETag>)")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"}
)
UPSTREAM_TIMEOUT_S = 120.0

_ERRORS = {
    "error500": (500, "Internal Server Error", "InternalError",
                 "We encountered an internal error. Please try again."),
    "error500_after_forward": (500, "Internal Server Error", "InternalError",
                               "We encountered an internal error. Please try again."),
    "slowdown503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "denied403": (403, "Forbidden", "AccessDenied", "Access Denied"),
    "bad_gateway": (502, "Bad Gateway", "BadGateway", "The upstream S3 server did not answer."),
    "bad_digest": (400, "Bad Request", "BadDigest",
                   "The checksum you specified did not match the calculated checksum."),
}  # fmt: skip


def checksum_refused(headers: dict[str, str], body: bytes) -> bool:
    """Whether ``body`` does not match the Content-MD5 or x-amz-checksum-sha256
    among ``headers`` (lower-case names), as S3 verifies them."""
    sent = [
        (headers.get("content-md5"), hashlib.md5),
        (headers.get("x-amz-checksum-sha256"), hashlib.sha256),
    ]
    return any(
        value is not None and value != base64.b64encode(algo(body).digest()).decode()
        for value, algo in sent
    )


# --- the proxy process --------------------------------------------------------


@dataclass
class Fault:
    mode: str = "pass"
    methods: frozenset[str] | None = None  # None: every method
    remaining: int | None = None  # None: every matching request
    ms: int = 0
    generation: int = 0  # of the fault in force when a request picked it
    match: str | None = None  # None: every target

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "methods": sorted(self.methods) if self.methods is not None else None,
            "remaining": self.remaining,
            "ms": self.ms,
            "match": self.match,
        }


class ProxyState:
    """The current fault and the counters, shared by the connection threads."""

    def __init__(self, verify: bool = False, opaque_etags: bool = False) -> None:
        self.verify = verify
        self.opaque_etags = opaque_etags
        self.real_etags: dict[str, str] = {}
        """Opaque ETag -> the upstream's (``--opaque-etags``)."""
        self.cond = threading.Condition()
        self.fault = Fault()
        self.generation = 0  # bumped whenever the fault changes
        self.held = 0
        self.seen: Counter[str] = Counter()
        self.faulted: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self.with_md5: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def opaque(
        self, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[list[tuple[str, str]], bytes]:
        """A response with every ETag replaced by an opaque one (remembered)."""

        def swap(real: str) -> str:
            fake = hashlib.md5(b"opaque:" + real.encode()).hexdigest()
            with self.cond:
                self.real_etags[fake] = real
            return fake

        headers = [
            (n, f'"{swap(v.strip(chr(34)))}"' if n.lower() == "etag" else v) for n, v in headers
        ]
        if b"<ETag>" in body:
            body = LISTED_ETAG.sub(lambda m: m[1] + swap(m[2].decode()).encode() + m[3], body)
        return headers, body

    def real_etag(self, value: str) -> str:
        """``If-Match`` / ``If-None-Match`` with the upstream's ETag again."""
        inner = value.strip('"')
        with self.cond:
            real = self.real_etags.get(inner)
        return value if real is None else value.replace(inner, real)

    def pick(self, method: str, has_body: bool, target: str = "") -> Fault:
        """The fault for one incoming request (counted)."""
        with self.cond:
            self.seen[method] += 1
            fault = self.fault
            applies = (
                fault.mode != "pass"
                and (fault.methods is None or method in fault.methods)
                and (fault.match is None or fault.match in target)
                and fault.remaining != 0
                and (has_body or fault.mode != "flip_byte")
            )
            if not applies:
                return Fault()
            if fault.remaining is not None:
                fault.remaining -= 1
            self.faulted[method] += 1
            return Fault(fault.mode, fault.methods, None, fault.ms, self.generation, fault.match)

    def set(self, fault: Fault) -> None:
        with self.cond:
            self.fault = fault
            self.generation += 1
            self.cond.notify_all()

    def hold(self, generation: int) -> None:
        """Block until the fault in force when the request arrived (its
        ``generation``) changes: a black hole that heals, also while the
        request's body was still on its way."""
        with self.cond:
            self.held += 1
            while self.generation == generation:
                self.cond.wait()
            self.held -= 1

    def counted_forward(self, method: str) -> None:
        with self.cond:
            self.forwarded[method] += 1

    def count(self, counter: Counter[str], method: str) -> None:
        with self.cond:
            counter[method] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.cond:
            return {
                "fault": self.fault.as_json(),
                "seen": dict(self.seen),
                "faulted": dict(self.faulted),
                "forwarded": dict(self.forwarded),
                "with_md5": dict(self.with_md5),
                "refused": dict(self.refused),
                "held": self.held,
            }

    def reset_stats(self) -> None:
        with self.cond:
            self.seen.clear()
            self.faulted.clear()
            self.forwarded.clear()
            self.with_md5.clear()
            self.refused.clear()


def parse_fault(payload: Any) -> Fault:
    """A ``Fault`` from the control JSON; ``ValueError`` when malformed."""
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    mode = payload.get("mode", "pass")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(sorted(MODES))}")
    methods = payload.get("methods")
    if methods is not None:
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise ValueError("methods: a list of HTTP methods, or null")
        methods = frozenset(m.upper() for m in methods)
    count = payload.get("count")
    if count is not None and (not isinstance(count, int) or count < 0):
        raise ValueError("count: a non-negative integer, or null")
    ms = payload.get("ms", 0)
    if not isinstance(ms, int | float) or ms < 0:
        raise ValueError("ms: a non-negative number")
    match = payload.get("match")
    if match is not None and not isinstance(match, str):
        raise ValueError("match: a string, or null")
    return Fault(mode, methods, count, int(ms), match=match)


def s3_error_body(code: str, message: str, resource: str, request_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId>"
        f"<HostId>{request_id}</HostId></Error>"
    ).encode()


class ClientGone(Exception):
    """The client closed the connection (or sent something unusable)."""


class Connection:
    """One client connection: requests in a loop while it keeps alive."""

    def __init__(
        self, sock: socket.socket, state: ProxyState, upstream: tuple[str, int], log: IO[str]
    ) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.state = state
        self.upstream_addr = upstream
        self.upstream: http.client.HTTPConnection | None = None
        self.log = log

    def run(self) -> None:
        try:
            while self.handle_one():
                pass
        except (ClientGone, OSError, http.client.HTTPException, ValueError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        try:
            self.rfile.close()
        finally:
            self.sock.close()

    def reset(self) -> None:
        """Abort the connection with an RST."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    # -- reading the request ---------------------------------------------------

    def read_head(self) -> tuple[str, str, str, list[tuple[str, str]]] | None:
        line = self.rfile.readline(MAX_LINE)
        while line in (b"\r\n", b"\n"):  # tolerated between requests
            line = self.rfile.readline(MAX_LINE)
        if not line:
            return None
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) != 3:
            raise ClientGone(f"bad request line {line!r}")
        headers: list[tuple[str, str]] = []
        while True:
            raw = self.rfile.readline(MAX_LINE)
            if not raw:
                raise ClientGone("connection closed in the headers")
            if raw in (b"\r\n", b"\n"):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        return parts[0], parts[1], parts[2], headers

    def read_exactly(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise ClientGone(f"connection closed after {len(data)} of {n} body bytes")
        return data

    def read_chunked(self) -> bytes:
        """A chunked body, framing included (it is forwarded as it came)."""
        out = bytearray()
        while True:
            size_line = self.rfile.readline(MAX_LINE)
            if not size_line:
                raise ClientGone("connection closed in a chunked body")
            out += size_line
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailers, up to the blank line
                    trailer = self.rfile.readline(MAX_LINE)
                    if not trailer:
                        raise ClientGone("connection closed in chunked trailers")
                    out += trailer
                    if trailer in (b"\r\n", b"\n"):
                        return bytes(out)
            out += self.read_exactly(size + 2)

    # -- one request -------------------------------------------------------------

    def handle_one(self) -> bool:
        """Serve one request; False when the connection is done."""
        head = self.read_head()
        if head is None:
            return False
        method, target, version, headers = head
        lower = {name.lower(): value for name, value in headers}
        connection = lower.get("connection", "").lower()
        keep_alive = (
            "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
        )
        length = int(lower.get("content-length", "0") or 0)
        chunked = "chunked" in lower.get("transfer-encoding", "").lower()
        expect = lower.get("expect", "").lower() == "100-continue"
        path = target.split("?", 1)[0]
        if path == CONTROL_PATH or path.startswith(CONTROL_PATH + "/"):
            body = self.read_exactly(length)
            return self.control(method, path, body) and keep_alive

        fault = self.state.pick(method, has_body=length > 0 or chunked, target=target)
        mode = fault.mode
        if mode != "pass":
            self.note(f"{mode}: {method} {target}")

        if mode == "reset_mid_body":
            if expect:
                self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if length:
                self.read_exactly(length // 2)
            elif chunked:
                self.rfile.readline(MAX_LINE)
            self.reset()
            return False

        if expect and not mode.startswith("blackhole"):
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        # A black hole says nothing: boto3 sends the body after waiting 1 s.
        body = self.read_chunked() if chunked else self.read_exactly(length)

        if mode.startswith("blackhole"):
            self.state.hold(fault.generation)
            if mode == "blackhole_drop":
                with contextlib.suppress(OSError):
                    while self.sock.recv(65536):  # until the client closes
                        pass
                return False
        elif mode in ("error500", "slowdown503", "denied403"):
            self.send_error(mode, method, path, keep_alive)
            return keep_alive
        elif mode == "latency":
            time.sleep(fault.ms / 1000)
        elif mode == "flip_byte":
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        if "content-md5" in lower:
            self.state.count(self.state.with_md5, method)
        if self.state.verify and not chunked and checksum_refused(lower, body):
            self.state.count(self.state.refused, method)
            self.note(f"refused: {method} {target}: the body does not match its checksum")
            self.send_error("bad_digest", method, path, keep_alive)
            return keep_alive

        try:
            if self.state.opaque_etags:
                headers = [(n, self.state.real_etag(v) if n.lower() in ETAG_CONDITIONS else v)
                           for n, v in headers]  # fmt: skip
            status, reason, resp_headers, resp_body = self.forward(method, target, headers, body)
            if self.state.opaque_etags:
                resp_headers, resp_body = self.state.opaque(resp_headers, resp_body)
        except (OSError, http.client.HTTPException) as exc:
            self.note(f"upstream failed for {method} {target}: {exc!r}")
            self.send_error("bad_gateway", method, path, keep_alive)
            return keep_alive
        if mode == "error500_after_forward":
            self.send_error(mode, method, path, keep_alive)
        elif mode in RESPONSE_MODES and 200 <= status < 300 and resp_body and method != "HEAD":
            return self.send_damaged(fault, status, reason, resp_headers, resp_body, keep_alive)
        else:
            self.send_response(status, reason, resp_headers, resp_body, method, keep_alive)
        return keep_alive

    def forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream on this connection's keep-alive upstream
        connection (a fresh one if a reused one turns out closed)."""
        for attempt in (1, 2):
            reused = self.upstream is not None
            if self.upstream is None:
                self.upstream = http.client.HTTPConnection(
                    *self.upstream_addr, timeout=UPSTREAM_TIMEOUT_S
                )
            conn = self.upstream
            try:
                conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    if name.lower() not in HOP_BY_HOP:
                        conn.putheader(name, value)
                conn.endheaders(body or None)
                self.state.counted_forward(method)
                response = conn.getresponse()
                resp_body = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                self.upstream = None
                if reused and attempt == 1:
                    continue  # the upstream closed an idle connection
                raise
            except BaseException:
                conn.close()
                self.upstream = None
                raise
            if response.will_close:
                conn.close()
                self.upstream = None
            return response.status, response.reason, response.getheaders(), resp_body
        raise AssertionError("unreachable")

    # -- answering -------------------------------------------------------------

    def send_response(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
        method: str,
        keep_alive: bool,
    ) -> None:
        payload = self.response_head(status, reason, headers, len(body), method, keep_alive)
        if method != "HEAD":
            payload += body
        self.sock.sendall(payload)

    def response_head(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        length: int,
        method: str,
        keep_alive: bool,
    ) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}"]
        for name, value in headers:
            lowered = name.lower()
            if lowered in HOP_BY_HOP or lowered == "transfer-encoding":
                continue
            if lowered == "content-length" and method != "HEAD":
                continue  # recomputed: the body was de-chunked
            lines.append(f"{name}: {value}")
        if method != "HEAD" and status not in (204, 304) and status >= 200:
            lines.append(f"Content-Length: {length}")
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send_damaged(
        self,
        fault: Fault,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
        keep_alive: bool,
    ) -> bool:
        """A response damaged as ``fault`` (a ``RESPONSE_MODES`` mode) says;
        whether the connection is still usable."""
        middle = len(body) // 2
        if fault.mode == "flip_response":
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
            self.send_response(status, reason, headers, body, "GET", keep_alive)
            return keep_alive
        head = self.response_head(status, reason, headers, len(body), "GET", keep_alive)
        self.sock.sendall(head + body[:middle])
        if fault.mode == "stall_response":
            if fault.ms:
                time.sleep(fault.ms / 1000)
            else:
                self.state.hold(fault.generation)
            self.sock.sendall(body[middle:])
            return keep_alive
        if fault.mode == "reset_response":
            self.reset()
        return False  # truncate_response: ``run`` closes it (a FIN)

    def send_error(self, kind: str, method: str, path: str, keep_alive: bool) -> None:
        status, reason, code, message = _ERRORS[kind]
        request_id = uuid.uuid4().hex[:16].upper()
        body = s3_error_body(code, message, path, request_id)
        headers = [
            ("x-amz-request-id", request_id),
            ("x-amz-id-2", request_id),
            ("Date", formatdate(usegmt=True)),
            ("Server", "AmazonS3"),
            ("Content-Type", "application/xml"),
        ]
        if method == "HEAD":  # S3 sends no body with a HEAD's error
            headers.append(("Content-Length", "0"))
            body = b""
        self.send_response(status, reason, headers, body, method, keep_alive)

    def send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        headers = [("Content-Type", "application/json")]
        reason = http.client.responses.get(status, "")
        self.send_response(status, reason, headers, body, "GET", keep_alive=True)

    def control(self, method: str, path: str, body: bytes) -> bool:
        if path == CONTROL_PATH and method == "GET":
            self.send_json(200, self.state.snapshot())
        elif path == CONTROL_PATH and method == "POST":
            try:
                fault = parse_fault(json.loads(body or b"{}"))
            except ValueError as exc:
                self.send_json(400, {"error": str(exc)})
                return True
            self.state.set(fault)
            self.note(f"fault set: {fault.as_json()}")
            self.send_json(200, self.state.snapshot())
        elif path == CONTROL_PATH and method == "DELETE":
            self.state.set(Fault())
            self.note("fault cleared")
            self.send_json(200, self.state.snapshot())
        elif path == f"{CONTROL_PATH}/reset-stats" and method == "POST":
            self.state.reset_stats()
            self.send_json(200, self.state.snapshot())
        else:
            self.send_json(404, {"error": f"no control {method} {path}"})
        return True

    def note(self, message: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} s3proxy: {message}", file=self.log, flush=True)


def serve(
    host: str, port: int, upstream_url: str, verify: bool = False, opaque_etags: bool = False
) -> None:
    parts = urlsplit(upstream_url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"s3proxy: --upstream must be http://HOST:PORT, got {upstream_url!r}")
    upstream = (parts.hostname, parts.port or 80)
    state = ProxyState(verify, opaque_etags)
    server = socket.create_server((host, port), backlog=256)
    print(f"s3proxy: listening on {host}:{port}, upstream {upstream_url}", flush=True)
    while True:
        sock, _ = server.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Connection(sock, state, upstream, sys.stderr)
        threading.Thread(target=conn.run, daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.s3proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT of the S3 server")
    parser.add_argument(
        "--verify-checksums", action="store_true", help="refuse bodies that fail their checksums"
    )
    parser.add_argument(
        "--opaque-etags", action="store_true", help="relay ETags that are no MD5 of the bytes"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.host, args.port, args.upstream, args.verify_checksums, args.opaque_etags)


# --- the test side ------------------------------------------------------------


@dataclass(frozen=True)
class ProxyStats:
    """Counters per HTTP method since the proxy started or ``reset_stats``."""

    seen: dict[str, int] = field(default_factory=dict)
    faulted: dict[str, int] = field(default_factory=dict)
    forwarded: dict[str, int] = field(default_factory=dict)
    held: int = 0  # requests waiting in a black hole now
    with_md5: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


class S3FaultProxy:
    """Runs ``python -m tests.faults.s3proxy`` on a free loopback port in
    front of ``upstream`` and steers it::

        proxy = S3FaultProxy(moto.endpoint_url)
        proxy.start()
        storage = S3Storage(bucket, endpoint_url=proxy.endpoint_url, max_attempts=1)
        proxy.set("flip_byte", methods=["PUT"], count=1)
        ...
        proxy.clear()
        assert proxy.stats().faulted == {"PUT": 1}
        proxy.stop()
    """

    def __init__(
        self,
        upstream: str,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        verify_checksums: bool = False,
        opaque_etags: bool = False,
    ):
        if port is None:
            from tests.servers import free_port

            port = free_port()
        self.upstream = upstream
        self.port = port
        self.log_path = log_path
        self.verify_checksums = verify_checksums
        self.opaque_etags = opaque_etags
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 15.0) -> None:
        """Start the proxy process (unless it runs) and wait until it answers."""
        if self.running:
            return
        command = [
            sys.executable,
            "-m",
            "tests.faults.s3proxy",
            "--port",
            str(self.port),
            "--upstream",
            self.upstream,
            *(["--verify-checksums"] if self.verify_checksums else []),
            *(["--opaque-etags"] if self.opaque_etags else []),
        ]
        root = Path(__file__).resolve().parents[2]
        if self.log_path is not None:
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(command, cwd=root, stdout=log, stderr=log)
        else:
            self._proc = subprocess.Popen(
                command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.stats()
                return
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"s3proxy exited with status {self._proc.returncode}"
                        + (f"; see {self.log_path}" if self.log_path else "")
                    ) from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"s3proxy did not answer within {timeout_s} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        # Imported here: the proxy process itself needs the standard library only.
        from tests.servers import terminate

        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc)

    def __enter__(self) -> S3FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _control(self, method: str, path: str = CONTROL_PATH, payload: Any = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.endpoint_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ValueError(f"s3proxy refused {method} {path}: {exc.read().decode()}") from None

    def set(
        self,
        mode: str,
        *,
        methods: list[str] | None = None,
        count: int | None = None,
        ms: float = 0,
        match: str | None = None,
    ) -> None:
        """From now on, ``mode`` for the first ``count`` requests (all if None)
        whose method is in ``methods`` (any if None) and whose target contains
        ``match`` (any if None); ``ms`` for ``latency`` and ``stall_response``."""
        payload = {"mode": mode, "methods": methods, "count": count, "ms": ms, "match": match}
        self._control("POST", payload=payload)

    def clear(self) -> None:
        """Back to ``pass``; requests held in a black hole go on upstream."""
        self._control("DELETE")

    def stats(self) -> ProxyStats:
        data = self._control("GET")
        return ProxyStats(
            data["seen"],
            data["faulted"],
            data["forwarded"],
            data["held"],
            data["with_md5"],
            data["refused"],
        )

    def reset_stats(self) -> None:
        self._control("POST", f"{CONTROL_PATH}/reset-stats", {})


if __name__ == "__main__":
    main()
