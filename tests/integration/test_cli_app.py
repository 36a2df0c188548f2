"""``celeriac <component> --app mytasks.celery:app`` run from the folder holding ``mytasks/``.

Through the ``celeriac`` console script, as users run it: unlike ``python -m celeriac`` its
import path does not start with the current directory, which is what celeriac must add.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from celeriac.app import create_app
from celeriac.settings import Settings
from celeriac.testing import Child, wait_until

pytestmark = pytest.mark.integration

CELERIAC = str(Path(sys.executable).with_name("celeriac"))
APP = "mytasks.celery:app"

MYTASKS = """
from celeriac import create_app

app = create_app("mytasks")


@app.task(name="mytasks.resize")
def resize(image_id: str) -> str:
    return f"resized {image_id}"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    package = tmp_path / "mytasks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "celery.py").write_text(MYTASKS)
    (tmp_path / "schedule.yaml").write_text(
        "resize: {task: mytasks.resize, every: 60, args: [img-1]}\n"
    )
    return tmp_path


def run_in(project: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CELERIAC, *args],
        cwd=project,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["worker", "--check", "--app", APP], {}, "mytasks.resize"),
        (
            ["api", "--check", "--app", APP],
            {"CELERIAC_API_TOKENS": "t", "CELERIAC_API_ALLOWED_TASKS": "mytasks.resize"},
            "1 tasks allowed: mytasks.resize",
        ),
        (
            ["beat", "--check", "--app", APP, "--schedule", "schedule.yaml"],
            {},
            f"is valid for app {APP}: 1 entries",
        ),
    ],
)
def test_check_imports_the_app_from_the_current_directory(
    project: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run_in(project, *args, env={"CELERIAC_BROKER_URL": "redis://127.0.0.1:1/0", **env})
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_a_worker_runs_tasks_of_an_app_in_the_current_directory(
    project: Path, redis_url: str
) -> None:
    ready_file = project / "worker.ready"
    env = {
        "CELERIAC_BROKER_URL": redis_url,
        "CELERIAC_WORKER_READY_FILE": str(ready_file),
        "CELERIAC_WORKER_HEARTBEAT_FILE": str(project / "worker.heartbeat"),
        "CELERIAC_WORKER_METRICS_PORT": "0",
        "CELERIAC_WORKER_CONCURRENCY": "1",
    }
    worker = Child(
        [CELERIAC, "worker", "--app", APP], env=env, log_path=project / "worker.log", cwd=project
    )
    try:

        def ready() -> bool:
            worker.check_alive()
            return ready_file.exists()

        wait_until(ready, timeout=60, message="the worker's ready file")
        # The pool process runs the task, so the import works there too.
        producer = create_app("producer", Settings(broker_url=redis_url))
        result = producer.send_task("mytasks.resize", args=["img-1"])
        assert result.get(timeout=30) == "resized img-1"
        producer.close()
    finally:
        worker.stop()
