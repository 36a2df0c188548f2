"""KEDA ScaledObjects: valid against KEDA's own CRD schema with unknown fields rejected, and
scaling on the right number: target = pool size x tasks per process, so replicas =
ceil(backlog / target)."""

from __future__ import annotations

import json
from collections.abc import Callable

import jsonschema
import pytest

from celeriac.exporter.collector import GROUP_BACKLOG, GROUP_LABEL, GROUP_OLDEST_AGE
from celeriac.exporter.settings import DEFAULT_PORT as EXPORTER_PORT
from tests.chart import crds
from tests.chart.matrix import MATRIX
from tests.chart.quantities import pool_size
from tests.chart.render import NAMESPACE, Obj, Rendered, render, worker_groups
from tests.support import require_path

pytestmark = pytest.mark.chart

KEY = ("keda.sh/v1alpha1", "ScaledObject")


@pytest.fixture(scope="module")
def scaledobject_validator() -> jsonschema.Draft7Validator:
    directory = require_path(
        crds.crds_dir(),
        "KEDA's CRDs",
        "set CELERIAC_KEDA_CRDS_DIR to a directory holding keda-<version>-crds.yaml "
        "(https://github.com/kedacore/keda/releases)",
    )
    return crds.validators(directory)[KEY]


def scaledobjects(renders: dict[str, Rendered]) -> list[tuple[str, Obj]]:
    return [(case, so) for case, r in renders.items() for so in r.of_kind("ScaledObject")]


def test_the_matrix_renders_scaledobjects(renders: dict[str, Rendered]) -> None:
    cases = {case for case, _ in scaledobjects(renders)}
    assert {"defaults", "scale-to-zero", "multiple-groups"} <= cases
    assert not renders["hpa-engine"].of_kind("ScaledObject")
    assert not renders["none-engine"].of_kind("ScaledObject")


def test_every_scaledobject_is_valid_against_the_keda_crd(
    renders: dict[str, Rendered], scaledobject_validator: jsonschema.Draft7Validator
) -> None:
    problems = []
    for case, so in scaledobjects(renders):
        for error in crds.errors(scaledobject_validator, so):
            problems.append(f"[{case}] {so['metadata']['name']}: {error}")
    assert problems == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda so: so["spec"].update(cooldownPerod=300), "cooldownPerod"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].update(targetValue=4), "targetValue"),
        (lambda so: so["spec"]["fallback"].update(behaviour="static"), "behaviour"),
        (lambda so: so["spec"]["fallback"].update(behavior="sometimes"), "sometimes"),
        (
            lambda so: so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"][
                "scaleUp"
            ].update(window=1),
            "window",
        ),
    ],
)
def test_the_crd_schema_rejects_unknown_fields_and_wrong_types(
    defaults: Rendered,
    scaledobject_validator: jsonschema.Draft7Validator,
    change: Callable[[Obj], None],
    expected: str,
) -> None:
    broken = json.loads(json.dumps(defaults.of_kind("ScaledObject")[0]))
    change(broken)
    found = crds.errors(scaledobject_validator, broken)
    assert any(expected in error for error in found), found


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_target_is_pool_size_times_tasks_per_process(
    renders: dict[str, Rendered], case: str
) -> None:
    rendered = renders[case]
    for name, group in worker_groups(MATRIX[case]).items():
        deployment = rendered.get("Deployment", f"celeriac-worker-{name}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        limit = container["resources"]["limits"]["cpu"]
        per_cpu = float(
            next(
                e["value"]
                for e in container["env"]
                if e["name"] == "CELERIAC_WORKER_CONCURRENCY_PER_CPU"
            )
        )
        if group["autoscaling"]["engine"] != "keda":
            assert not rendered.has("ScaledObject", f"celeriac-worker-{name}")
            continue
        so = rendered.get("ScaledObject", f"celeriac-worker-{name}")
        trigger, *others = so["spec"]["triggers"]
        expected = pool_size(limit, per_cpu) * group["autoscaling"]["keda"]["targetTasksPerProcess"]
        assert float(trigger["metadata"]["targetValue"]) == pytest.approx(expected)
        assert trigger["type"] == "metrics-api"
        assert trigger["metricType"] == "AverageValue"
        assert trigger["metadata"] == {
            "format": "prometheus",
            "url": f"http://celeriac-exporter.{NAMESPACE}.svc.cluster.local:{EXPORTER_PORT}/metrics",
            "valueLocation": f'{GROUP_BACKLOG}{{{GROUP_LABEL}="{name}"}}',
            "targetValue": trigger["metadata"]["targetValue"],
            "activationTargetValue": "0",
        }
        assert all(isinstance(value, str) for value in trigger["metadata"].values())
        age = group["autoscaling"]["keda"].get("oldestAge", {})
        if not age.get("enabled"):
            assert others == []
            continue
        # The latency trigger: Value, so replicas grow with how far the age is over target.
        (age_trigger,) = others
        assert age_trigger["name"] == "oldest-age"
        assert age_trigger["metricType"] == "Value"
        assert age_trigger["metadata"] == {
            "format": "prometheus",
            "url": trigger["metadata"]["url"],
            "valueLocation": f'{GROUP_OLDEST_AGE}{{{GROUP_LABEL}="{name}"}}',
            "targetValue": str(age["targetSeconds"]),
            "activationTargetValue": "0",
        }


def test_the_age_trigger_is_off_by_default(renders: dict[str, Rendered]) -> None:
    for so in renders["defaults"].of_kind("ScaledObject"):
        assert [t["name"] for t in so["spec"]["triggers"]] == ["backlog"]


def test_pool_examples(renders: dict[str, Rendered]) -> None:
    """Worked numbers: 2 CPUs x 1 = 2; 500m rounds up to 1 CPU x 4 per CPU x 2 tasks = 8."""
    rendered = renders["multiple-groups"]
    target = {
        so["metadata"]["name"]: so["spec"]["triggers"][0]["metadata"]["targetValue"]
        for so in rendered.of_kind("ScaledObject")
    }
    assert target == {
        "celeriac-worker-cpu": "2",
        "celeriac-worker-io": "8",
        "celeriac-worker-default": "1",
    }


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_scaledobject_owns_replicas_and_waits_out_the_grace_period(
    renders: dict[str, Rendered], case: str
) -> None:
    rendered = renders[case]
    for name, group in worker_groups(MATRIX[case]).items():
        deployment = rendered.get("Deployment", f"celeriac-worker-{name}")
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace == group["terminationGracePeriodSeconds"]
        scaling = group["autoscaling"]
        if scaling["engine"] == "none":
            assert deployment["spec"]["replicas"] == scaling["replicas"]
            continue
        assert "replicas" not in deployment["spec"], f"{name}: helm upgrade would fight the HPA"
        if scaling["engine"] != "keda":
            continue
        spec = rendered.get("ScaledObject", f"celeriac-worker-{name}")["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"celeriac-worker-{name}",
        }
        assert spec["cooldownPeriod"] >= grace
        assert spec["minReplicaCount"] == scaling["minReplicas"]
        assert spec["maxReplicaCount"] == scaling["maxReplicas"]
        assert spec["pollingInterval"] == scaling["keda"]["pollingIntervalSeconds"]
        assert spec["fallback"] == scaling["keda"]["fallback"]
        hpa = spec["advanced"]["horizontalPodAutoscalerConfig"]
        assert hpa["name"] == f"celeriac-worker-{name}"
        behavior = hpa["behavior"]
        assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] > 0


def test_scale_to_zero(renders: dict[str, Rendered]) -> None:
    so = renders["scale-to-zero"].get("ScaledObject", "celeriac-worker-default")
    assert so["spec"]["minReplicaCount"] == 0
    assert so["spec"]["triggers"][0]["metadata"]["activationTargetValue"] == "0"
    assert (
        renders["defaults"].get("ScaledObject", "celeriac-worker-default")["spec"][
            "minReplicaCount"
        ]
        == 1
    )


def test_fractional_target_is_a_plain_decimal_string() -> None:
    values = {"workers": {"default": {"autoscaling": {"keda": {"targetTasksPerProcess": 0.1}}}}}
    values["workers"]["default"]["resources"] = {"limits": {"cpu": "3"}}
    so = render(values).get("ScaledObject", "celeriac-worker-default")
    assert so["spec"]["triggers"][0]["metadata"]["targetValue"] == "0.3"
