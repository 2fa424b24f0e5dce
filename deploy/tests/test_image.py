"""The container image, built with deploy/image.sh and run with podman: its size, its user, an
orchestration through the published port with the Python SDK, and a SIGTERM that drains an
activity in flight before the container exits 0, its state kept on the /data volume."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import grpc
import pytest
from durabletask import client as dt_client

import support
from conftest import ROOT
from harness import new_client, new_worker

MAX_IMAGE_BYTES = 20 * 1000 * 1000
TAG = f"localhost/outrigger:test-{os.getpid()}"

# podman here needs runc and cgroupfs named, and limits a rootful container may not raise.
PODMAN = ["podman", "--runtime", "/usr/sbin/runc", "--cgroup-manager=cgroupfs"]
RUN_LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]
# podman schedules HEALTHCHECK runs with systemd timers, which this machine has not; the test
# runs the same command itself with `podman exec`.
NO_TIMERS = ["--no-healthcheck"]


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], check=check, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def image() -> dict:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (deploy/tests/run.sh installs it on Debian)")
    env = dict(os.environ)
    built = subprocess.run([str(ROOT / "deploy" / "image.sh"), TAG], env=env,
                           capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, f"image.sh failed:\n{built.stdout}\n{built.stderr}"
    print(built.stdout.strip().splitlines()[-1])
    info = json.loads(podman("image", "inspect", TAG).stdout)[0]
    yield info
    podman("rmi", "-f", TAG, check=False)


class Container:
    """One container of the image, with the gRPC port published on a free loopback port."""

    def __init__(self, volume: str, env: dict[str, str] | None = None):
        self.name = f"outrigger-test-{uuid.uuid4().hex[:8]}"
        args = ["run", "-d", "--name", self.name, *RUN_LIMITS, *NO_TIMERS, "-p", "127.0.0.1::4001",
                "-v", f"{volume}:/data"]
        for k, v in (env or {}).items():
            args += ["-e", f"{k}={v}"]
        podman(*args, TAG)
        port = podman("port", self.name, "4001").stdout.strip().splitlines()[0]
        self.address = "127.0.0.1:" + port.rsplit(":", 1)[1]
        support.wait_until(support.health_is(self.address, support.SERVING, "readiness"),
                           f"container {self.name} to serve", timeout=60)

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def pid(self) -> int:
        return int(podman("inspect", "--format", "{{.State.Pid}}", self.name).stdout.strip())

    def exit_code(self) -> int:
        return int(podman("wait", self.name, timeout=90).stdout.strip())

    def remove(self) -> None:
        podman("rm", "-f", self.name, check=False)


@pytest.fixture
def volume():
    name = f"outrigger-test-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", name)
    yield name
    podman("volume", "rm", "-f", name, check=False)


def test_image_is_small_runs_as_non_root_and_holds_only_the_binary(image, volume):
    assert image["Size"] < MAX_IMAGE_BYTES, f"image is {image['Size']} bytes"
    config = image["Config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/outrigger"]
    assert "OUTRIGGER_HOST=0.0.0.0" in config["Env"]
    assert "OUTRIGGER_DATABASE_URL=sqlite:///data/outrigger.db" in config["Env"]
    assert "/data" in config["Volumes"]
    container = Container(volume)
    try:
        status = Path(f"/proc/{container.pid()}/status").read_text()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
        assert uids and uids.group(1) == "65532" and uids.group(2) == "65532", status
        logs = container.logs()
        assert "listening beyond loopback without TLS and without API keys" in logs, logs
        # The image's HEALTHCHECK command, run the way the engine runs it.
        check = podman("exec", container.name, *image["Healthcheck"]["Test"][1:])
        assert check.stdout.strip() == "SERVING"
        check = podman("exec", container.name, "/outrigger", "health", "--service", "liveness")
        assert check.stdout.strip() == "SERVING"
        exported = subprocess.run([*PODMAN, "export", container.name], check=True,
                                  capture_output=True, timeout=60).stdout
    finally:
        container.remove()
    # Nothing but the binary, its libraries, a few files under /etc (some written by the
    # runtime) and the database on the volume.
    files = [m.name.lstrip("./") for m in tarfile.open(fileobj=io.BytesIO(exported)) if m.isfile()]
    allowed = {"outrigger", "etc/passwd", "etc/group", "etc/nsswitch.conf", "etc/hosts",
               "etc/hostname", "etc/resolv.conf", "run/.containerenv"}
    strays = [f for f in files if f not in allowed and ".so" not in f and not f.startswith("data/")]
    assert not strays, f"unexpected files in the image: {strays}"
    assert "outrigger" in files


def test_sdk_runs_an_orchestration_and_sigterm_drains(image, volume):
    container = Container(volume, env={"OUTRIGGER_DRAIN_SECONDS": "60"})
    worker = client = None
    try:
        worker = new_worker(container.address, "image-worker", quick_reconnect=True)
        support.register(worker)
        worker.start()
        client = new_client(container.address, "image-client")
        iid = client.schedule_new_orchestration(support.hello, input="container")
        state = client.wait_for_orchestration_completion(iid, timeout=60)
        assert state.runtime_status == dt_client.OrchestrationStatus.COMPLETED
        assert state.serialized_output == '"Hello, container!"'

        # An activity in flight when SIGTERM arrives: the sidecar stops being ready, waits
        # for the activity, records its result, then exits 0.
        slow_id = client.schedule_new_orchestration(support.slow)
        assert support.GATE.entered.wait(60), "the held activity never started"
        podman("kill", "--signal", "TERM", container.name)
        support.wait_until(support.health_is(container.address, support.NOT_SERVING, "readiness"),
                           "readiness to turn NOT_SERVING")
        with grpc.insecure_channel(container.address) as channel:
            assert support.health(channel, "liveness") == support.SERVING
        support.GATE.release.set()
        assert container.exit_code() == 0, container.logs()
        logs = container.logs()
        assert re.search(r"waiting for work items in flight.*in_flight=1|in_flight=1.*waiting for work items", logs), logs
        assert "drain deadline reached" not in logs, logs
        assert "stopped" in logs, logs
        worker.stop()
        client.close()
        container.remove()

        # The volume kept everything: a new container finishes the orchestration.
        container = Container(volume)
        worker = new_worker(container.address, "image-worker-2")
        support.register(worker)
        worker.start()
        client = new_client(container.address, "image-client-2")
        state = client.wait_for_orchestration_completion(slow_id, timeout=60)
        assert state.runtime_status == dt_client.OrchestrationStatus.COMPLETED
        assert json.loads(state.serialized_output) == ["released", "Hello, after the restart!"]
        mount = json.loads(podman("volume", "inspect", volume).stdout)[0]["Mountpoint"]
        db = Path(mount) / "outrigger.db"
        assert oct(db.stat().st_mode & 0o777) == "0o600"
        assert db.stat().st_uid == 65532
    finally:
        support.GATE.release.set()
        if worker is not None:
            worker.stop()
        if client is not None:
            client.close()
        container.remove()
