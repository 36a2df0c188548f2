"""A TCP forwarder whose connections can be made half-open, as a network fault leaves them."""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Collection
from typing import Literal, cast

# What ``HalfOpenProxy.freeze`` does to connections made after it.
NewConnections = Literal["forward", "freeze", "refuse"]
# What the proxy reads from one side before it writes to the other.
PROXY_CHUNK_BYTES = 65536


class HalfOpenProxy:
    """A TCP forwarder on 127.0.0.1 whose open connections can be made half-open.

    Clients connect to ``port`` instead of the target's; each connection is forwarded to the
    target over one of its own. ``freeze`` stops forwarding on every connection open now, in
    both directions, without closing either socket: to both ends this is exactly a half-open
    connection (a NAT or conntrack entry that expired, a load balancer that cut an idle flow,
    packets dropped by a network blip): writes are accepted until the buffers fill, nothing
    arrives, nothing errors. Connections made after ``freeze`` forward normally, as new
    connections do after such a fault. ``thaw`` lets the frozen ones through again, with what
    they had buffered. Real sockets and real Redis on both sides, and no root needed.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        # Each socket -> its peer, for every connection forwarding now or frozen.
        self._peers: dict[socket.socket, socket.socket] = {}
        self._frozen: set[socket.socket] = set()
        # What happens to connections made from now on (``freeze``).
        self._new: NewConnections = "forward"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="half-open-proxy", daemon=True)

    def start(self) -> HalfOpenProxy:
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    @property
    def connections(self) -> int:
        """Client connections open through the proxy (frozen ones included)."""
        with self._lock:
            return len(self._peers) // 2

    @property
    def live_connections(self) -> int:
        """Client connections open through the proxy and forwarding."""
        with self._lock:
            return (len(self._peers) - len(self._frozen)) // 2

    def freeze(self, *, spare: Collection[int] = (), new: NewConnections = "forward") -> int:
        """Make every connection open now half-open; returns how many there were.

        ``spare``: local ports of the proxy's connections to the target (Redis' ``CLIENT
        LIST`` shows them as each client's ``addr``) to leave working. ``new``: what happens
        to connections made from now until ``thaw``: forwarded; half-open from their start
        ("freeze": they connect, nothing answers); or closed at once ("refuse"). With either
        of the last two a client cannot come back while ``spare`` ones still work.
        """
        with self._lock:
            self._new = new
            for client, upstream in list(self._peers.items()):
                if upstream.getsockname()[1] in spare or client.getsockname()[1] in spare:
                    continue
                self._freeze_pair(client)
            return len(self._frozen) // 2

    def thaw(self) -> None:
        """Forward on the frozen connections again (the dropped packets are let through)."""
        with self._lock:
            self._new = "forward"
            for sock in self._frozen:
                self._selector.register(sock, selectors.EVENT_READ)
            self._frozen.clear()

    def _freeze_pair(self, sock: socket.socket) -> None:
        for end in (sock, self._peers[sock]):
            if end not in self._frozen:
                self._frozen.add(end)
                self._selector.unregister(end)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            for sock in self._peers:
                sock.close()
            self._peers.clear()
            self._frozen.clear()
        self._listener.close()
        self._selector.close()

    def __enter__(self) -> HalfOpenProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            # A timeout, so ``close`` and registrations from other threads are seen soon.
            for key, _events in self._selector.select(timeout=0.1):
                with self._lock:
                    sock = cast(socket.socket, key.fileobj)
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._peers and sock not in self._frozen:
                        self._forward(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._new == "refuse":
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(True)
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client], self._peers[upstream] = upstream, client
        if self._new == "freeze":
            self._freeze_pair(client)

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        try:
            data = sock.recv(PROXY_CHUNK_BYTES)
            if data:
                peer.sendall(data)
                return
        except OSError:
            pass
        # One end closed (or failed): close both, as a proxy does.
        for end in (sock, peer):
            if end not in self._frozen:
                self._selector.unregister(end)
            self._frozen.discard(end)
            self._peers.pop(end, None)
            end.close()
