"""The kiosk and staff pages, their event streams, the preview and their POST actions.

Routes (added to the station API by ``KioskWeb.route``):

==============================  ==========  ====================================================
``GET /kiosk``                  loopback    the screening page (a fresh page key in a meta tag)
``GET /kiosk/events?k=KEY``     page key    server-sent events: state, progress, result
``GET /kiosk/preview.mjpg?k=``  page key    live preview, JPEG in memory only, <= ``PREVIEW_FPS``
``POST /kiosk/session/start``   key+Origin  Start (consent); ``/kiosk/session/cancel``: Cancel
``GET /web/<file>``             loopback    the pages' CSS/JS, ``/web/i18n/<lang>.json``
``GET /kiosk/labels.json``      loopback    class names and display names from the bundle
``GET /staff``                  loopback    login form, or the staff page with a session cookie
``POST /staff/login``           Origin      ``{"token": ...}`` -> HttpOnly SameSite=Strict cookie
``/staff/api/*``                cookie      status, results, ack, visit, cancel, logout
==============================  ==========  ====================================================

Cross-site requests: every POST from a page needs the page key (kiosk) or the session
cookie (staff) *and* an ``Origin`` equal to ``http://<Host>`` with a loopback Host
(which also defeats DNS rebinding); a ``Sec-Fetch-Site`` other than ``same-origin``
is refused. A bearer token (``curl``) is accepted instead, without Origin. No CORS
header is ever sent, so a foreign page can neither read answers nor preflight a JSON
POST. The page key is random per daemon and only readable by a same-origin page.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from facediag.edge.kiosk.controller import KioskController
from facediag.edge.kiosk.events import sse_stream
from facediag.edge.kiosk.session import SessionRuleError
from facediag.edge.kiosk.texts import bundle_display, languages, web_file
from facediag.edge.service.api import ApiHandlers, bearer_ok, json_response
from facediag.edge.service.httpcore import Request, Response

log = logging.getLogger(__name__)

PREVIEW_FPS = 10.0
PREVIEW_WIDTH = 480
COOKIE = "facediag_staff"
STAFF_SESSION_S = 12 * 3600
MAX_STAFF_SESSIONS = 32
CONTENT_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".json": "application/json", ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def loopback_host(host: str) -> bool:
    """A Host header naming this machine literally (no name that DNS could point elsewhere)."""
    hostname = urlsplit("//" + host).hostname or ""
    return hostname in ("127.0.0.1", "localhost", "::1") or hostname.startswith("127.")


def same_origin(request: Request) -> bool:
    host = request.header("host")
    origin = request.header("origin")
    site = request.header("sec-fetch-site")
    if site and site != "same-origin":
        return False
    return bool(host and origin) and loopback_host(host) and origin == f"http://{host}"


class PreviewEncoder:
    """JPEG of the newest frame, encoded at most once per frame and shared by every viewer (memory only)."""

    def __init__(self, frames: Callable[[], tuple[int, Any]]) -> None:
        self._frames = frames
        self._lock = threading.Lock()
        self._seq = -1
        self._jpeg = b""

    def jpeg(self) -> tuple[int, bytes]:
        seq, image = self._frames()
        with self._lock:
            if seq != self._seq and image is not None:
                import cv2

                h, w = image.shape[:2]
                if w > PREVIEW_WIDTH:
                    image = cv2.resize(image, (PREVIEW_WIDTH, max(1, h * PREVIEW_WIDTH // w)),
                                       interpolation=cv2.INTER_AREA)
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 70])
                if ok:
                    self._seq, self._jpeg = seq, buf.tobytes()
            return self._seq, self._jpeg


class KioskWeb:
    """The routes of the module docstring for one station (``facediag.edge.service.api.RouteExtension``)."""

    def __init__(self, controller: KioskController, handlers_of: Callable[[], ApiHandlers], token: str,
                 bundle_path: str, classes: list[str], station_id: str = "") -> None:
        self.kiosk = controller
        self._handlers_of = handlers_of
        self.token = token
        self.page_key = secrets.token_urlsafe(24)
        self.labels = bundle_display(bundle_path, classes)
        self.labels["languages"] = languages()
        self.station_id = station_id
        self._staff: dict[str, float] = {}
        self._lock = threading.Lock()
        self.preview = PreviewEncoder(controller.latest_frame)

    # -- plumbing -----------------------------------------------------------------------------
    def announce_stopping(self) -> None:
        self.kiosk.announce_stopping()
        time.sleep(0.1)  # let the streams carry the last state to the pages

    def _page(self, name: str) -> Response:
        raw = web_file(name)
        if raw is None:
            return json_response(500, {"error": f"page {name} is missing from the installation"})
        body = raw.replace(b"{{PAGE_KEY}}", self.page_key.encode()).replace(b"{{STATION_ID}}",
                                                                            self.station_id.encode())
        return Response(200, body, "text/html; charset=utf-8", dict(PAGE_HEADERS))

    def _key_ok(self, request: Request) -> bool:
        presented = request.header("x-kiosk-key") or (request.query.get("k") or [""])[0]
        return bool(presented) and hmac.compare_digest(presented.encode(), self.page_key.encode())

    def _staff_ok(self, request: Request) -> bool:
        sid = ""
        for part in request.header("cookie").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                sid = value
        now = time.monotonic()
        with self._lock:
            for s in [s for s, until in self._staff.items() if until < now]:
                del self._staff[s]
            return bool(sid) and any(hmac.compare_digest(sid.encode(), s.encode()) for s in self._staff)

    def _post_allowed(self, request: Request, page_ok: Callable[[Request], bool]) -> Response | None:
        """None when a POST may proceed: bearer token, or the page's credential plus a same-origin Origin."""
        if bearer_ok(request, self.token):
            return None
        if not same_origin(request):
            return json_response(403, {"error": "cross-site request refused (Origin must be this station)"})
        if not page_ok(request):
            return json_response(403, {"error": "missing or wrong page credential"})
        return None

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        if not request.body:
            return {}
        try:
            doc = json.loads(request.body)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    # -- routes -------------------------------------------------------------------------------
    def route(self, request: Request) -> Response | None:
        path = request.path
        if not (path == "/kiosk" or path == "/staff" or path.startswith(("/kiosk/", "/staff/", "/web/"))):
            return None
        if request.peer != "unix" and not loopback_host(request.header("host")):
            return json_response(403, {"error": "the pages are served to this machine only (Host must be loopback)"})
        if request.method == "OPTIONS":
            return Response(204, b"", "text/plain", {"Allow": "GET, POST"})
        if request.method == "POST":
            return self._post(request, path)
        if request.method not in ("GET", "HEAD"):
            return json_response(405, {"error": "GET or POST only"}, {"Allow": "GET, HEAD, POST"})
        return self._get(request, path)

    def _get(self, request: Request, path: str) -> Response:
        if path == "/kiosk":
            return self._page("kiosk.html")
        if path == "/staff":
            return self._page("staff.html" if self._staff_ok(request) else "staff-login.html")
        if path.startswith("/web/"):
            name = path[len("/web/"):]
            raw = web_file(name)
            suffix = name[name.rfind("."):] if "." in name else ""
            if raw is None or suffix not in CONTENT_TYPES:
                return json_response(404, {"error": f"no page file {name}"})
            return Response(200, raw, CONTENT_TYPES[suffix])
        if path == "/kiosk/labels.json":
            return json_response(200, self.labels)
        if path == "/kiosk/events":
            if not self._key_ok(request):
                return json_response(403, {"error": "missing or wrong page key"})
            return self._events()
        if path == "/kiosk/preview.mjpg":
            if not self._key_ok(request):
                return json_response(403, {"error": "missing or wrong page key"})
            return Response(200, b"", "multipart/x-mixed-replace; boundary=frame", stream=self._preview_stream)
        if path.startswith("/staff/"):
            if not (self._staff_ok(request) or bearer_ok(request, self.token)):
                return json_response(401, {"error": "log in on /staff first"})
            return self._staff_get(request, path)
        return json_response(404, {"error": f"no page {path}"})

    def _events(self) -> Response:
        return Response(200, b"", "text/event-stream; charset=utf-8", {"X-Accel-Buffering": "no"},
                        stream=sse_stream(self.kiosk.hub, self.kiosk.snapshot, lambda: self.kiosk.hub.closed))

    def _preview_stream(self, sock: socket.socket) -> None:
        period = 1.0 / PREVIEW_FPS
        sent = -1
        hub = self.kiosk.hub
        while not hub.closed:
            t0 = time.monotonic()
            seq, jpeg = self.preview.jpeg()
            if seq != sent and jpeg:
                sent = seq
                sock.sendall(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                             + jpeg + b"\r\n")
            time.sleep(max(0.0, period - (time.monotonic() - t0)))

    def _staff_get(self, request: Request, path: str) -> Response:
        handlers = self._handlers_of()
        if path == "/staff/events":
            return self._events()
        if path == "/staff/api/status":
            return json_response(200, handlers.status())
        if path == "/staff/api/results":
            results = handlers.latest_results(20)
            for r in results:
                r["acknowledged"] = r.get("session_id") in self.kiosk.acknowledged
            return json_response(200, {"results": results})
        return json_response(404, {"error": f"no staff endpoint {path}"})

    def _post(self, request: Request, path: str) -> Response:
        if path == "/staff/login":
            return self._login(request)
        staff = path.startswith("/staff/")
        refusal = self._post_allowed(request, self._staff_ok if staff else self._key_ok)
        if refusal is not None:
            return refusal
        body = self._body(request)
        try:
            if path in ("/kiosk/session/start", "/staff/api/start"):
                return json_response(200, self.kiosk.start_session())
            if path in ("/kiosk/session/cancel", "/staff/api/cancel"):
                return json_response(200, self.kiosk.cancel_session())
            if path == "/staff/api/visit":
                visit = body.get("visit_id")
                return json_response(200, self.kiosk.set_visit(visit if isinstance(visit, str) else None))
            if path == "/staff/api/ack":
                sid = body.get("session_id")
                if not isinstance(sid, str) or not sid:
                    return json_response(400, {"error": "session_id required"})
                self.kiosk.acknowledge(sid)
                return json_response(200, {"acknowledged": sid})
            if path == "/staff/logout":
                return json_response(200, {"logged_out": True},
                                     {"Set-Cookie": f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"})
        except SessionRuleError as exc:
            return json_response(409, {"error": str(exc)})
        return json_response(404, {"error": f"no action {path}"})

    def _login(self, request: Request) -> Response:
        if not same_origin(request):
            return json_response(403, {"error": "cross-site request refused (Origin must be this station)"})
        token = self._body(request).get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            time.sleep(0.2)  # slows guessing; the token is long anyway
            return json_response(401, {"error": "wrong token"})
        sid = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._staff) >= MAX_STAFF_SESSIONS:
                del self._staff[min(self._staff, key=lambda s: self._staff[s])]
            self._staff[sid] = time.monotonic() + STAFF_SESSION_S
        cookie = f"{COOKIE}={sid}; Path=/; Max-Age={STAFF_SESSION_S}; HttpOnly; SameSite=Strict"
        return json_response(200, {"logged_in": True}, {"Set-Cookie": cookie})
