"""A small HTTP/1.1 server core built for load: one I/O thread, a bounded worker pool, bounded streams.

Why not ``http.server.ThreadingHTTPServer``: it starts one thread per connection with
a listen backlog of 5, reads each request inside that thread (a slow client holds a
thread for as long as it likes), writes headers and body in separate sends, and logs
a traceback for every client that resets early. Here:

* **One selector thread** accepts (``listen`` backlog ``BACKLOG``) and reads request
  heads and small bodies without blocking. A connection reaches a worker only once a
  whole request is in, so slow or idle clients cost a socket, never a thread. A
  request head has ``HEAD_TIMEOUT_S`` to arrive; an idle keep-alive connection is
  closed after ``IDLE_TIMEOUT_S``; at most ``MAX_CONNECTIONS`` are open.
* **A bounded worker pool** (``workers`` threads, a queue of ``queue_size``) runs the
  application; when the queue is full the request gets ``503`` at once.
* **One send per response**: status line, headers and body leave in one buffer.
* **Streams** (server-sent events, the preview) run in their own threads, at most
  ``max_streams`` at once (else ``503``).
* **Client failures** (reset, broken pipe, timeout, garbage) are counted and logged as
  one line per client, rate-limited to ``LOG_EVERY_S``; never a traceback.

The application is a callable ``Request -> Response``; a ``Response`` may carry a
``stream`` callable that receives the socket after the head was sent.
"""

from __future__ import annotations

import collections
import logging
import queue
import selectors
import socket
import threading
import time

from facediag.edge.service.httpmsg import (
    MAX_BODY_BYTES,
    App,
    BadRequest,
    Request,
    Response,
    Stream,
    json_error,
    parse_head,
)

log = logging.getLogger(__name__)

BACKLOG = 256
HEAD_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 15.0
SEND_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16 * 1024
MAX_CONNECTIONS = 512
LOG_EVERY_S = 5.0


class _Conn:
    __slots__ = ("sock", "peer", "buf", "deadline", "served")

    def __init__(self, sock: socket.socket, peer: str, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.buf = b""
        self.deadline = now + HEAD_TIMEOUT_S
        self.served = 0


class ClientFailures:
    """Counts failed clients; logs at most one line per ``LOG_EVERY_S`` (with how many were not logged)."""

    def __init__(self) -> None:
        self.count = 0
        self._next = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, peer: str, what: str) -> None:
        with self._lock:
            self.count += 1
            now = time.monotonic()
            if now < self._next:
                self._suppressed += 1
                return
            extra = f" ({self._suppressed} more failed clients not logged)" if self._suppressed else ""
            self._suppressed = 0
            self._next = now + LOG_EVERY_S
        log.info("api client %s: %s%s", peer, what, extra)


class HttpCore:
    """Serve ``app`` on a listening socket (already bound); see the module docstring."""

    def __init__(self, listener: socket.socket, app: App, *, workers: int = 8, queue_size: int = 64,
                 max_streams: int = 8) -> None:
        self.listener = listener
        self.app = app
        self.failures = ClientFailures()
        self._jobs: queue.Queue[tuple[_Conn, Request] | None] = queue.Queue(queue_size)
        self._streams = threading.BoundedSemaphore(max_streams)
        self._returned: collections.deque[_Conn] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers = workers
        self.listener.listen(BACKLOG)
        self.listener.setblocking(False)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._threads.append(threading.Thread(target=self._io_loop, name="facediag-api-io", daemon=True))
        for i in range(self._workers):
            self._threads.append(threading.Thread(target=self._work, name=f"facediag-api-{i}", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        for _ in range(self._workers):
            try:
                self._jobs.put_nowait(None)
            except queue.Full:
                break
        for t in self._threads:
            t.join(2)
        self._threads = []
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- the I/O thread -----------------------------------------------------------------------
    def _io_loop(self) -> None:
        sel = self._sel
        sel.register(self.listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        next_sweep = 0.0
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.5):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj is self._wake_r:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except OSError:
                        pass
                else:
                    self._readable(key.data)
            while self._returned:
                self._register(self._returned.popleft())
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 0.5
                self._sweep(now)
        for key in list(sel.get_map().values()):
            sel.unregister(key.fileobj)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("api: accept failed: %s", exc)
                return
            peer = addr[0] if isinstance(addr, tuple) and addr else "unix"
            if len(self._conns) >= MAX_CONNECTIONS:
                self.failures(peer, f"refused: {MAX_CONNECTIONS} connections already open")
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, peer, time.monotonic())
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _register(self, conn: _Conn) -> None:
        if conn.sock.fileno() < 0:
            return
        conn.deadline = time.monotonic() + (IDLE_TIMEOUT_S if not conn.buf else HEAD_TIMEOUT_S)
        self._conns[conn.sock.fileno()] = conn
        self._sel.register(conn.sock, selectors.EVENT_READ, conn)
        if conn.buf:
            self._try_dispatch(conn)  # a pipelined request already read

    def _unregister(self, conn: _Conn) -> None:
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self._conns.pop(conn.sock.fileno(), None)

    def _close(self, conn: _Conn) -> None:
        self._unregister(conn)
        try:
            conn.sock.close()
        except OSError:
            pass

    @staticmethod
    def _drop(conn: _Conn) -> None:
        """Close a connection a worker holds (it is not in the selector)."""
        try:
            conn.sock.close()
        except OSError:
            pass

    def _sweep(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if now > c.deadline]:
            if conn.buf or not conn.served:
                self.failures(conn.peer, "closed: no complete request in time")
            self._close(conn)

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.failures(conn.peer, f"read failed: {exc.strerror or exc}")
            self._close(conn)
            return
        if not data:
            if conn.buf:
                self.failures(conn.peer, "closed in the middle of a request")
            self._close(conn)
            return
        if not conn.buf:
            conn.deadline = time.monotonic() + HEAD_TIMEOUT_S
        conn.buf += data
        self._try_dispatch(conn)

    def _try_dispatch(self, conn: _Conn) -> None:
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.buf) > MAX_HEAD_BYTES:
                self._refuse(conn, 431, "request head too large")
            return
        try:
            request, length = parse_head(conn.buf[:end], conn.peer)
        except BadRequest as exc:
            self._refuse(conn, exc.status, str(exc))
            return
        total = end + 4 + length
        if len(conn.buf) < total:
            return  # the body is still coming
        request.body = conn.buf[end + 4:total]
        conn.buf = conn.buf[total:]
        self._unregister(conn)
        try:
            self._jobs.put_nowait((conn, request))
        except queue.Full:
            self.failures(conn.peer, "refused: the API is busy")
            self._send_and_close(conn, json_error(503, "busy; retry").encode(request.method, False))

    def _refuse(self, conn: _Conn, status: int, why: str) -> None:
        self.failures(conn.peer, why)
        self._unregister(conn)
        self._send_and_close(conn, json_error(status, why).encode("GET", False))

    def _send_and_close(self, conn: _Conn, data: bytes) -> None:
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(1.0)
            conn.sock.sendall(data)
        except OSError:
            pass
        try:
            conn.sock.close()
        except OSError:
            pass

    # -- workers ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None or self._stop.is_set():
                if job is not None:
                    self._send_and_close(job[0], b"")
                return
            conn, request = job
            self._serve(conn, request)

    def _serve(self, conn: _Conn, request: Request) -> None:
        try:
            response = self.app(request)
        except Exception:  # noqa: BLE001 - the application failed: 500, logged with its traceback
            log.exception("api: %s %s failed", request.method, request.path)
            response = json_error(500, "internal error; see the daemon's log")
        keep_alive = request.keep_alive and response.stream is None and not self._stop.is_set()
        sock = conn.sock
        try:
            sock.setblocking(True)
            sock.settimeout(SEND_TIMEOUT_S)
            if response.stream is not None and request.method != "HEAD":
                self._start_stream(conn, request, response)
                return
            sock.sendall(response.encode(request.method, keep_alive))
        except OSError as exc:
            self.failures(conn.peer, f"send failed: {exc.strerror or exc.__class__.__name__}")
            self._drop(conn)
            return
        conn.served += 1
        if not keep_alive:
            self._drop(conn)
            return
        sock.setblocking(False)
        self._returned.append(conn)
        self._wake()

    def _start_stream(self, conn: _Conn, request: Request, response: Response) -> None:
        if not self._streams.acquire(blocking=False):
            self.failures(conn.peer, "refused: too many open streams")
            self._send_and_close(conn, json_error(503, "too many open streams").encode(request.method, False))
            return
        stream = response.stream
        assert stream is not None

        def run() -> None:
            try:
                conn.sock.sendall(response.head(request.method, False))
                stream(conn.sock)
            except OSError as exc:
                if not self._stop.is_set():
                    self.failures(conn.peer, f"stream ended: {exc.strerror or exc.__class__.__name__}")
            except Exception:  # noqa: BLE001 - a failing stream must not take the API down
                log.exception("api: stream %s failed", request.path)
            finally:
                self._streams.release()
                try:
                    conn.sock.close()
                except OSError:
                    pass

        threading.Thread(target=run, name="facediag-api-stream", daemon=True).start()


def make_listener(family: int, address: str | tuple[str, int]) -> socket.socket:
    """A bound (not yet listening) stream socket; SO_REUSEADDR for TCP."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


__all__ = ["App", "HttpCore", "Request", "Response", "Stream", "make_listener", "MAX_BODY_BYTES"]
