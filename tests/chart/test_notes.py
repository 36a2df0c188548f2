"""NOTES.txt: the example request names a task the API accepts, never a made-up one."""

from __future__ import annotations

import re

import pytest

from celeriac.demo import ADD_TASK
from celeriac.local.banner import PLACEHOLDER_TASK as PLACEHOLDER
from celeriac.settings import DEFAULT_APP
from tests.chart.render import render


def _request_body(notes: str) -> str:
    match = re.search(r"-d '(\{.*?\})' http://127\.0\.0\.1:\d+/v1/tasks", notes)
    assert match, notes
    return match.group(1)


@pytest.mark.parametrize(
    ("values", "body"),
    [
        ({}, f'{{"task": "{ADD_TASK}", "args": [1, 2]}}'),
        # NOTES.txt spells the demo app and its task again: these compare them with Python's.
        ({"app": DEFAULT_APP}, f'{{"task": "{ADD_TASK}", "args": [1, 2]}}'),
        ({"api": {"allowedTasks": [ADD_TASK]}}, f'{{"task": "{ADD_TASK}", "args": [1, 2]}}'),
        (
            {"app": "shop.celery:app", "api": {"allowedTasks": ["shop.double", "shop.triple"]}},
            '{"task": "shop.double"}',
        ),
        ({"api": {"allowedTasks": ["celeriac.demo.sleep"]}}, '{"task": "celeriac.demo.sleep"}'),
    ],
    ids=["demo-app", "demo-app-named", "allow-list-of-add", "own-app-allow-list", "allow-list"],
)
def test_the_example_request_names_a_task_the_api_accepts(
    values: dict[str, object], body: str
) -> None:
    notes = render(values).notes
    assert _request_body(notes) == body
    assert PLACEHOLDER not in notes


def test_an_own_app_without_allow_list_gets_a_marked_placeholder_and_how_to_list_tasks() -> None:
    notes = render({"app": "shop.celery:app"}).notes
    assert _request_body(notes) == f'{{"task": "{PLACEHOLDER}"}}'
    assert ADD_TASK not in notes
    assert f"{PLACEHOLDER} is a placeholder: put in a task shop.celery:app registers" in notes
    assert "answers 422 listing the task names the API accepts" in notes
