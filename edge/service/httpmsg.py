"""HTTP/1.x messages for ``facediag.edge.service.httpcore``: the parsed request, the response, the head parser."""

from __future__ import annotations

import json
import socket
import typing
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

MAX_BODY_BYTES = 64 * 1024


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""
    peer: str = "unix"

    @property
    def path(self) -> str:
        return urlsplit(self.target).path.rstrip("/") or "/"

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query)

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    @property
    def keep_alive(self) -> bool:
        conn = self.header("connection").lower()
        if self.version == "HTTP/1.0":
            return conn == "keep-alive"
        return conn != "close"


Stream = typing.Callable[[socket.socket], None]  # typing.Callable: evaluated at run time (3.8)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Stream | None = None  # called with the socket (blocking, with a send timeout) after the head

    def head(self, method: str, keep_alive: bool) -> bytes:
        reason = HTTPStatus(self.status).phrase if self.status in HTTPStatus._value2member_map_ else ""
        lines = [f"HTTP/1.1 {self.status} {reason}", "Server: facediag", f"Content-Type: {self.content_type}",
                 "Cache-Control: no-store", "X-Content-Type-Options: nosniff"]
        if self.stream is None:
            lines.append(f"Content-Length: {len(self.body)}")
            lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
        else:
            lines.append("Connection: close")
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def encode(self, method: str, keep_alive: bool) -> bytes:
        """Head and body in one buffer (one ``sendall``)."""
        return self.head(method, keep_alive) + (b"" if method == "HEAD" or self.stream else self.body)


App = typing.Callable[[Request], Response]


class BadRequest(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def parse_head(raw: bytes, peer: str) -> tuple[Request, int]:
    """The request line and headers (``raw`` ends with a blank line); returns (request, content length)."""
    try:
        text = raw.decode("latin-1")
        line, *rest = text.split("\r\n")
        method, target, version = line.split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    if version not in ("HTTP/1.0", "HTTP/1.1") or not target.startswith("/") or not method.isalpha():
        raise BadRequest(400, "malformed request line")
    headers: dict[str, str] = {}
    for h in rest:
        if not h:
            continue
        name, sep, value = h.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise BadRequest(501, "chunked request bodies are not supported")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "bad Content-Length") from None
    if length < 0:
        raise BadRequest(400, "bad Content-Length")
    if length > MAX_BODY_BYTES:
        raise BadRequest(413, "request body too large")
    return Request(method.upper(), target, version, headers, b"", peer), length


def json_error(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": message}).encode())
