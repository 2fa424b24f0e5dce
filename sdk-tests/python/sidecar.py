"""Starting and stopping an outrigger process for the SDK tests.

The sidecar is started on port 0 (or on the port it had before, to restart it
where its clients expect it); it prints one log line containing
``listening addr=<ip:port>`` once it is serving, and that line is the only
readiness signal we use. Its combined stdout/stderr is drained by a thread
into a log file for the whole life of the process, so the pipe never fills.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Sequence

from database import redact

REPO_ROOT = Path(__file__).resolve().parents[2]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_LISTENING = re.compile(r"listening addr=(\S+)")
# Logged before the gRPC line when the sidecar runs with --http-port.
_LISTENING_HTTP = re.compile(r"listening http=(\S+)")


class SidecarError(RuntimeError):
    pass


def outrigger_binary() -> Path:
    """The binary under test: $OUTRIGGER_BIN, else target/release, else target/debug."""
    override = os.environ.get("OUTRIGGER_BIN")
    if override:
        path = Path(override)
        if not path.is_file():
            raise SidecarError(f"OUTRIGGER_BIN={override} does not exist")
        return path
    for profile in ("release", "debug"):
        path = REPO_ROOT / "target" / profile / "outrigger"
        if path.is_file():
            return path
    raise SidecarError(
        "no outrigger binary found: run `cargo build --release` in "
        f"{REPO_ROOT} or set OUTRIGGER_BIN")


class Sidecar:
    """One outrigger process serving one database (a `sqlite://` or `postgres://` URL).

    `extra_args` are appended to the command line, e.g. ["--lease-seconds", "3"]; `env` adds
    environment variables.
    """

    def __init__(self, database_url: str, log_path: Path, binary: Path | None = None,
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None):
        self.database_url = database_url
        self.log_path = Path(log_path)
        self.binary = binary or outrigger_binary()
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.address: str | None = None
        self.http_address: str | None = None  # host:port of the HTTP listener, if any
        self.last_port: int | None = None  # kept across stops, for restarting on the same port
        self.returncode: int | None = None  # of the last process, once it has ended
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ready = threading.Event()  # set on the listening line or on EOF
        self._captured: list[str] = []    # output seen before readiness, for errors

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 30.0, port: int = 0) -> "Sidecar":
        """Spawn the process and block until it logs its listening address."""
        if self._proc is not None:
            raise SidecarError("sidecar already started")
        self.address = None
        self.http_address = None
        self._ready.clear()
        self._captured = []
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.binary),
            "--host", "127.0.0.1",
            "--port", str(port),
            "--database-url", self.database_url,
            *self.extra_args,
        ]
        env = dict(os.environ)
        env.setdefault("NO_COLOR", "1")
        env.update(self.extra_env)
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._reader = threading.Thread(
            target=self._drain, name=f"outrigger-log-{self._proc.pid}", daemon=True)
        self._reader.start()

        self._ready.wait(timeout)
        if self.address is None:
            exited = self._proc.poll()
            self.kill()
            why = (f"exited with status {exited}" if exited is not None
                   else f"did not log 'listening addr=' within {timeout:.0f}s")
            output = "".join(self._captured) or "<no output>\n"
            raise SidecarError(
                f"outrigger {why}.\ncommand: {redact(' '.join(args))}\n"
                f"log file: {self.log_path}\ncaptured output:\n{output}")
        return self

    def _drain(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"=== outrigger pid {proc.pid} db {redact(self.database_url)} ===\n")
            log.flush()
            for raw in proc.stdout:
                line = _ANSI.sub("", raw.decode("utf-8", errors="replace"))
                log.write(line)
                log.flush()
                if self.address is None:
                    self._captured.append(line)
                    http = _LISTENING_HTTP.search(line)
                    if http and self.http_address is None:
                        self.http_address = http.group(1).strip('",')
                    match = _LISTENING.search(line)
                    if match:
                        self.address = match.group(1).strip('",')
                        self.last_port = self.port
                        self._ready.set()
            log.write(f"=== outrigger pid {proc.pid} closed its output ===\n")
        self._ready.set()

    @property
    def port(self) -> int:
        assert self.address is not None
        return int(self.address.rsplit(":", 1)[1])

    def restart(self, timeout: float = 30.0) -> "Sidecar":
        """Start again on the port of the previous run, after a stop or a kill."""
        assert self.last_port is not None, "restart() needs an earlier start()"
        return self.start(timeout=timeout, port=self.last_port)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean anything up."""
        self._finish(signal.SIGKILL, grace=0)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after `grace` seconds."""
        self._finish(signal.SIGTERM, grace=grace)

    def _finish(self, sig: int, grace: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=grace if grace > 0 else 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        self.returncode = proc.returncode
        self._proc = None
        self._reader = None
