"""The SDK against a real `box serve` (host-process backend), started here.

From the environment (as `tests/tests/sdk_python.rs` passes it): BOX_BIN (the `box` binary),
BOX_INIT_BIN, BOX_TEST_IMAGE (a rootfs directory), BOX_STATE_DIR (an empty directory).
Every wait polls under a backstop (BACKSTOP seconds); none is a bare sleep.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import uuid
from typing import Callable, List, Optional

from box_sandbox import (
    AuthenticationError,
    CommandError,
    NotFoundError,
    RateLimitError,
    Sandbox,
    SandboxError,
)

BACKSTOP = 60.0
MAX_SANDBOXES = 3


def wait_for(what: str, ok: Callable[[], bool]) -> None:
    """Polls `ok` until it holds; fails after BACKSTOP seconds (a backstop, not a timing)."""
    deadline = time.monotonic() + BACKSTOP
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {BACKSTOP:.0f} s for {what}")
        time.sleep(0.02)


def _die_with_parent() -> None:
    # The server gets SIGTERM (and destroys its sandboxes) if this process dies first.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _connects(family: int, addr: object) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.connect(addr)
        except OSError:
            return False
    return True


class SdkTest(unittest.TestCase):
    server: "subprocess.Popen[bytes]"
    tmp: str
    sock: str
    image: str
    url: str
    token: str

    @classmethod
    def setUpClass(cls) -> None:
        missing = [v for v in ("BOX_BIN", "BOX_INIT_BIN", "BOX_TEST_IMAGE", "BOX_STATE_DIR")
                   if not os.environ.get(v)]
        if missing:
            raise unittest.SkipTest(f"{', '.join(missing)} unset: run through "
                                    "`cargo test -p box-tests --test sdk_python`")
        cls.tmp = tempfile.mkdtemp(prefix="box-sdk-")
        cls.sock = os.path.join(cls.tmp, "serve.sock")
        cls.image = os.environ["BOX_TEST_IMAGE"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cls.url = f"http://127.0.0.1:{port}"
        cls.log = open(os.path.join(cls.tmp, "serve.log"), "wb")
        env = dict(os.environ, BOX_BACKEND="host-process")
        cls.server = subprocess.Popen(
            [os.environ["BOX_BIN"], "serve", "--socket", cls.sock,
             "--listen", f"127.0.0.1:{port}",
             "--pool", f"{cls.image}=1", "--max-sandboxes", str(MAX_SANDBOXES)],
            env=env, stdin=subprocess.DEVNULL, stdout=cls.log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

        def up() -> bool:
            if cls.server.poll() is not None:
                raise AssertionError(f"box serve exited {cls.server.returncode}:\n{cls.server_log()}")
            return _connects(socket.AF_UNIX, cls.sock) and _connects(
                socket.AF_INET, ("127.0.0.1", port))

        try:
            wait_for("the server's sockets", up)
        except BaseException:
            cls.stop_server()
            raise
        with open(os.path.join(os.environ["BOX_STATE_DIR"], "serve.token")) as f:
            cls.token = f.read().strip()
        # Most calls find the server as users would: from the environment.
        os.environ["BOX_SOCKET"] = cls.sock

    @classmethod
    def server_log(cls) -> str:
        cls.log.flush()
        with open(os.path.join(cls.tmp, "serve.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")[-8000:]

    @classmethod
    def stop_server(cls) -> Optional[int]:
        if cls.server.poll() is None:
            cls.server.send_signal(signal.SIGTERM)
            try:
                cls.server.wait(BACKSTOP)
            except subprocess.TimeoutExpired:
                cls.server.kill()
                cls.server.wait()
                raise AssertionError(f"box serve ignored SIGTERM:\n{cls.server_log()}")
        return cls.server.returncode

    @classmethod
    def tearDownClass(cls) -> None:
        os.environ.pop("BOX_SOCKET", None)
        try:
            code = cls.stop_server()
            if code != 0:
                raise AssertionError(f"box serve exited {code} on SIGTERM:\n{cls.server_log()}")
            left = os.listdir(os.path.join(os.environ["BOX_STATE_DIR"], "sandboxes")) \
                if os.path.isdir(os.path.join(os.environ["BOX_STATE_DIR"], "sandboxes")) else []
            if left:
                raise AssertionError(f"sandboxes left after SIGTERM: {left}")
        finally:
            cls.log.close()
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def sandbox(self, **kw: object) -> Sandbox:
        sbx = Sandbox.create(image=self.image, **kw)  # type: ignore[arg-type]
        self.addCleanup(sbx.kill)
        return sbx

    # --- the cases ---

    def test_run_echo(self) -> None:
        sbx = self.sandbox()
        self.assertTrue(sbx.sandbox_id)
        self.assertEqual(sbx.info.state, "running")
        r = sbx.commands.run("echo hello")
        self.assertEqual((r.stdout, r.stderr, r.exit_code), ("hello\n", "", 0))
        r = sbx.commands.run(["echo", "a  b"])
        self.assertEqual(r.stdout, "a  b\n")

    def test_exit_code_and_stderr(self) -> None:
        sbx = self.sandbox()
        errs: List[str] = []
        r = sbx.commands.run("echo out; echo oops >&2; exit 3", on_stderr=errs.append)
        self.assertEqual((r.stdout, r.stderr, r.exit_code), ("out\n", "oops\n", 3))
        self.assertEqual("".join(errs), "oops\n")

    def test_envs_and_cwd(self) -> None:
        sbx = self.sandbox(envs={"GREETING": "hi there"})
        r = sbx.commands.run('echo "$GREETING/$X"; pwd', envs={"X": "y"}, cwd="/tmp")
        self.assertEqual(r.stdout, "hi there/y\n/tmp\n")

    def test_output_arrives_before_the_exit(self) -> None:
        sbx = self.sandbox()
        first = threading.Event()
        chunks: List[str] = []

        def on_stdout(data: str) -> None:
            chunks.append(data)
            if "first" in "".join(chunks):
                first.set()

        results: List[object] = []

        def runner() -> None:
            try:
                results.append(sbx.commands.run(
                    "echo first; while [ ! -e /tmp/go ]; do sleep 0.01; done; echo second",
                    on_stdout=on_stdout))
            except BaseException as e:  # handed to the main thread
                results.append(e)

        t = threading.Thread(target=runner, daemon=True)
        t.start()
        try:
            # The command cannot exit before /tmp/go exists, which only happens below: output
            # delivered only at the exit would never get here.
            self.assertTrue(first.wait(BACKSTOP), "no stdout before the command's exit")
            self.assertEqual(results, [])
        finally:
            # Always release the command, so the thread ends whatever happened.
            self.assertEqual(sbx.commands.run(["touch", "/tmp/go"]).exit_code, 0)
            t.join(BACKSTOP)
        self.assertFalse(t.is_alive(), "the command did not finish once released")
        (r,) = results
        if isinstance(r, BaseException):
            raise r
        self.assertEqual((r.stdout, r.exit_code), ("first\nsecond\n", 0))  # type: ignore[attr-defined]

    def test_one_mib_round_trip(self) -> None:
        sbx = self.sandbox()
        n = 1 << 20
        seen = [0]
        r = sbx.commands.run(f"head -c {n} /dev/zero | tr '\\0' a",
                             on_stdout=lambda d: seen.__setitem__(0, seen[0] + len(d)))
        self.assertEqual(r.exit_code, 0)
        self.assertEqual(len(r.stdout), n)
        self.assertEqual(r.stdout, "a" * n)
        self.assertEqual(seen[0], n)

    def test_context_manager_kills(self) -> None:
        with Sandbox.create(image=self.image, socket=self.sock) as sbx:
            sid = sbx.sandbox_id
            self.assertEqual(sbx.commands.run("echo in").stdout, "in\n")
            self.assertIn(sid, [s.sandbox_id for s in Sandbox.list()])
        self.assertNotIn(sid, [s.sandbox_id for s in Sandbox.list()])
        with self.assertRaises(NotFoundError) as cm:
            Sandbox.connect(sid)
        self.assertEqual(cm.exception.status, 404)
        self.assertFalse(sbx.is_running())
        self.assertFalse(sbx.kill())

    def test_background_command_and_kill(self) -> None:
        sbx = self.sandbox()
        h = sbx.commands.run("sleep 1000", background=True)
        self.assertGreater(h.pid, 0)
        self.assertEqual(h.cmd, ["sh", "-c", "sleep 1000"])
        self.assertEqual([c.id for c in sbx.commands.list()], [h.id])
        self.assertTrue(h.kill())
        self.assertEqual(sbx.commands.list(), [])
        self.assertFalse(h.kill())
        # Only the sandbox's keeper sleeps on (zombies, state Z, do not count).
        sleepers = "grep -l ' (sleep) [^Z]' /proc/[0-9]*/stat 2>/dev/null | wc -l"
        wait_for("the killed sleep gone",
                 lambda: sbx.commands.run(sleepers).stdout.strip() == "1")

    def test_list_by_metadata(self) -> None:
        tag = uuid.uuid4().hex
        a = self.sandbox(metadata={"team": "a", "run": tag})
        b = self.sandbox(metadata={"team": "b", "run": tag})
        ids = lambda m: [s.sandbox_id for s in Sandbox.list(metadata=m)]  # noqa: E731
        self.assertEqual(ids({"team": "a", "run": tag}), [a.sandbox_id])
        self.assertEqual(ids({"team": "b", "run": tag}), [b.sandbox_id])
        self.assertEqual(sorted(ids({"run": tag})), sorted([a.sandbox_id, b.sandbox_id]))
        self.assertEqual(ids({"run": "nobody"}), [])
        (info,) = Sandbox.list(metadata={"team": "a", "run": tag})
        self.assertEqual(info.metadata, {"team": "a", "run": tag})
        self.assertEqual(info.image, self.image)

    def test_set_timeout(self) -> None:
        sbx = self.sandbox(timeout=600)
        before = sbx.info.expires_at
        sbx.set_timeout(1)
        self.assertLess(sbx.info.expires_at, before)
        wait_for("the sandbox to expire", lambda: not sbx.is_running())

    def test_unknown_image_is_400(self) -> None:
        with self.assertRaises(SandboxError) as cm:
            Sandbox.create(image="/no/such/image")
        self.assertEqual(cm.exception.status, 400)
        self.assertTrue(cm.exception.message)
        self.assertNotIsInstance(cm.exception, RateLimitError)

    def test_full_server_is_rate_limited(self) -> None:
        # The other cases' sandboxes are gone (each kills its own at its end).
        wait_for("no sandboxes", lambda: Sandbox.list() == [])
        for _ in range(MAX_SANDBOXES):
            self.sandbox()
        with self.assertRaises(RateLimitError) as cm:
            Sandbox.create(image=self.image)
        self.assertEqual(cm.exception.status, 429)
        self.assertIn("sandboxes", cm.exception.message)

    def test_command_that_cannot_start(self) -> None:
        sbx = self.sandbox()
        # A foreground command answers 200 and then an `error` event.
        with self.assertRaises(CommandError) as cm:
            sbx.commands.run(["/no/such/binary"])
        self.assertIn("No such file", cm.exception.message)
        # In the background, the answer itself is the error.
        with self.assertRaises(SandboxError) as cm2:
            sbx.commands.run(["/no/such/binary"], background=True)
        self.assertEqual(cm2.exception.status, 400)
        # The sandbox still serves commands.
        self.assertEqual(sbx.commands.run("echo ok").stdout, "ok\n")

    def test_tcp_with_token(self) -> None:
        self.assertEqual(Sandbox.list(url=self.url, token=self.token), Sandbox.list())
        with self.assertRaises(AuthenticationError) as cm:
            Sandbox.list(url=self.url, token="wrong")
        self.assertEqual(cm.exception.status, 401)
        sbx = self.sandbox(url=self.url, token=self.token)
        self.assertEqual(sbx.commands.run("echo tcp").stdout, "tcp\n")


if __name__ == "__main__":
    unittest.main()
