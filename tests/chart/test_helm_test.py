"""The `helm test` hook: a locked-down pod that passes when the exporter reads Redis and the API
is ready. Its script is run here against local HTTP servers standing in for the two Services."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from celeriac.api.settings import DEFAULT_PORT as API_PORT
from celeriac.exporter.settings import DEFAULT_PORT as EXPORTER_PORT
from tests.chart.render import Rendered, pod_spec

pytestmark = pytest.mark.chart


def test_the_test_pod_is_a_hook(defaults: Rendered, renders: dict[str, Rendered]) -> None:
    pod = defaults.get("Pod", "celeriac-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "hook-succeeded" in pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    assert pod_spec(pod)["restartPolicy"] == "Never"
    assert not renders["beat-api-tests-off"].of_kind("Pod")


class Stub(http.server.BaseHTTPRequestHandler):
    redis_up = "1.0"

    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        if self.path == "/metrics":
            lines = ["# TYPE celeriac_redis_up gauge", f"celeriac_redis_up {self.redis_up}"]
            body = "\n".join([*lines, ""]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stub_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def run_test_script(defaults: Rendered, url: str) -> subprocess.CompletedProcess[str]:
    (container,) = pod_spec(defaults.get("Pod", "celeriac-test"))["containers"]
    assert container["command"][:2] == ["python", "-c"]
    script = container["command"][2]
    script = script.replace(f"http://celeriac-exporter:{EXPORTER_PORT}", url)
    script = script.replace(f"http://celeriac-api:{API_PORT}", url)
    # Fail within a second instead of retrying for a minute.
    script = script.replace("time.monotonic() + 60", "time.monotonic() + 1")
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )


def test_the_script_passes_when_redis_is_up_and_the_api_ready(
    defaults: Rendered, stub_url: str
) -> None:
    Stub.redis_up = "1.0"
    passed = run_test_script(defaults, stub_url)
    assert passed.returncode == 0, passed.stdout + passed.stderr


def test_the_script_fails_when_the_exporter_cannot_reach_redis(
    defaults: Rendered, stub_url: str
) -> None:
    Stub.redis_up = "0.0"
    failed = run_test_script(defaults, stub_url)
    assert failed.returncode == 1
    assert f"FAILED: {stub_url}/metrics" in failed.stdout
