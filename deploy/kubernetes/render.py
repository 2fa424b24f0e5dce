#!/usr/bin/env python3
"""Renders the Kubernetes manifests for an app with Outrigger as its sidecar, in either form:

  native   the sidecar is an init container with restartPolicy: Always (Kubernetes 1.29+):
           it starts, and passes its startup probe, before the app starts, and stops after it
  classic  the sidecar is a second container next to the app (any Kubernetes version): both
           start together, so the app's SDK must retry until the sidecar listens

    deploy/kubernetes/render.py native > my-app.yaml
    deploy/kubernetes/render.py classic --set app=orders --set appImage=registry/orders:1.4

Values (--set NAME=VALUE; defaults in VALUES below) name the app, the images, the Secrets and
the drain deadline. The Postgres URL comes from a Secret (key `url`), never from the manifest;
API keys, when wanted, from another (key `keys`: ROLE:KEY lines for the sidecar, `app-key`: the
key the app sends). Only Python's standard library is needed. The output is YAML (every string
is written JSON-quoted, which YAML reads as is).
"""

from __future__ import annotations

import argparse
import json
import sys

VALUES = {
    "app": "orders",
    "appImage": "example.org/orders:1.0",
    "image": "outrigger:latest",
    "replicas": 2,
    "postgresSecret": "outrigger-postgres",
    "apiKeysSecret": "outrigger-api-keys",
    "drainSeconds": 20,
    "cpuRequest": "50m",
    "memoryRequest": "32Mi",
    "memoryLimit": "256Mi",
}

GRPC_PORT = 4001
HEALTH_PORT = 4002  # health service only, in the clear and without keys: what kubelet probes
KEYS_DIR = "/etc/outrigger/api-keys"


def probe(service: str, period: int, failures: int) -> dict:
    return {"grpc": {"port": HEALTH_PORT, "service": service}, "periodSeconds": period,
            "timeoutSeconds": 3, "failureThreshold": failures}


def sidecar(v: dict, native: bool) -> dict:
    container = {
        "name": "outrigger",
        "image": v["image"],
        "imagePullPolicy": "IfNotPresent",
    }
    if native:
        container["restartPolicy"] = "Always"
    container.update({
        "env": [
            # Only the app, in the same pod, talks to the API; probes use the health port.
            {"name": "OUTRIGGER_HOST", "value": "localhost"},
            {"name": "OUTRIGGER_PORT", "value": str(GRPC_PORT)},
            {"name": "OUTRIGGER_HEALTH_ADDRESS", "value": f"0.0.0.0:{HEALTH_PORT}"},
            {"name": "OUTRIGGER_DATABASE_URL",
             "valueFrom": {"secretKeyRef": {"name": v["postgresSecret"], "key": "url"}}},
            {"name": "OUTRIGGER_API_KEYS_FILE", "value": f"{KEYS_DIR}/keys"},
            {"name": "OUTRIGGER_DRAIN_SECONDS", "value": str(v["drainSeconds"])},
            {"name": "OUTRIGGER_LOG_FORMAT", "value": "json"},
        ],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        # Passes once migrations are applied and the listener is up: only then does a native
        # sidecar let the app start.
        "startupProbe": probe("readiness", 1, 60),
        "readinessProbe": probe("readiness", 5, 2),
        # Liveness stays SERVING while draining and does not depend on the database, so a
        # database outage never restarts the sidecar.
        "livenessProbe": probe("liveness", 10, 3),
        "resources": {
            "requests": {"cpu": v["cpuRequest"], "memory": v["memoryRequest"]},
            "limits": {"memory": v["memoryLimit"]},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True}],
    })
    return container


def app(v: dict) -> dict:
    return {
        "name": "app",
        "image": v["appImage"],
        "env": [
            # Each SDK takes the address its own way; this is the one most read.
            {"name": "DURABLETASK_ENDPOINT", "value": f"localhost:{GRPC_PORT}"},
            {"name": "DURABLETASK_API_KEY",
             "valueFrom": {"secretKeyRef": {"name": v["apiKeysSecret"], "key": "app-key"}}},
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }


def deployment(v: dict, form: str) -> dict:
    native = form == "native"
    labels = {"app.kubernetes.io/name": v["app"], "app.kubernetes.io/component": "app",
              "app.kubernetes.io/part-of": v["app"]}
    pod = {
        # Above the drain deadline plus the 5 s grace for open calls, so SIGKILL never cuts
        # the drain short.
        "terminationGracePeriodSeconds": int(v["drainSeconds"]) + 15,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if native:
        pod["initContainers"] = [sidecar(v, native=True)]
        pod["containers"] = [app(v)]
    else:
        pod["containers"] = [app(v), sidecar(v, native=False)]
    pod["volumes"] = [{"name": "api-keys", "secret": {
        "secretName": v["apiKeysSecret"],
        "items": [{"key": "keys", "path": "keys"}]}}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": v["app"], "labels": {**labels, "outrigger.dev/sidecar-form": form}},
        "spec": {
            "replicas": int(v["replicas"]),
            "selector": {"matchLabels": {"app.kubernetes.io/name": v["app"]}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists, strings, numbers and booleans."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:\n{to_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {to_yaml(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for item in value:
            body = to_yaml(item, indent + 1) if isinstance(item, (dict, list)) else to_yaml(item)
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}- {body.lstrip()}")
            else:
                lines.append(f"{pad}- {body}")
        return "\n".join(lines)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def render(form: str, overrides: dict | None = None) -> str:
    values = {**VALUES, **(overrides or {})}
    header = (f"# Generated by deploy/kubernetes/render.py {form}; edit the script, not this file.\n"
              f"# Needs the Secret {values['postgresSecret']} (key url) first, e.g.\n"
              f"#   kubectl create secret generic {values['postgresSecret']} "
              "--from-literal=url=postgres://USER:PASSWORD@HOST:5432/DB\n")
    return header + "---\n" + to_yaml(deployment(values, form)) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("form", choices=["native", "classic"])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in VALUES:
            parser.error(f"unknown value '{name}' (known: {', '.join(VALUES)})")
        overrides[name] = value
    sys.stdout.write(render(args.form, overrides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
