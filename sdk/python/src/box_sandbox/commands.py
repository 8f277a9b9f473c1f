"""Commands in a sandbox: foreground ones streamed as they run, background ones by handle."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Union, overload

from .exceptions import CommandError, NotFoundError

if TYPE_CHECKING:
    from typing import Literal

    from ._transport import Transport

OutputCallback = Callable[[str], None]


@dataclass(frozen=True)
class CommandResult:
    """A foreground command's whole output and exit code (a non-zero code is returned, not
    raised)."""

    stdout: str
    stderr: str
    exit_code: int


@dataclass(frozen=True)
class CommandInfo:
    """A background command still known to the server."""

    id: str
    pid: int
    cmd: List[str] = field(default_factory=list)


class CommandHandle:
    """A background command: its id (for the API), its pid (inside the sandbox), `kill()`."""

    def __init__(self, commands: "Commands", info: CommandInfo) -> None:
        self._commands = commands
        self.id = info.id
        self.pid = info.pid
        self.cmd = info.cmd

    def kill(self) -> bool:
        """SIGKILL; False if the server no longer knows the command (already killed)."""
        return self._commands.kill(self.id)

    def __repr__(self) -> str:
        return f"CommandHandle(id={self.id!r}, pid={self.pid}, cmd={self.cmd!r})"


def _argv(cmd: Union[str, Sequence[str]]) -> List[str]:
    # A string is a shell command line, as in E2B; a list is the argv itself.
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    argv = list(cmd)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("cmd must be a string or a non-empty list of strings")
    return argv


def _env_list(envs: Optional[Dict[str, str]]) -> List[str]:
    return [f"{k}={v}" for k, v in (envs or {}).items()]


class Commands:
    """`sandbox.commands`."""

    def __init__(self, transport: "Transport", sandbox_id: str) -> None:
        self._t = transport
        self._path = f"/v1/sandboxes/{urllib.parse.quote(sandbox_id, safe='')}/commands"

    @overload
    def run(
        self,
        cmd: Union[str, Sequence[str]],
        on_stdout: Optional[OutputCallback] = ...,
        on_stderr: Optional[OutputCallback] = ...,
        background: "Literal[False]" = ...,
        envs: Optional[Dict[str, str]] = ...,
        cwd: Optional[str] = ...,
    ) -> CommandResult: ...

    @overload
    def run(
        self,
        cmd: Union[str, Sequence[str]],
        on_stdout: Optional[OutputCallback] = ...,
        on_stderr: Optional[OutputCallback] = ...,
        *,
        background: "Literal[True]",
        envs: Optional[Dict[str, str]] = ...,
        cwd: Optional[str] = ...,
    ) -> CommandHandle: ...

    def run(
        self,
        cmd: Union[str, Sequence[str]],
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        background: bool = False,
        envs: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
    ) -> Union[CommandResult, CommandHandle]:
        """Runs `cmd` (a string runs as `sh -c cmd`; a list is the argv) in the sandbox.

        In the foreground: waits for its exit, calling `on_stdout`/`on_stderr` with each chunk
        of output as it arrives, and returns a `CommandResult`. With `background=True`:
        returns a `CommandHandle` at once (its output is not kept)."""
        body: Dict[str, Any] = {"cmd": _argv(cmd), "env": _env_list(envs)}
        if cwd is not None:
            body["cwd"] = cwd
        if background:
            body["background"] = True
            info = self._t.request("POST", self._path, body)
            return CommandHandle(self, _command_info(info))
        out: List[str] = []
        err: List[str] = []
        for ev in self._t.stream("POST", self._path, body):
            kind = ev.get("type")
            if kind == "stdout":
                out.append(ev["data"])
                if on_stdout is not None:
                    on_stdout(ev["data"])
            elif kind == "stderr":
                err.append(ev["data"])
                if on_stderr is not None:
                    on_stderr(ev["data"])
            elif kind == "exit":
                return CommandResult("".join(out), "".join(err), int(ev["code"]))
            elif kind == "error":
                raise CommandError(str(ev.get("message", "")), "".join(out), "".join(err))
            # "start" and kinds this version does not know: nothing to do.
        raise CommandError("the output stream ended before the exit", "".join(out), "".join(err))

    def list(self) -> List[CommandInfo]:
        """The background commands the server knows (killed ones are forgotten)."""
        return [_command_info(c) for c in self._t.request("GET", self._path) or []]

    def kill(self, command_id: str) -> bool:
        """SIGKILLs a background command; False if the server does not know it."""
        try:
            self._t.request("POST", f"{self._path}/{urllib.parse.quote(command_id, safe='')}/kill")
        except NotFoundError:
            return False
        return True


def _command_info(d: Dict[str, Any]) -> CommandInfo:
    return CommandInfo(id=d["id"], pid=int(d["pid"]), cmd=list(d.get("cmd") or []))
