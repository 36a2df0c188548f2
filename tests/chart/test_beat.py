"""Beat: exactly one scheduler, never two at once, its schedule from values in a ConfigMap."""

from __future__ import annotations

import pytest
import yaml

from tests.chart.matrix import MATRIX, MULTIPLE_GROUPS
from tests.chart.render import Rendered, RenderError, env_of, pod_spec, render

pytestmark = pytest.mark.chart


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_beat_has_one_replica_and_recreates(renders: dict[str, Rendered], case: str) -> None:
    rendered = renders[case]
    beats = [
        w
        for w in rendered.workloads()
        if w["metadata"]["labels"]["app.kubernetes.io/component"] == "beat"
    ]
    if MATRIX[case].get("beat", {}).get("enabled") is False:
        assert beats == []
        return
    (beat,) = beats
    assert beat["kind"] == "Deployment"
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    # A single replica: no PodDisruptionBudget, no autoscaler may target it.
    for obj in rendered.of_kind("PodDisruptionBudget"):
        assert obj["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] != "beat"
    for obj in rendered.of_kind("HorizontalPodAutoscaler") + rendered.of_kind("ScaledObject"):
        assert obj["spec"]["scaleTargetRef"]["name"] != "celeriac-beat"


def test_schedule_from_values_reaches_the_beat(renders: dict[str, Rendered]) -> None:
    rendered = renders["multiple-groups"]
    config = rendered.get("ConfigMap", "celeriac-beat")
    assert yaml.safe_load(config["data"]["schedule.yaml"]) == MULTIPLE_GROUPS["beat"]["schedule"]
    spec = pod_spec(rendered.get("Deployment", "celeriac-beat"))
    container = spec["containers"][0]
    env = env_of(container)
    assert env["CELERIAC_BEAT_SCHEDULE_FILE"]["value"] == "/etc/celeriac/beat/schedule.yaml"
    assert {"name": "schedule", "mountPath": "/etc/celeriac/beat", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {"name": "schedule", "configMap": {"name": "celeriac-beat"}} in spec["volumes"]
    assert container["livenessProbe"]["exec"]["command"] == ["celeriac", "probe", "beat"]


def test_an_empty_schedule_is_an_empty_mapping(defaults: Rendered) -> None:
    config = defaults.get("ConfigMap", "celeriac-beat")
    assert yaml.safe_load(config["data"]["schedule.yaml"]) == {}


def test_a_schedule_change_rolls_the_beat_pod() -> None:
    def checksum(schedule: dict[str, object]) -> str:
        beat = render({"beat": {"schedule": schedule}}).get("Deployment", "celeriac-beat")
        value: str = beat["spec"]["template"]["metadata"]["annotations"]["checksum/schedule"]
        return value

    every_minute = {"tick": {"task": "celeriac.demo.add", "every": 60}}
    assert checksum(every_minute) == checksum(every_minute)
    assert checksum(every_minute) != checksum({"tick": {"task": "celeriac.demo.add", "every": 30}})
    assert checksum(every_minute) != checksum({})


def test_a_scheduler_class_replaces_the_schedule_file() -> None:
    scheduler = "django_celery_beat.schedulers:DatabaseScheduler"
    rendered = render({"beat": {"scheduler": scheduler}})
    (container,) = pod_spec(rendered.get("Deployment", "celeriac-beat"))["containers"]
    env = env_of(container)
    assert env["CELERIAC_BEAT_SCHEDULER"]["value"] == scheduler
    assert "CELERIAC_BEAT_SCHEDULE_FILE" not in env


def test_a_scheduler_class_and_a_schedule_are_refused_together() -> None:
    values = {"beat": {"scheduler": "a.b:C", "schedule": {"x": {"task": "t", "every": 5}}}}
    with pytest.raises(RenderError, match=r"beat\.scheduler and beat\.schedule"):
        render(values)
