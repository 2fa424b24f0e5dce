"""Shape checks of the deployment files (no cluster, no compose engine here): the Kubernetes
manifests as deploy/kubernetes/render.py renders them in both forms, the committed copies, the
kustomize overlays of deploy/kustomize (built by its build.py, since kustomize cannot be
installed here) and deploy/compose.yaml. What is checked: the native sidecar's restart policy and place, probes on
the health service and port, ports, resources, security context, and that no secret value is
written in any file."""

from __future__ import annotations

import importlib.util
import re

import pytest
import yaml

from conftest import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
KUSTOMIZE = ROOT / "deploy" / "kustomize"


def load(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = load("render", KUBE / "render.py")
kustomize = load("kustomize_build", KUSTOMIZE / "build.py")

FORMS = ("native", "classic")
# Where the manifests come from: the renderer, or the kustomize overlay of the same form.
SOURCES = ("render", "kustomize")


def docs_of(form: str, source: str = "render", **overrides) -> list[dict]:
    if source == "kustomize":
        assert not overrides, "overlays take no values; patch them instead"
        return kustomize.build(KUSTOMIZE / "overlays" / form)
    return [d for d in yaml.safe_load_all(render.render(form, overrides)) if d]


def pod_of(form: str, source: str = "render", **overrides) -> dict:
    docs = docs_of(form, source, **overrides)
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


def test_the_kustomize_base_is_the_renderers_native_form():
    committed = (KUSTOMIZE / "base" / "deployment.yaml").read_text()
    assert committed == render.render("native"), \
        "re-run: deploy/kubernetes/render.py native > deploy/kustomize/base/deployment.yaml"


@pytest.mark.parametrize("form", FORMS)
def test_each_kustomize_overlay_builds_the_renderers_form(form):
    assert kustomize.build(KUSTOMIZE / "overlays" / form) == docs_of(form)


@pytest.mark.parametrize("source", SOURCES)
def test_native_form_is_an_init_container_that_always_restarts(source):
    pod = pod_of("native", source)
    assert [c["name"] for c in pod["initContainers"]] == ["outrigger"]
    assert pod["initContainers"][0]["restartPolicy"] == "Always"
    assert [c["name"] for c in pod["containers"]] == ["app"]


@pytest.mark.parametrize("source", SOURCES)
def test_classic_form_is_a_second_container_without_a_restart_policy(source):
    pod = pod_of("classic", source)
    assert "initContainers" not in pod
    assert [c["name"] for c in pod["containers"]] == ["app", "outrigger"]
    assert "restartPolicy" not in sidecar_of(pod)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("form", FORMS)
def test_probes_ask_the_health_service_on_the_health_port(form, source):
    sidecar = sidecar_of(pod_of(form, source))
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


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("form", FORMS)
def test_secrets_come_from_secret_objects_only(form, source):
    if source == "kustomize":
        text = "---\n" + yaml.safe_dump_all(docs_of(form, source))
        for path in KUSTOMIZE.rglob("*.yaml"):
            assert not re.search(r"postgres://[^\s\"]*:[^\s\"@]*@", path.read_text().split("---", 1)[-1]), path
    else:
        text = render.render(form)
    pod = pod_of(form, source)
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


def overlay(tmp_path, body: str):
    """An overlay of the test's own on top of the given text's resources."""
    (tmp_path / "kustomization.yaml").write_text(body)
    return tmp_path


def test_an_overlay_of_an_overlay_sets_the_sidecar_image_only(tmp_path):
    base = (KUSTOMIZE / "overlays" / "classic").resolve()
    mine = overlay(tmp_path, f"""
resources:
  - {base}
images:
  - name: outrigger
    newName: registry.example/outrigger
    newTag: "0.2"
""")
    pod = kustomize.build(mine)[0]["spec"]["template"]["spec"]
    assert sidecar_of(pod)["image"] == "registry.example/outrigger:0.2"
    assert [c["image"] for c in pod["containers"] if c["name"] == "app"] == ["example.org/orders:1.0"]


def test_the_builder_refuses_what_it_does_not_implement(tmp_path):
    mine = overlay(tmp_path, f"""
resources:
  - {(KUSTOMIZE / "base").resolve()}
namePrefix: staging-
""")
    with pytest.raises(kustomize.Unsupported, match="namePrefix"):
        kustomize.build(mine)
    mine = overlay(tmp_path, f"""
resources:
  - {(KUSTOMIZE / "base").resolve()}
patches:
  - target: {{kind: Deployment, name: orders}}
    patch: |-
      - op: remove
        path: /spec/template/spec/initContainers/0/restartPolicy
      - op: test
        path: /spec/replicas
        value: 3
""")
    with pytest.raises(ValueError, match="test failed"):
        kustomize.build(mine)


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
