"""Every rendered object is valid against Kubernetes' schemas, 1.29 through 1.37, in strict mode
(unknown fields are errors). A kind without a schema fails, except the custom resources that are
checked elsewhere: keda.sh against KEDA's CRDs (test_keda.py) and monitoring.coreos.com, whose
CRDs are not available here, for their shape (test_monitoring.py)."""

from __future__ import annotations

import json

import pytest

from tests.chart import kube_schemas
from tests.chart.render import Obj, Rendered, render

pytestmark = pytest.mark.chart

CHECKED_ELSEWHERE = ("keda.sh/", "monitoring.coreos.com/")


def distinct_objects(renders: dict[str, Rendered]) -> list[tuple[str, Obj]]:
    """Each distinct object once (many are identical across the matrix), with the first case."""
    seen: dict[str, tuple[str, Obj]] = {}
    for case, rendered in renders.items():
        for obj in rendered.objects:
            seen.setdefault(json.dumps(obj, sort_keys=True), (case, obj))
    return list(seen.values())


@pytest.mark.parametrize("version", kube_schemas.VERSIONS)
def test_every_object_is_valid_for_kubernetes(renders: dict[str, Rendered], version: str) -> None:
    problems = []
    for case, obj in distinct_objects(renders):
        where = f"[{case}] {obj['kind']}/{obj['metadata']['name']}"
        try:
            errors = kube_schemas.errors(obj, version)
        except kube_schemas.SchemaMissing as exc:
            if not obj["apiVersion"].startswith(CHECKED_ELSEWHERE):
                problems.append(f"{where}: {exc}")
            continue
        problems.extend(f"{where}: {error}" for error in errors)
    assert problems == []


def test_the_schemas_are_strict_and_a_missing_kind_is_reported() -> None:
    deployment = render().get("Deployment", "celeriac-api")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    broken["spec"]["replicas"] = "one"
    found = kube_schemas.errors(broken, "1.29")
    assert any("imagePulPolicy" in error for error in found), found
    assert any(error.startswith("spec.replicas") for error in found), found
    with pytest.raises(kube_schemas.SchemaMissing):
        kube_schemas.errors({"apiVersion": "example.com/v1", "kind": "Widget"}, "1.37")
