"""One outrigger per session serving only the Dapr dialect (``--dapr-port 0``), on an
in-memory SQLite, and one durabletask-dapr worker with every orchestrator and activity the
tests use. The sidecar logs ``listening addr=<ip:port>`` once it serves."""

import os
import re
import subprocess
import threading

import pytest
from durabletask import client, worker

import registry

_LISTENING = re.compile(r"listening addr=(\S+)")


@pytest.fixture(scope="session")
def address():
    proc = subprocess.Popen(
        [os.environ["OUTRIGGER_BIN"], "--host", "127.0.0.1", "--dapr-port", "0",
         "--database-url", "sqlite::memory:"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    found = {}
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            m = _LISTENING.search(line)
            if m and "addr" not in found:
                found["addr"] = m.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(30) or "addr" not in found:
        proc.kill()
        raise RuntimeError("outrigger did not log its listening address")
    yield found["addr"]
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def hub(address):
    w = worker.TaskHubGrpcWorker(host_address=address)
    registry.register(w)
    w.start()
    yield address
    w.stop()


@pytest.fixture
def c(hub):
    return client.TaskHubGrpcClient(host_address=hub)
