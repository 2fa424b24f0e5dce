"""Shape checks of the deployment files (no cluster, no compose engine here): the Kubernetes
manifests as deploy/kubernetes/render.py renders them in both forms, the committed copies, and
deploy/compose.yaml. What is checked: the native sidecar's restart policy and place, probes on
the health service and port, ports, resources, security context, and that no secret value is
written in any file."""

from __future__ import annotations

import importlib.util
import re

import pytest
import yaml

from conftest import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
spec = importlib.util.spec_from_file_location("render", KUBE / "render.py")
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)

FORMS = ("native", "classic")


def pod_of(form: str, **overrides) -> dict:
    docs = [d for d in yaml.safe_load_all(render.render(form, overrides)) if d]
    assert [d["kind"] for d in docs] == ["Deployment"]
    return docs[0]["spec"]["template"]["spec"]


def sidecar_of(pod: dict) -> dict:
    found = [c for c in pod.get("initContainers", []) + pod["containers"] if c["name"] == "outrigger"]
    assert len(found) == 1
    return found[0]


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("form", FORMS)
def test_committed_manifests_are_what_the_renderer_makes(form):
    committed = (KUBE / f"{form}-sidecar.yaml").read_text()
    assert committed == render.render(form), f"re-run: deploy/kubernetes/render.py {form}"


def test_native_form_is_an_init_container_that_always_restarts():
    pod = pod_of("native")
    assert [c["name"] for c in pod["initContainers"]] == ["outrigger"]
    assert pod["initContainers"][0]["restartPolicy"] == "Always"
    assert [c["name"] for c in pod["containers"]] == ["app"]


def test_classic_form_is_a_second_container_without_a_restart_policy():
    pod = pod_of("classic")
    assert "initContainers" not in pod
    assert [c["name"] for c in pod["containers"]] == ["app", "outrigger"]
    assert "restartPolicy" not in sidecar_of(pod)


@pytest.mark.parametrize("form", FORMS)
def test_probes_ask_the_health_service_on_the_health_port(form):
    sidecar = sidecar_of(pod_of(form))
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"grpc": 4001, "health": 4002}
    env = env_of(sidecar)
    assert env["OUTRIGGER_HEALTH_ADDRESS"]["value"] == "0.0.0.0:4002"
    assert env["OUTRIGGER_HOST"]["value"] == "localhost", "the API stays inside the pod"
    expected = {"startupProbe": "readiness", "readinessProbe": "readiness", "livenessProbe": "liveness"}
    for probe, service in expected.items():
        assert sidecar[probe]["grpc"] == {"port": 4002, "service": service}, probe


@pytest.mark.parametrize("form", FORMS)
def test_resources_security_and_drain_fit_together(form):
    pod = pod_of(form, drainSeconds="25")
    sidecar = sidecar_of(pod)
    assert set(sidecar["resources"]["requests"]) == {"cpu", "memory"}
    assert "memory" in sidecar["resources"]["limits"]
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    drain = int(env_of(sidecar)["OUTRIGGER_DRAIN_SECONDS"]["value"])
    assert drain == 25
    # SIGKILL must not cut the drain short: grace period above drain + 5 s for open calls.
    assert pod["terminationGracePeriodSeconds"] > drain + 5


@pytest.mark.parametrize("form", FORMS)
def test_secrets_come_from_secret_objects_only(form):
    text = render.render(form)
    pod = pod_of(form)
    sidecar = sidecar_of(pod)
    url = env_of(sidecar)["OUTRIGGER_DATABASE_URL"]
    assert "value" not in url
    assert url["valueFrom"]["secretKeyRef"] == {"name": "outrigger-postgres", "key": "url"}
    app = [c for c in pod["containers"] if c["name"] == "app"][0]
    assert "value" not in env_of(app)["DURABLETASK_API_KEY"]
    keys_volume = [v for v in pod["volumes"] if v["name"] == "api-keys"][0]
    assert keys_volume["secret"]["secretName"] == "outrigger-api-keys"
    assert env_of(sidecar)["OUTRIGGER_API_KEYS_FILE"]["value"].startswith(
        [m["mountPath"] for m in sidecar["volumeMounts"] if m["name"] == "api-keys"][0])
    docs = list(yaml.safe_load_all(text))
    assert not [d for d in docs if d and d.get("kind") == "Secret"], "no Secret with data in the manifests"
    assert not re.search(r"postgres://[^\s\"]*:[^\s\"@]*@", text.split("---", 1)[1]), "no URL with a password"


def test_compose_wires_postgres_jaeger_and_a_healthy_sidecar_without_secrets():
    text = (ROOT / "deploy" / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert set(services) >= {"outrigger", "postgres", "jaeger"}
    sidecar = services["outrigger"]
    assert sidecar["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert sidecar["healthcheck"]["test"][:2] == ["CMD", "/outrigger"]
    assert "health" in sidecar["healthcheck"]["test"]
    assert any(str(p).startswith("127.0.0.1:") and str(p).endswith(":4001") for p in sidecar["ports"])
    assert "/data" in " ".join(sidecar["volumes"])
    env = sidecar["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://jaeger:")
    # Secrets are interpolated from the environment, never written down.
    assert "${POSTGRES_PASSWORD:?" in env["OUTRIGGER_DATABASE_URL"]
    assert "${OUTRIGGER_API_KEY:?" in env["OUTRIGGER_API_KEYS"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


def test_the_containerfile_builds_from_scratch_as_a_non_root_user():
    text = (ROOT / "deploy" / "Containerfile").read_text()
    instructions = [line.split()[0] for line in text.splitlines() if line and not line.startswith("#")
                    and not line.startswith(" ")]
    assert "FROM scratch" in text and instructions.count("FROM") == 1
    assert "RUN" not in instructions, "nothing runs at build time: the image has no shell"
    assert re.search(r"^USER 65532:65532$", text, re.M)
    assert re.search(r'^HEALTHCHECK .*"/outrigger", "health"', text, re.M)
