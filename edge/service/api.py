"""The station's local HTTP API: health, status, latest results, Prometheus metrics.

Standard library only (``http.server.ThreadingHTTPServer``): a kiosk UI, a
monitoring agent or an operator's ``curl`` on the same machine talk to it; it is
not meant to face a network. Hence:

* It binds to 127.0.0.1 by default, or to a Unix socket; a non-loopback address
  is refused unless the caller passes ``allow_non_loopback=True`` (and the
  systemd unit's ``IPAddressDeny=any`` blocks other hosts anyway).
* Every endpoint except ``/health`` needs ``Authorization: Bearer <token>``;
  the token is compared with ``hmac.compare_digest`` (constant time). A missing
  or wrong token gets 401 with ``WWW-Authenticate: Bearer``.
* ``/health`` is open on purpose: it answers only ``{"status": "ok"|"starting"|
  "degraded"}`` with 200 or 503, nothing about people or results, so that a
  load balancer, a kiosk browser or ``curl --fail`` in a health check needs no
  secret.

Endpoints (GET only):

==================  ======  =============================================================
``/health``         open    200 ``{"status": "ok"}`` when healthy, else 503 with the status
``/status``         token   the daemon's status dict (source state, engine, fps, counters)
``/results/latest`` token   ``{"results": [...]}``, newest last; ``?n=`` 1..1000 (default 10)
``/metrics``        token   Prometheus text format
==================  ======  =============================================================

The daemon supplies the data through ``ApiHandlers`` callbacks, so this module
knows nothing about capture or engines.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from edge.errors import ConfigError

log = logging.getLogger(__name__)

MIN_TOKEN_LENGTH = 16
MAX_RESULTS = 1000


@dataclass
class ApiHandlers:
    """What the API serves; each callable is called per request, from a server thread.

    health(): dict with at least ``"status"``; ``"ok"`` means HTTP 200, anything else 503.
    status(): JSON-able dict.
    latest_results(n): list of result dicts, newest last (e.g. ``edge.results.latest_results``).
    metrics(): (body bytes, content type), e.g. ``StationMetrics.render``.
    """

    health: Callable[[], dict]
    status: Callable[[], dict]
    latest_results: Callable[[int], list]
    metrics: Callable[[], tuple[bytes, str]]


def load_token(path: str | Path) -> str:
    """Read the API token from ``path`` (whitespace stripped). ConfigError when missing, empty or short.

    Make one with ``python3 -c 'import secrets; print(secrets.token_urlsafe(32))'``; store it
    readable only by root and the service group (0640 root:facediag).
    """
    p = Path(os.path.expandvars(str(path)))
    try:
        st = p.stat()
        token = p.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"api.token_file {p} does not exist; create it (see systemd/README.md, 'API token')") from None
    except OSError as exc:
        raise ConfigError(f"api.token_file {p} cannot be read: {exc.strerror}; it must be readable by the "
                          "service user (0640 root:facediag)") from exc
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(f"api.token_file {p} must hold one token of at least {MIN_TOKEN_LENGTH} characters "
                          "without spaces; generate one with secrets.token_urlsafe(32)")
    if st.st_mode & stat.S_IROTH:
        log.warning("api.token_file %s is readable by every user; chmod 0640 it", p)
    return token


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


class _Handler(BaseHTTPRequestHandler):
    server_version = "facediag"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 10  # seconds per socket operation: a stuck client cannot hold a thread forever

    # set on the subclass made per server
    handlers: ApiHandlers
    token: str

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature from the stdlib
        log.debug("api %s " + format, self._peer(), *args)

    def _peer(self) -> str:
        addr = self.client_address
        return addr[0] if isinstance(addr, tuple) and addr else "unix"

    def _send(self, code: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, payload: object, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        self._send(code, body, "application/json", extra)

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return False
        return hmac.compare_digest(presented.strip().encode(), self.token.encode())

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        url = urlsplit(self.path)
        route = url.path.rstrip("/") or "/"
        try:
            if route == "/health":
                health = self.handlers.health()
                self._json(200 if health.get("status") == "ok" else 503, {"status": health.get("status", "unknown")})
                return
            if route not in ("/status", "/results/latest", "/metrics"):
                self._json(404, {"error": f"no endpoint {route}; try /health, /status, /results/latest, /metrics"})
                return
            if not self._authorised():
                self._json(401, {"error": "missing or wrong bearer token (Authorization: Bearer <api token>)"},
                           {"WWW-Authenticate": 'Bearer realm="facediag"'})
                return
            if route == "/status":
                self._json(200, self.handlers.status())
            elif route == "/results/latest":
                query = parse_qs(url.query)
                try:
                    n = int(query.get("n", ["10"])[0])
                except ValueError:
                    self._json(400, {"error": "n must be an integer"})
                    return
                if not 1 <= n <= MAX_RESULTS:
                    self._json(400, {"error": f"n must be between 1 and {MAX_RESULTS}"})
                    return
                self._json(200, {"results": self.handlers.latest_results(n)})
            else:
                body, content_type = self.handlers.metrics()
                self._send(200, body, content_type)
        except Exception:  # noqa: BLE001 - a failing callback must not take the API down
            log.exception("api: %s failed", route)
            self._json(500, {"error": "internal error; see the daemon's log"})

    do_HEAD = do_GET  # noqa: N815

    def _not_allowed(self) -> None:
        self._json(405, {"error": "only GET is supported"}, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _TCPServer(ThreadingHTTPServer):
    daemon_threads = True


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class ApiServer:
    """The HTTP API on a TCP port (loopback) or a Unix socket, served from a background thread.

    ``port=0`` picks a free port (see ``.address``). ``unix_socket`` wins over bind/port.
    """

    def __init__(
        self,
        handlers: ApiHandlers,
        token: str,
        *,
        bind: str = "127.0.0.1",
        port: int = 8787,
        unix_socket: str | Path | None = None,
        allow_non_loopback: bool = False,
    ) -> None:
        if not token or len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"the API token must be at least {MIN_TOKEN_LENGTH} characters (api.token_file)")
        if unix_socket is None and not allow_non_loopback and not is_loopback(bind):
            raise ConfigError(
                f"api.bind {bind!r} is not a loopback address; the API is for this machine only. Use 127.0.0.1, "
                "::1 or api.unix_socket (a reverse proxy with TLS can publish it if you must)"
            )
        handler = type("FacediagApiHandler", (_Handler,), {"handlers": handlers, "token": token})
        self.unix_socket = Path(unix_socket) if unix_socket else None
        try:
            if self.unix_socket is not None:
                if self.unix_socket.is_socket():
                    self.unix_socket.unlink()  # a stale socket from a previous run
                self._server: socketserver.BaseServer = _UnixHTTPServer(str(self.unix_socket), handler)
                os.chmod(self.unix_socket, 0o660)
            else:
                cls = _TCP6Server if ":" in bind else _TCPServer
                self._server = cls((bind.strip("[]"), port), handler)
        except OSError as exc:
            where = self.unix_socket or f"{bind}:{port}"
            raise ConfigError(f"the API cannot listen on {where}: {exc.strerror}; pick another api.port / "
                              "api.unix_socket or stop what is using it") from exc
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str | tuple:
        return self._server.server_address

    @property
    def url(self) -> str:
        """``http://host:port`` for TCP (use with urllib / curl); ``unix:<path>`` for a socket."""
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        host, port = self._server.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> ApiServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="facediag-api", daemon=True)
        self._thread.start()
        log.info("API listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()
        if self.unix_socket is not None and self.unix_socket.is_socket():
            self.unix_socket.unlink()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
