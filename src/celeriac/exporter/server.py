"""A tiny threaded HTTP server for ``/metrics`` and ``/healthz``.

Always the plain text exposition format 0.0.4: KEDA's metrics-api scaler (format prometheus)
parses it with Prometheus' text parser, and prometheus-client would otherwise negotiate
OpenMetrics or a newer format with clients that ask for it.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_INDEX = b"celeriac exporter: metrics at /metrics, health at /healthz\n"


def create_wsgi_app(registry: CollectorRegistry) -> WSGIApp:
    """``GET /metrics`` (text format 0.0.4), ``GET /healthz`` (the process serves), ``GET /``."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/")
        if method not in ("GET", "HEAD"):
            return _respond(start_response, "405 Method Not Allowed", b"use GET\n", method)
        if path == "/metrics":
            body = generate_latest(registry)
            return _respond(start_response, "200 OK", body, method, CONTENT_TYPE_PLAIN_0_0_4)
        if path == "/healthz":
            return _respond(start_response, "200 OK", b"ok\n", method)
        if path == "/":
            return _respond(start_response, "200 OK", _INDEX, method)
        return _respond(start_response, "404 Not Found", b"not found\n", method)

    return app


def _respond(
    start_response: StartResponse,
    status: str,
    body: bytes,
    method: str,
    content_type: str = "text/plain; charset=utf-8",
) -> list[bytes]:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    if status.startswith("405"):
        headers.append(("Allow", "GET, HEAD"))
    start_response(status, headers)
    return [b"" if method == "HEAD" else body]


class _Server(ThreadingMixIn, WSGIServer):
    # One slow scrape (Redis timing out) must not hold up the next request.
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    # Prometheus and KEDA scrape every few seconds; an access log line each is noise.
    def log_message(self, format: str, *args: Any) -> None:
        pass


def create_server(host: str, port: int, app: WSGIApp) -> WSGIServer:
    """Bind ``host:port`` (IPv4 or IPv6) without serving yet."""
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("Server", (_Server,), {"address_family": family})
        server: WSGIServer = make_server(
            host, port, app, server_class=server_class, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return server


def serve(server: WSGIServer) -> None:
    """Serve until SIGTERM or SIGINT, then close the socket and return."""

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        # shutdown() waits for serve_forever() to return, so it cannot run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
