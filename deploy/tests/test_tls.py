"""TLS, mTLS and API keys on the gRPC listener, with certificates made by openssl in the test
and the Python SDK as the app: its secure channel works, a client without a certificate is
refused under mTLS, a new certificate is taken up on SIGHUP, and keys reach the sidecar as
`authorization: Bearer` metadata."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from durabletask import client as dt_client
from durabletask.client import TaskHubGrpcClient
from durabletask.worker import TaskHubGrpcWorker

import support
from database import SqliteDatabase
from harness import sdk_logger, start_sidecar
from sidecar import outrigger_binary


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (deploy/tests/run.sh installs it on Debian)")
    d = tmp_path_factory.mktemp("pki")
    support.make_ca(d, "ca")
    support.make_ca(d, "other-ca")
    support.make_cert(d, "server", "ca", server=True)
    support.make_cert(d, "server2", "other-ca", server=True)
    support.make_cert(d, "client", "ca", server=False)
    # The SDK's secure channel trusts the system roots; gRPC reads this variable for them.
    os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(d / "ca.pem")
    return d


def tls_sidecar(pki: Path, tmp_path: Path, name: str, *extra: str):
    # Copies, so a test may replace them under the running sidecar.
    for f in ("server.pem", "server.key"):
        shutil.copy(pki / f, tmp_path / f)
    args = ["--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key"), *extra]
    return start_sidecar(name, SqliteDatabase(tmp_path / f"{name}.db"), extra_args=args)


def local(sidecar) -> str:
    """localhost:PORT, the name the server certificate is for."""
    return f"localhost:{sidecar.port}"


def run_hello(client: TaskHubGrpcClient, worker: TaskHubGrpcWorker, who: str) -> None:
    support.register(worker)
    worker.start()
    try:
        iid = client.schedule_new_orchestration(support.hello, input=who)
        state = client.wait_for_orchestration_completion(iid, timeout=60)
        assert state.runtime_status == dt_client.OrchestrationStatus.COMPLETED
        assert state.serialized_output == f'"Hello, {who}!"'
    finally:
        worker.stop()
        client.close()


def credentials(pki: Path, ca: str = "ca", with_client_cert: bool = False) -> grpc.ChannelCredentials:
    roots = (pki / f"{ca}.pem").read_bytes()
    if not with_client_cert:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.ssl_channel_credentials(root_certificates=roots,
                                        private_key=(pki / "client.key").read_bytes(),
                                        certificate_chain=(pki / "client.pem").read_bytes())


def refused(address: str, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode | None:
    """The status of a health check over a channel with `creds` (None: plaintext), or None
    if it was answered."""
    channel = grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
    with channel:
        try:
            support.health(channel, "")
            return None
        except grpc.RpcError as e:
            return e.code()


def test_the_sdk_secure_channel_runs_an_orchestration(pki, tmp_path):
    sidecar = tls_sidecar(pki, tmp_path, "tls")
    try:
        client = TaskHubGrpcClient(host_address=local(sidecar), secure_channel=True,
                                   logger=sdk_logger("tls-client"))
        worker = TaskHubGrpcWorker(host_address=local(sidecar), secure_channel=True,
                                   logger=sdk_logger("tls-worker"))
        run_hello(client, worker, "TLS")
        assert refused(local(sidecar), None) == grpc.StatusCode.UNAVAILABLE, "plaintext is refused"
        assert refused(local(sidecar), credentials(pki, ca="other-ca")) == grpc.StatusCode.UNAVAILABLE
    finally:
        sidecar.stop()


def test_mtls_needs_a_client_certificate_from_the_ca(pki, tmp_path):
    sidecar = tls_sidecar(pki, tmp_path, "mtls", "--tls-client-ca", str(pki / "ca.pem"))
    try:
        address = local(sidecar)
        assert refused(address, credentials(pki)) == grpc.StatusCode.UNAVAILABLE, \
            "a client without a certificate is refused"
        plain_sdk = TaskHubGrpcClient(host_address=address, secure_channel=True,
                                      logger=sdk_logger("mtls-no-cert"))
        with pytest.raises(grpc.RpcError) as raised:
            plain_sdk.get_orchestration_state("anything")
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        plain_sdk.close()

        creds = credentials(pki, with_client_cert=True)
        client = TaskHubGrpcClient(channel=grpc.secure_channel(address, creds),
                                   logger=sdk_logger("mtls-client"))
        worker = TaskHubGrpcWorker(channel=grpc.secure_channel(address, creds),
                                   logger=sdk_logger("mtls-worker"))
        run_hello(client, worker, "mTLS")
    finally:
        sidecar.stop()


def test_a_new_certificate_is_taken_up_on_sighup(pki, tmp_path):
    sidecar = tls_sidecar(pki, tmp_path, "reload")
    try:
        address = local(sidecar)
        assert refused(address, credentials(pki)) is None
        # The replacement is signed by another CA; the old trust no longer fits after reload.
        shutil.copy(pki / "server2.pem", tmp_path / "server.pem")
        shutil.copy(pki / "server2.key", tmp_path / "server.key")
        os.kill(sidecar.pid, signal.SIGHUP)
        support.wait_until(lambda: "TLS configuration reloaded" in sidecar.log_path.read_text(),
                           "the reload to be logged", timeout=30)
        assert refused(address, credentials(pki, ca="other-ca")) is None
        assert refused(address, credentials(pki)) == grpc.StatusCode.UNAVAILABLE

        # A broken file is refused and the configuration in use is kept.
        (tmp_path / "server.key").write_text("not a key\n")
        os.kill(sidecar.pid, signal.SIGHUP)
        support.wait_until(lambda: "TLS reload failed" in sidecar.log_path.read_text(),
                           "the failed reload to be logged", timeout=30)
        assert refused(address, credentials(pki, ca="other-ca")) is None
        assert sidecar.is_running()
    finally:
        sidecar.stop()


WRITE_KEY = "sdk-write-key-0123456789"
READ_KEY = "sdk-read-key-0123456789"


def test_api_keys_with_the_sdk_over_tls(pki, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"write:{WRITE_KEY}\nread:{READ_KEY}\n")
    sidecar = tls_sidecar(pki, tmp_path, "keys", "--api-keys-file", str(keys))
    try:
        address = local(sidecar)
        bearer = [("authorization", f"Bearer {WRITE_KEY}")]
        client = TaskHubGrpcClient(host_address=address, secure_channel=True, metadata=bearer,
                                   logger=sdk_logger("keys-client"))
        worker = TaskHubGrpcWorker(host_address=address, secure_channel=True, metadata=bearer,
                                   logger=sdk_logger("keys-worker"))
        run_hello(client, worker, "keys")

        anonymous = TaskHubGrpcClient(host_address=address, secure_channel=True,
                                      logger=sdk_logger("keys-anonymous"))
        with pytest.raises(grpc.RpcError) as raised:
            anonymous.get_orchestration_state("anything")
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        anonymous.close()

        reader = TaskHubGrpcClient(host_address=address, secure_channel=True,
                                   metadata=[("authorization", f"Bearer {READ_KEY}")],
                                   logger=sdk_logger("keys-reader"))
        assert reader.get_orchestration_state("anything") is None
        with pytest.raises(grpc.RpcError) as raised:
            reader.schedule_new_orchestration(support.hello, input="nope")
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as raised:
            reader.purge_orchestrations_by(created_time_from=None)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reader.close()
        text = sidecar.log_path.read_text()
        assert WRITE_KEY not in text and READ_KEY not in text, "keys never reach the log"
    finally:
        sidecar.stop()


def started_log(tmp_path: Path, name: str, *args: str) -> str:
    """Starts the binary with `args`, returns what it logged up to its listening line."""
    proc = subprocess.Popen([str(outrigger_binary()), "--port", "0", "--database-url",
                             f"sqlite://{tmp_path / name}.db", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "NO_COLOR": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "listening addr=" in line:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return "".join(lines)


def test_no_warning_on_loopback_and_a_loud_one_beyond(tmp_path):
    assert "listening beyond loopback" not in started_log(tmp_path, "quiet")
    loud = started_log(tmp_path, "loud", "--host", "0.0.0.0")
    assert "listening beyond loopback without TLS and without API keys" in loud, loud
    keyed = started_log(tmp_path, "keyed", "--host", "0.0.0.0", "--api-keys", f"write:{WRITE_KEY}")
    assert "listening beyond loopback without TLS:" in keyed, keyed
