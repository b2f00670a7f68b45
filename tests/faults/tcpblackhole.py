"""A TCP proxy, run in the test process, that can black-hole the network
between its clients and their server the way a firewall drop, a NAT or
conntrack flush, or a cloud partition does: bytes stop flowing both ways, and
nothing is closed or reset.

- ``blackhole()``: every connection stops forwarding (the proxy reads
  nothing more: the bytes wait in socket buffers, unanswered); a new
  connection is accepted but neither forwarded nor answered.
- ``blackhole_on(patterns, deliver)``: the same, once a client sends a chunk
  holding one of ``patterns`` (a command, say): a partition that starts
  mid-command. ``deliver``: the command reaches the server, its reply is
  lost; else the command waits too (and reaches the server at a resuming
  heal, late).
- ``heal(resume=True)``: a partition that ends with the connections intact,
  as TCP retransmission delivers what waited: everything flows again, late.
- ``heal(resume=False)``: a partition that lost the connections (a flushed
  NAT or conntrack table): those open at ``blackhole()`` stay silent for
  good, never closed, until the proxy stops; new ones work.

Unlike a real blackhole, the proxy's kernel acknowledges what a client sends:
a client without a socket timeout waits for its reply forever, not until TCP
retransmission gives up (~15 min).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

POLL_S = 0.05


class _Link:
    """One client connection and its upstream, pumped by one thread."""

    def __init__(self, proxy: TcpBlackhole, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.frozen = proxy.blackholed  # accepted during a blackhole: held
        self.dead = False  # lost with a partition: silent for good
        self.held = b""  # a client chunk that arrived as the blackhole began
        threading.Thread(target=self._run, daemon=True).start()

    def _wait_thawed(self) -> bool:
        while self.frozen or self.dead:
            if self.proxy.stopped.wait(POLL_S):
                return False
        return True

    def _run(self) -> None:
        try:
            if not self._wait_thawed():
                return
            upstream = self.upstream = socket.create_connection(self.proxy.upstream)
            other = {self.client: upstream, upstream: self.client}
            with selectors.DefaultSelector() as sel:
                for sock in other:
                    sel.register(sock, selectors.EVENT_READ)
                while self._wait_thawed():
                    if self.held:
                        upstream.sendall(self.held)
                        self.held = b""
                    for key, _ in sel.select(POLL_S):
                        if self.frozen or self.dead:
                            break  # not one byte more once the blackhole began
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        data = sock.recv(65536)
                        if not data:
                            return
                        triggered = sock is self.client and self.proxy.triggered_by(data)
                        if triggered and not self.proxy.deliver:
                            self.held = data
                            break
                        other[sock].sendall(data)
        except OSError:
            return
        finally:
            self.close()

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class TcpBlackhole:
    """Listens on 127.0.0.1:``port`` and forwards to ``upstream``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.blackholed = False
        self.patterns: tuple[bytes, ...] = ()
        self.deliver = False
        self.stopped = threading.Event()
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL_S)
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, redis_url: str) -> str:
        """``redis_url`` pointed at the proxy."""
        host_port = f"{self.upstream[0]}:{self.upstream[1]}"
        assert host_port in redis_url, redis_url
        return redis_url.replace(host_port, f"127.0.0.1:{self.port}")

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._links.append(_Link(self, client))

    def blackhole(self) -> None:
        with self._lock:
            self.blackholed = True
            for link in self._links:
                link.frozen = True

    def blackhole_on(self, patterns: tuple[bytes, ...], *, deliver: bool) -> None:
        with self._lock:
            self.patterns, self.deliver = patterns, deliver

    def triggered_by(self, data: bytes) -> bool:
        """Blackholes when ``data`` holds an armed pattern (then disarms)."""
        with self._lock:
            if not any(p in data for p in self.patterns):
                return False
            self.patterns = ()
        self.blackhole()
        return True

    def heal(self, *, resume: bool = True) -> None:
        with self._lock:
            self.blackholed = False
            for link in self._links:
                if not resume and link.frozen and link.upstream is not None:
                    link.dead = True  # one held since accept connects now
                link.frozen = False

    def stop(self) -> None:
        self.stopped.set()
        self._listener.close()
        with self._lock:
            for link in self._links:
                link.close()
