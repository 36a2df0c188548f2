"""Every `checksum/*` pod annotation is the hash of a manifest the same render produced, so a pod
rolls exactly when what it hashes changes. A generated Secret (Redis password, API token) is
drawn once per render: were the checksum's own render of the Secret's template to draw again,
the first `helm upgrade` (which finds the stored Secret) would roll every pod (found by
tests/cluster/test_helm.py against a real API server)."""

from __future__ import annotations

import hashlib

import pytest

from tests.chart.render import Rendered, render

pytestmark = pytest.mark.chart


def checksums(rendered: Rendered) -> dict[str, str]:
    """(workload/annotation) -> value, for every checksum annotation of a pod template."""
    found = {}
    for workload in rendered.workloads():
        if workload["kind"] == "Pod":
            continue
        annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
        for key, value in annotations.items():
            if key.startswith("checksum/"):
                found[f"{workload['metadata']['name']}/{key}"] = value
    return found


def test_each_checksum_hashes_a_manifest_of_the_same_render() -> None:
    rendered = render()
    hashes = {
        hashlib.sha256(text.encode()).hexdigest(): path for path, text in rendered.manifests.items()
    }
    found = checksums(rendered)
    assert {"celeriac-api/checksum/api-secret", "celeriac-redis/checksum/redis-secret"} <= set(
        found
    )
    unmatched = {name: value for name, value in found.items() if value not in hashes}
    assert not unmatched
    assert hashes[found["celeriac-api/checksum/api-secret"]].endswith("api/secret.yaml")
    assert hashes[found["celeriac-redis/checksum/redis-secret"]].endswith("redis/secret.yaml")
