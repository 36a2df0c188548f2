"""checkov finds nothing on the rendered chart. One run over the whole matrix (checkov is slow),
each case rendered under its own release name so that one case's NetworkPolicies cannot cover
another case's pods in checkov's graph. A check is suppressed only by a
`checkov.io/skip<N>: <check>=<reason>` annotation written in a chart template."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.chart.matrix import MATRIX
from tests.chart.render import CHART_DIR, render
from tests.support import REPO_ROOT, require_tool

pytestmark = pytest.mark.chart

SKIP_ANNOTATION = re.compile(r"checkov\.io/skip\d+: (CKV2?_K8S_\d+)=(.+)$", re.M)


def checkov_binary() -> str:
    """CELERIAC_CHECKOV, else `make checkov`'s venv, else checkov on PATH."""
    configured = os.environ.get("CELERIAC_CHECKOV")
    return require_tool(
        "checkov",
        "run `make checkov` (a venv of its own, .venv-checkov; `make test` does), "
        "or set CELERIAC_CHECKOV to a checkov executable",
        candidates=[configured] if configured else [REPO_ROOT / ".venv-checkov/bin/checkov"],
    )


def chart_suppressions() -> dict[str, str]:
    """Check id -> reason, from the annotations written in the chart's templates."""
    found: dict[str, str] = {}
    for template in (CHART_DIR / "templates").rglob("*"):
        if template.is_file():
            for check, reason in SKIP_ANNOTATION.findall(template.read_text(encoding="utf-8")):
                found[check] = reason
    return found


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    binary = checkov_binary()
    directory = tmp_path_factory.mktemp("checkov")
    for case, values in MATRIX.items():
        (directory / f"{case}.yaml").write_text(render(values, release=case).yaml())
    completed = subprocess.run(
        [
            binary,
            "--directory",
            str(directory),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--compact",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    assert completed.returncode in (0, 1), completed.stderr[-2000:]
    report: dict[str, object] = json.loads(completed.stdout)
    return report


def test_checkov_finds_nothing(checkov_report: dict[str, object]) -> None:
    summary = checkov_report["summary"]
    results = checkov_report["results"]
    assert isinstance(summary, dict)
    assert isinstance(results, dict)
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] > 100
    failed = [
        f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
        for check in results["failed_checks"]
    ]
    assert failed == []
    assert summary["passed"] > 1000


def test_every_suppression_is_an_annotation_with_a_reason(
    checkov_report: dict[str, object],
) -> None:
    allowed = chart_suppressions()
    assert set(allowed) == {
        "CKV_K8S_43",
        "CKV_K8S_15",
        "CKV_K8S_8",
        "CKV_K8S_9",
        "CKV2_K8S_6",
        "CKV_K8S_38",
    }
    results = checkov_report["results"]
    assert isinstance(results, dict)
    for skipped in results["skipped_checks"]:
        check = skipped["check_id"]
        assert check in allowed, f"{check} suppressed on {skipped['resource']} without a reason"
        assert skipped["check_result"]["suppress_comment"] == allowed[check]
        if check in ("CKV_K8S_8", "CKV_K8S_9"):
            # Probes are skipped for the one-shot test pod only.
            assert skipped["resource"].startswith("Pod.")
        if check == "CKV_K8S_38":
            # A mounted service-account token: worker pods with deletionCost only.
            assert skipped["resource"].startswith("Deployment."), skipped["resource"]
            assert "-worker-" in skipped["resource"], skipped["resource"]
        if check == "CKV2_K8S_6":
            assert "networkpolicy-off" in skipped["file_path"]
    # Every annotation in the chart is still needed.
    assert {skipped["check_id"] for skipped in results["skipped_checks"]} == set(allowed)
