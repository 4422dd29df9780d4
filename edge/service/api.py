"""The station's local HTTP API: health, status, latest results, Prometheus metrics.

Standard library only (``facediag.edge.service.httpcore``: one I/O thread, a
bounded worker pool, a real listen backlog, per-connection timeouts): a kiosk UI,
a monitoring agent or an operator's ``curl`` on the same machine talk to it; it
is not meant to face a network. Hence:

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

Endpoints (GET; the kiosk and staff pages add their own, see ``facediag.edge.kiosk.web``):

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
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from facediag.edge.errors import ConfigError
from facediag.edge.service.httpcore import HttpCore, Request, Response, make_listener

log = logging.getLogger(__name__)

MIN_TOKEN_LENGTH = 16
MAX_RESULTS = 1000


@dataclass
class ApiHandlers:
    """What the API serves; each callable is called per request, from a server thread.

    health(): dict with at least ``"status"``; ``"ok"`` means HTTP 200, anything else 503.
    status(): JSON-able dict.
    latest_results(n): list of result dicts, newest last (the station: ``StationStatus.latest_results``, valid
    records only, read with ``facediag.edge.results.latest_screening_results``).
    metrics(): (body bytes, content type), e.g. ``StationMetrics.render``.
    """

    health: Callable[[], dict[str, Any]]
    status: Callable[[], dict[str, Any]]
    latest_results: Callable[[int], list[dict[str, Any]]]
    metrics: Callable[[], tuple[bytes, str]]


CREDENTIAL_NAME = "api.token"


def credential_path(name: str, env: dict[str, str] | None = None) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/name`` when systemd passed that credential (``LoadCredential=``), else None."""
    directory = (os.environ if env is None else env).get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    candidate = Path(directory) / name
    return candidate if candidate.is_file() else None


def load_token(path: str | Path, env: dict[str, str] | None = None) -> str:
    """Read the API token (whitespace stripped). ConfigError when missing, empty or short.

    Under systemd the unit passes it as a credential (``LoadCredential=api.token:/etc/facediag/api.token``):
    ``$CREDENTIALS_DIRECTORY/api.token`` is read then, and ``path`` (``api.token_file``) only without it,
    so the file in /etc can stay readable by root alone. Make one with
    ``python3 -c 'import secrets; print(secrets.token_urlsafe(32))'``.
    """
    credential = credential_path(CREDENTIAL_NAME, env)
    if credential is not None:
        log.info("API token: systemd credential %s", credential)
    p = credential if credential is not None else Path(os.path.expandvars(str(path)))
    try:
        from facediag.edge.smallfile import read_small_text

        token = read_small_text(p, "api.token_file").strip()  # regular file, bounded, UTF-8 (issue 11)
        st = p.stat()
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
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def bearer_ok(request: Request, token: str) -> bool:
    """``Authorization: Bearer <token>`` matches (constant-time comparison)."""
    scheme, _, presented = request.header("authorization").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def json_response(code: int, payload: object, extra: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), default=str).encode()
    return Response(code, body, "application/json", dict(extra or {}))


class RouteExtension(Protocol):
    """More routes on the same server (the kiosk and staff pages): None when a path is not theirs."""

    def route(self, request: Request) -> Response | None: ...

    def announce_stopping(self) -> None: ...


UNAUTHORISED = {"error": "missing or wrong bearer token (Authorization: Bearer <api token>)"}


class ApiApp:
    """The routes of the module docstring, plus those of an optional ``RouteExtension``."""

    def __init__(self, handlers: ApiHandlers, token: str, extension: RouteExtension | None = None) -> None:
        self.handlers = handlers
        self.token = token
        self.extension = extension

    def __call__(self, request: Request) -> Response:
        route = request.path
        if self.extension is not None:
            extended = self.extension.route(request)
            if extended is not None:
                return extended
        if request.method == "OPTIONS":  # no CORS: a cross-site preflight gets no Access-Control-Allow-* header
            return Response(204, b"", "text/plain", {"Allow": "GET, HEAD, POST"})
        if route not in ("/health", "/status", "/results/latest", "/metrics"):
            return json_response(404, {"error": f"no endpoint {route}; try /health, /status, /results/latest, "
                                                "/metrics, /kiosk, /staff"})
        if request.method not in ("GET", "HEAD"):
            return json_response(405, {"error": "only GET is supported here"}, {"Allow": "GET, HEAD"})
        if route == "/health":
            health = self.handlers.health()
            answer = {"status": health.get("status", "unknown")}
            if health.get("degraded"):
                answer["degraded"] = health["degraded"]  # a short code (e.g. engine-fallback), no details
            return json_response(200 if answer["status"] == "ok" else 503, answer)
        if not bearer_ok(request, self.token):
            return json_response(401, UNAUTHORISED, {"WWW-Authenticate": 'Bearer realm="facediag"'})
        if route == "/status":
            return json_response(200, self.handlers.status())
        if route == "/results/latest":
            try:
                n = int(request.query.get("n", ["10"])[0])
            except ValueError:
                return json_response(400, {"error": "n must be an integer"})
            if not 1 <= n <= MAX_RESULTS:
                return json_response(400, {"error": f"n must be between 1 and {MAX_RESULTS}"})
            return json_response(200, {"results": self.handlers.latest_results(n)})
        body, content_type = self.handlers.metrics()
        return Response(200, body, content_type)


class ApiServer:
    """The HTTP API on a TCP port (loopback) or a Unix socket, served by ``HttpCore`` threads.

    ``port=0`` picks a free port (see ``.address``). ``unix_socket`` wins over bind/port.
    ``extension`` adds routes (the kiosk pages, ``facediag.edge.kiosk.web``).
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
        extension: RouteExtension | None = None,
        workers: int = 8,
    ) -> None:
        if not token or len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"the API token must be at least {MIN_TOKEN_LENGTH} characters (api.token_file)")
        if unix_socket is None and not allow_non_loopback and not is_loopback(bind):
            raise ConfigError(
                f"api.bind {bind!r} is not a loopback address; the API is for this machine only. Use 127.0.0.1, "
                "::1 or api.unix_socket (a reverse proxy with TLS can publish it if you must)"
            )
        self.app = ApiApp(handlers, token, extension)
        self.unix_socket = Path(unix_socket) if unix_socket else None
        try:
            if self.unix_socket is not None:
                if self.unix_socket.is_socket():
                    from facediag.edge.smallfile import unix_socket_in_use

                    if unix_socket_in_use(self.unix_socket):  # issue 11: never steal a live daemon's socket
                        raise ConfigError(f"the API cannot listen on {self.unix_socket}: another process (a second "
                                          "facediag daemon?) is serving there; stop it or pick another api.unix_socket")
                    self.unix_socket.unlink()  # a stale socket from a previous run
                listener = make_listener(socket.AF_UNIX, str(self.unix_socket))
                os.chmod(self.unix_socket, 0o660)
            else:
                family = socket.AF_INET6 if ":" in bind else socket.AF_INET
                listener = make_listener(family, (bind.strip("[]"), port))
        except OSError as exc:
            where = self.unix_socket or f"{bind}:{port}"
            raise ConfigError(f"the API cannot listen on {where}: {exc.strerror}; pick another api.port / "
                              "api.unix_socket or stop what is using it") from exc
        self._listener = listener
        self._address: Any = listener.getsockname()  # kept: still known after stop()
        self.core = HttpCore(listener, self.app, workers=workers)
        self._started = False

    @property
    def handlers(self) -> ApiHandlers:
        return self.app.handlers

    @property
    def address(self) -> str | tuple[Any, ...]:
        address = self._address
        return address if isinstance(address, (str, tuple)) else str(address)

    @property
    def url(self) -> str:
        """``http://host:port`` for TCP (use with urllib / curl); ``unix:<path>`` for a socket."""
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        address = self.address
        host, port = (str(address[0]), address[1]) if isinstance(address, tuple) else (address, "")
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> ApiServer:
        self.core.start()
        self._started = True
        log.info("API listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self.app.extension is not None and self._started:
            try:
                self.app.extension.announce_stopping()
            except Exception:  # noqa: BLE001 - stopping matters more
                log.exception("api: announcing the stop failed")
        self.core.stop()
        self._started = False
        self._listener.close()
        if self.unix_socket is not None and self.unix_socket.is_socket():
            self.unix_socket.unlink()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
