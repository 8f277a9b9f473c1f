"""HTTP/1.1 to `box serve` over its unix socket or TCP, with the standard library only."""

from __future__ import annotations

import http.client
import json
import os
import socket as _socket
import urllib.parse
from typing import Any, Dict, Iterator, Optional, Tuple

from .exceptions import SandboxError, error_for

DEFAULT_SOCKET = "/run/box/serve.sock"


class UnixHTTPConnection(http.client.HTTPConnection):
    """An `HTTPConnection` whose `connect()` opens an AF_UNIX socket."""

    def __init__(self, path: str, timeout: Optional[float] = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Transport:
    """Where the server is and how to speak to it: one connection per request, so a
    `Transport` (and every object holding one) can be used from several threads at once."""

    def __init__(
        self,
        socket: Optional[str] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
        request_timeout: Optional[float] = None,
    ) -> None:
        """`socket` or `url` (+ `token`) if given, else `$BOX_SOCKET`, else `$BOX_URL` (+
        `$BOX_TOKEN`), else `$BOX_STATE_DIR/serve.sock`, else `/run/box/serve.sock`.

        `request_timeout` bounds each socket operation (None: no limit, as a foreground
        command may run for long without output)."""
        if socket is None and url is None:
            socket = os.environ.get("BOX_SOCKET") or None
            if socket is None:
                url = os.environ.get("BOX_URL") or None
            if socket is None and url is None:
                state = os.environ.get("BOX_STATE_DIR")
                socket = os.path.join(state, "serve.sock") if state else DEFAULT_SOCKET
        if token is None and url is not None:
            token = os.environ.get("BOX_TOKEN") or None
        self.socket = socket if url is None else None
        self.token = token.strip() if token else None
        self.request_timeout = request_timeout
        self._base_path = ""
        self._url: Optional[urllib.parse.SplitResult] = None
        if self.socket is None:
            assert url is not None
            u = urllib.parse.urlsplit(url)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(f"unsupported URL {url!r}: want http://HOST:PORT")
            self._url = u
            self._base_path = u.path.rstrip("/")

    def __repr__(self) -> str:
        where = self.socket if self.socket is not None else self._url.geturl()  # type: ignore[union-attr]
        return f"Transport({where!r})"

    def _connection(self) -> http.client.HTTPConnection:
        if self.socket is not None:
            return UnixHTTPConnection(self.socket, timeout=self.request_timeout)
        u = self._url
        assert u is not None
        cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        return cls(u.hostname or "", u.port, timeout=self.request_timeout)

    def _send(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        query: Optional[Dict[str, str]] = None,
    ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        if query:
            path = f"{path}?{urllib.parse.urlencode(query)}"
        headers = {"Host": "box", "Accept": "application/json, application/x-ndjson"}
        data: Optional[bytes] = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection()
        try:
            conn.request(method, self._base_path + path, body=data, headers=headers)
            resp = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if resp.status >= 400:
            try:
                raw = resp.read()
            finally:
                conn.close()
            raise error_for(resp.status, raw)
        return conn, resp

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Dict[str, Any]] = None,
        query: Optional[Dict[str, str]] = None,
    ) -> Any:
        """The decoded JSON answer (None for an empty one, e.g. 204)."""
        conn, resp = self._send(method, path, body, query)
        try:
            raw = resp.read()
        finally:
            conn.close()
        return json.loads(raw) if raw.strip() else None

    def stream(
        self, method: str, path: str, body: Optional[Dict[str, Any]] = None
    ) -> Iterator[Dict[str, Any]]:
        """An NDJSON answer's objects, each as soon as its line has arrived (`http.client`
        undoes the chunked encoding; `read1` returns what is there without waiting for more).
        """
        conn, resp = self._send(method, path, body)
        try:
            if resp.status != 200:
                raise SandboxError(f"expected a stream, got HTTP {resp.status}", resp.status)
            pending = b""
            while True:
                data = resp.read1(64 * 1024)
                if not data:
                    break
                pending += data
                if b"\n" not in data:
                    continue
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():
                yield json.loads(pending)
        finally:
            conn.close()
