"""`Sandbox`: one microVM sandbox of a `box serve` server."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Dict, List, Optional, Type

from ._transport import Transport
from .commands import Commands
from .exceptions import NotFoundError


@dataclass(frozen=True)
class SandboxInfo:
    """What the server says of a sandbox (times are seconds since the epoch)."""

    sandbox_id: str
    image: str
    state: str
    metadata: Dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    expires_at: int = 0
    from_pool: bool = False

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "SandboxInfo":
        return cls(
            sandbox_id=d["id"],
            image=d.get("image", ""),
            state=d.get("state", ""),
            metadata=dict(d.get("metadata") or {}),
            created_at=int(d.get("created_at", 0)),
            expires_at=int(d.get("expires_at", 0)),
            from_pool=bool(d.get("from_pool", False)),
        )


class Sandbox:
    """A sandbox: `Sandbox.create(...)`, then `sbx.commands.run(...)`, then `sbx.kill()` (or
    use it as a context manager, which kills it on exit).

    The server is found from `socket=` or `url=` (+ `token=`), else `$BOX_SOCKET`, else
    `$BOX_URL` (+ `$BOX_TOKEN`), else `$BOX_STATE_DIR/serve.sock`, else
    `/run/box/serve.sock`."""

    def __init__(self, info: SandboxInfo, transport: Transport) -> None:
        self._transport = transport
        self.info = info
        self.commands = Commands(transport, info.sandbox_id)

    @property
    def sandbox_id(self) -> str:
        return self.info.sandbox_id

    @property
    def _path(self) -> str:
        return f"/v1/sandboxes/{urllib.parse.quote(self.sandbox_id, safe='')}"

    @classmethod
    def create(
        cls,
        image: str,
        timeout: Optional[int] = None,
        metadata: Optional[Dict[str, str]] = None,
        envs: Optional[Dict[str, str]] = None,
        cpus: Optional[int] = None,
        memory_mib: Optional[int] = None,
        *,
        socket: Optional[str] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
        request_timeout: Optional[float] = None,
    ) -> "Sandbox":
        """A new sandbox of `image` (a path on the server's host: an OCI image layout,
        directory or tar, or a rootfs directory, as `box run` takes it), destroyed by the
        server after `timeout` seconds (its default: 300; at most a day). A warm pool of the
        image serves it at once when `cpus`/`memory_mib` are left to the server's defaults.

        Raises `RateLimitError` when the server is full, `SandboxError` (status 400) for an
        image it cannot use."""
        t = Transport(socket=socket, url=url, token=token, request_timeout=request_timeout)
        body: Dict[str, Any] = {"image": image}
        if timeout is not None:
            body["timeout_s"] = int(timeout)
        if metadata:
            body["metadata"] = dict(metadata)
        if envs:
            body["env"] = [f"{k}={v}" for k, v in envs.items()]
        if cpus is not None:
            body["cpus"] = int(cpus)
        if memory_mib is not None:
            body["memory_mib"] = int(memory_mib)
        return cls(SandboxInfo.from_json(t.request("POST", "/v1/sandboxes", body)), t)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        socket: Optional[str] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
        request_timeout: Optional[float] = None,
    ) -> "Sandbox":
        """A running sandbox by id (`NotFoundError` if there is none)."""
        t = Transport(socket=socket, url=url, token=token, request_timeout=request_timeout)
        path = f"/v1/sandboxes/{urllib.parse.quote(sandbox_id, safe='')}"
        return cls(SandboxInfo.from_json(t.request("GET", path)), t)

    @staticmethod
    def list(
        metadata: Optional[Dict[str, str]] = None,
        *,
        socket: Optional[str] = None,
        url: Optional[str] = None,
        token: Optional[str] = None,
        request_timeout: Optional[float] = None,
    ) -> List[SandboxInfo]:
        """The running sandboxes, only those whose metadata has every pair of `metadata`."""
        t = Transport(socket=socket, url=url, token=token, request_timeout=request_timeout)
        query = {f"metadata.{k}": v for k, v in (metadata or {}).items()}
        return [SandboxInfo.from_json(d) for d in t.request("GET", "/v1/sandboxes", query=query)]

    def get_info(self) -> SandboxInfo:
        """The server's current view (`NotFoundError` once the sandbox is gone)."""
        self.info = SandboxInfo.from_json(self._transport.request("GET", self._path))
        return self.info

    def is_running(self) -> bool:
        try:
            return self.get_info().state == "running"
        except NotFoundError:
            return False

    def set_timeout(self, timeout: int) -> None:
        """The sandbox is destroyed `timeout` seconds from now (at most a day)."""
        d = self._transport.request("POST", f"{self._path}/timeout", {"timeout_s": int(timeout)})
        self.info = SandboxInfo.from_json(d)

    def kill(self) -> bool:
        """Destroys the sandbox; False if it was already gone."""
        try:
            self._transport.request("DELETE", self._path)
        except NotFoundError:
            return False
        return True

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.kill()

    def __repr__(self) -> str:
        return f"Sandbox(sandbox_id={self.sandbox_id!r}, image={self.info.image!r})"
