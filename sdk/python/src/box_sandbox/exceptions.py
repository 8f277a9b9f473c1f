"""Errors: every failure the server reports is a `SandboxError` carrying its HTTP status and
the server's own message."""

from __future__ import annotations

import json
from typing import Optional


class SandboxError(Exception):
    """A request the server refused or could not serve.

    `status` is the HTTP status (None for failures without one, e.g. a command that could not
    be started); `message` is the server's reason."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message if status is None else f"{message} (HTTP {status})")
        self.message = message
        self.status = status


class AuthenticationError(SandboxError):
    """401: TCP requests need the server's bearer token (`token=` or `$BOX_TOKEN`)."""


class NotFoundError(SandboxError):
    """404: no such sandbox (it was killed or timed out) or command."""


class RateLimitError(SandboxError):
    """429: the server runs as many sandboxes as it is allowed to."""


class CommandError(SandboxError):
    """A foreground command the sandbox could not run to its end (the stream's `error` event,
    or a stream cut before the exit); `stdout`/`stderr` hold what had arrived."""

    def __init__(self, message: str, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.stdout = stdout
        self.stderr = stderr


def error_for(status: int, body: bytes) -> SandboxError:
    """The error for an HTTP error answer: the `error` of a JSON body, else its text."""
    text = body.decode("utf-8", "replace").strip()
    message = text
    try:
        decoded = json.loads(text)
        if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
            message = decoded["error"]
    except ValueError:
        pass
    if not message:
        message = f"HTTP {status}"
    cls = {401: AuthenticationError, 404: NotFoundError, 429: RateLimitError}.get(
        status, SandboxError
    )
    return cls(message, status)
