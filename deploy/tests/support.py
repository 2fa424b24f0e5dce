"""Helpers of the deployment suite: the gRPC health check spoken by hand (no extra package),
certificates made with openssl, and a small Python SDK app."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import grpc
from durabletask import task

# grpc.health.v1.HealthCheckResponse.ServingStatus
SERVING, NOT_SERVING = 1, 2


def _encode_service(service: str) -> bytes:
    data = service.encode()
    return b"" if not data else b"\x0a" + bytes([len(data)]) + data


def _decode_status(message: bytes) -> int:
    # One varint field, number 1; absent means 0 (UNKNOWN).
    return message[1] if len(message) >= 2 and message[0] == 0x08 else 0


def health(channel: grpc.Channel, service: str = "", timeout: float = 3.0) -> int:
    """grpc.health.v1.Health/Check; returns the serving status number."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=_encode_service,
                                response_deserializer=_decode_status)
    return check(service, timeout=timeout)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0,
               every: float = 0.1) -> None:
    """Polls `condition` until it holds; fails with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # not up yet: connection refused, container starting...
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def health_is(address: str, status: int, service: str = "") -> Callable[[], bool]:
    def check() -> bool:
        with grpc.insecure_channel(address) as channel:
            return health(channel, service) == status
    return check


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory)
    return directory / f"{name}.pem"


def make_cert(directory: Path, name: str, ca: str, *, server: bool) -> tuple[Path, Path]:
    """A certificate for `name` signed by the CA files `ca`.pem/.key; server certificates are
    for localhost and 127.0.0.1."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
    ext = directory / f"{name}.ext"
    if server:
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    else:
        ext.write_text("extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.pem", cwd=directory)
    return directory / f"{name}.pem", directory / f"{name}.key"


# A small app: one orchestration calling one activity, and one whose activity waits for the
# test to let it go (to have work in flight at a chosen moment).
def greet(ctx: task.ActivityContext, name: str) -> str:
    return f"Hello, {name}!"


def hello(ctx: task.OrchestrationContext, name: str):
    return (yield ctx.call_activity(greet, input=name))


class Gate:
    """Lets a test hold an activity in flight: `entered` is set when it starts, and it returns
    once `release` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def activity(self, ctx: task.ActivityContext, _) -> str:
        self.entered.set()
        if not self.release.wait(120):
            raise TimeoutError("the test never released the activity")
        return "released"


GATE = Gate()


def held(ctx: task.ActivityContext, value) -> str:
    return GATE.activity(ctx, value)


def slow(ctx: task.OrchestrationContext, _):
    first = yield ctx.call_activity(held, input=None)
    second = yield ctx.call_activity(greet, input="after the restart")
    return [first, second]


def register(worker) -> None:
    worker.add_orchestrator(hello)
    worker.add_orchestrator(slow)
    worker.add_activity(greet)
    worker.add_activity(held)
