"""Render a kustomization the way ``kustomize build`` does, for the subset the
deploy/kubernetes files use.

No kustomize binary is packaged for Debian or PyPI (Debian's kubectl 1.20 embeds
kustomize v2, which predates the ``labels`` field), so the tests render with this.
Any field it does not implement fails loudly instead of being ignored, so a manifest
change that needs real kustomize cannot pass silently: ``resources`` (files and
directories; a directory must not leave the tree it is under, as kustomize's load
restrictor requires of files), ``labels`` (``pairs`` with ``includeSelectors: false``:
metadata labels only) and ``images`` (``newName``/``newTag`` on pod-template
containers).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION = "kustomization.yaml"
SUPPORTED = {"apiVersion", "kind", "resources", "labels", "images"}
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


class KustomizeError(Exception):
    pass


def render(directory: Path) -> list[dict[str, Any]]:
    path = directory / KUSTOMIZATION
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not implement: {unknown}")
    if spec.get("kind") != "Kustomization":
        raise KustomizeError(f"{path}: not a Kustomization")

    documents: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            documents.extend(render(target))
        else:
            if directory.resolve() not in target.parents:
                raise KustomizeError(f"{path}: {entry} is a file outside the kustomization")
            text = target.read_text(encoding="utf-8")
            documents.extend(copy.deepcopy(d) for d in yaml.safe_load_all(text) if d)

    for label in spec.get("labels", []):
        if label.get("includeSelectors", False) or set(label) - {"pairs", "includeSelectors"}:
            raise KustomizeError(f"{path}: only labels.pairs with includeSelectors: false")
        for document in documents:
            document.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])

    for image in spec.get("images", []):
        _set_image(documents, image)

    keys = [(d["kind"], d["metadata"]["name"]) for d in documents]
    duplicates = {key for key in keys if keys.count(key) > 1}
    if duplicates:
        raise KustomizeError(f"{path}: resources defined twice: {duplicates}")
    return documents


def _set_image(documents: list[dict[str, Any]], image: dict[str, str]) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise KustomizeError(f"images: unsupported fields in {image}")
    for document in documents:
        if document["kind"] not in POD_OWNERS:
            continue
        pod = document["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                new_name = image.get("newName", name)
                new_tag = image.get("newTag", tag)
                container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
