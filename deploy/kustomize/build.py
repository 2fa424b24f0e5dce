#!/usr/bin/env python3
"""Builds a kustomization the way `kubectl kustomize` does, for the few features the files in
this directory use, where neither kubectl nor kustomize can be installed (the tests):

    deploy/kustomize/build.py deploy/kustomize/overlays/classic

Supported: `resources` (YAML files, and directories holding a kustomization.yaml), `images`
(`name` with `newName`, `newTag` or `digest`, applied to containers and init containers) and
`patches` given inline as JSON 6902 operations (`add`, `remove`, `replace`, `move`, `test`)
with a `target` by kind and name. Anything else in a kustomization is refused rather than
ignored, so what this builds never quietly differs from what kustomize would. Needs PyYAML.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

KNOWN = {"apiVersion", "kind", "resources", "images", "patches"}


class Unsupported(Exception):
    pass


def build(directory: str | Path) -> list[dict]:
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN
    if unknown:
        raise Unsupported(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs.extend(build(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch in kustomization.get("patches", []):
        apply_patch(docs, patch, directory)
    for image in kustomization.get("images", []):
        for doc in docs:
            set_image(doc, image)
    return docs


def apply_patch(docs: list[dict], patch: dict, directory: Path) -> None:
    if set(patch) - {"target", "patch"} or "patch" not in patch:
        raise Unsupported(f"{directory}: only inline patches with a target are supported")
    target = patch["target"]
    if set(target) - {"kind", "name"}:
        raise Unsupported(f"{directory}: patch targets by kind and name only")
    operations = yaml.safe_load(patch["patch"])
    if not isinstance(operations, list):
        raise Unsupported(f"{directory}: only JSON 6902 patches (a list of operations)")
    matched = [d for d in docs if d.get("kind") == target.get("kind", d.get("kind"))
               and d["metadata"]["name"] == target.get("name", d["metadata"]["name"])]
    if not matched:
        raise ValueError(f"{directory}: patch target {target} matches no resource")
    for doc in matched:
        for operation in operations:
            apply_operation(doc, operation)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc, path: str):
    parts = _pointer(path)
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def _get(doc, path: str):
    node, last = _parent(doc, path)
    return node[int(last)] if isinstance(node, list) else node[last]


def _remove(doc, path: str):
    node, last = _parent(doc, path)
    if isinstance(node, list):
        return node.pop(int(last))
    return node.pop(last)  # a missing member raises, as kustomize fails


def _add(doc, path: str, value) -> None:
    node, last = _parent(doc, path)
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if index > len(node):
            raise IndexError(f"{path}: index out of range")
        node.insert(index, value)
    else:
        node[last] = value


def apply_operation(doc: dict, operation: dict) -> None:
    op, path = operation["op"], operation["path"]
    if op == "add":
        _add(doc, path, copy.deepcopy(operation["value"]))
    elif op == "remove":
        _remove(doc, path)
    elif op == "replace":
        _get(doc, path)  # must exist
        node, last = _parent(doc, path)
        node[int(last) if isinstance(node, list) else last] = copy.deepcopy(operation["value"])
    elif op == "move":
        _add(doc, path, _remove(doc, operation["from"]))
    elif op == "test":
        if _get(doc, path) != operation["value"]:
            raise ValueError(f"test failed at {path}")
    else:
        raise Unsupported(f"JSON 6902 operation {op!r}")


def set_image(doc: dict, image: dict) -> None:
    if set(image) - {"name", "newName", "newTag", "digest"}:
        raise Unsupported(f"images entry {image}")
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        reference = container["image"]
        name, tag = reference.split("@", 1)[0], ""
        if ":" in name.rsplit("/", 1)[-1]:
            name, tag = name.rsplit(":", 1)
        if name != image["name"]:
            continue
        name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{name}@{image['digest']}"
        else:
            tag = image.get("newTag", tag)
            container["image"] = f"{name}:{tag}" if tag else name


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump_all(build(argv[0]), sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
