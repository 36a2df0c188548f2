"""The one render helper of the chart tests: the real Helm v4 engine (helm-python-sdk).

`render(values)` renders charts/celeriac offline as `helm template` would (values merged over
the chart's defaults, checked against values.schema.json) and returns the parsed objects.
When Helm refuses, `RenderError` carries Helm's own message.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "celeriac"
# The release name contains the chart name, so objects are "celeriac-api", "celeriac-redis"...
RELEASE = "celeriac"
NAMESPACE = "tasks"

Obj = dict[str, Any]


class RenderError(Exception):
    """Helm refused to render; the message is Helm's."""


@dataclass(frozen=True)
class Rendered:
    """The objects of one render (hooks included) and the NOTES.txt text."""

    objects: tuple[Obj, ...]
    notes: str
    manifests: Mapping[str, str]

    def of_kind(self, kind: str) -> list[Obj]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> Obj:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        names = [obj["metadata"]["name"] for obj in self.of_kind(kind)]
        raise KeyError(f"no {kind} named {name!r}; rendered: {names}")

    def has(self, kind: str, name: str) -> bool:
        return any(obj["metadata"]["name"] == name for obj in self.of_kind(kind))

    def workloads(self) -> list[Obj]:
        kinds = ("Deployment", "StatefulSet", "Pod")
        return [obj for obj in self.objects if obj["kind"] in kinds]

    def yaml(self) -> str:
        """All objects as one multi-document YAML stream."""
        return yaml.safe_dump_all(self.objects, sort_keys=False)


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(str(CHART_DIR))


def chart_metadata() -> dict[str, Any]:
    """Chart.yaml, as Helm loaded it."""
    return _chart().metadata


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """Render the chart with `values` merged over its defaults."""
    try:
        manifests = _chart().render(
            dict(values) if values else None, name=release, namespace=namespace, is_install=True
        )
    except helm.HelmError as exc:
        raise RenderError(str(exc)) from None
    objects: list[Obj] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
        elif path.endswith((".yaml", ".yml")):
            objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(tuple(objects), notes, manifests)


def lint(values: Mapping[str, Any] | None = None, *, kube_version: str | None = None) -> list[str]:
    """`helm lint --strict`: every finding of warning severity or worse, as text."""
    report = helm.lint(
        str(CHART_DIR),
        dict(values) if values else None,
        strict=True,
        namespace=NAMESPACE,
        kube_version=kube_version,
    )
    findings = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return findings + [str(error) for error in report["errors"]]


def containers(workload: Obj) -> Iterator[Obj]:
    """Every container (init containers included) of a Deployment, StatefulSet or Pod."""
    spec = workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def pod_spec(workload: Obj) -> Obj:
    if workload["kind"] == "Pod":
        spec: Obj = workload["spec"]
    else:
        spec = workload["spec"]["template"]["spec"]
    return spec


def env_of(container: Obj) -> dict[str, Obj]:
    """A container's environment: name -> the EnvVar object."""
    return {entry["name"]: entry for entry in container.get("env", [])}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Maps merge key by key (as Helm merges values); anything else is replaced; None deletes."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def default_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    return loaded


def worker_groups(values: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The worker groups `values` define: group name -> workerDefaults merged with the group."""
    merged = deep_merge(default_values(), values or {})
    return {
        name: deep_merge(merged["workerDefaults"], group)
        for name, group in merged["workers"].items()
    }
