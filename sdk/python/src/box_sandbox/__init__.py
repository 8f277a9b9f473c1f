"""Python client for `box serve`, shaped like E2B's SDK.

    from box_sandbox import Sandbox

    with Sandbox.create(image="/srv/images/busybox") as sbx:
        r = sbx.commands.run("echo hello", on_stdout=print)
        print(r.exit_code)
"""

from ._transport import DEFAULT_SOCKET, Transport, UnixHTTPConnection
from .commands import CommandHandle, CommandInfo, CommandResult, Commands
from .exceptions import (
    AuthenticationError,
    CommandError,
    NotFoundError,
    RateLimitError,
    SandboxError,
)
from .sandbox import Sandbox, SandboxInfo

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "CommandError",
    "CommandHandle",
    "CommandInfo",
    "CommandResult",
    "Commands",
    "DEFAULT_SOCKET",
    "NotFoundError",
    "RateLimitError",
    "Sandbox",
    "SandboxError",
    "SandboxInfo",
    "Transport",
    "UnixHTTPConnection",
]
