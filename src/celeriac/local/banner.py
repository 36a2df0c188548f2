"""What ``celeriac up`` prints once everything is ready: where things are and a first request."""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from celeriac.local.plan import StackPlan
from celeriac.settings import redact_url, with_password

READY_LINE = "celeriac is up"
# Arguments for the demo's add task (celeriac.demo.ADD_TASK).
DEMO_ARGS = (2, 3)
# Only when the app cannot be loaded here (the API loaded it, so this is rare).
PLACEHOLDER_TASK = "YOUR.TASK.NAME"
# A value of each type a task's parameter may be annotated with; others are left to you.
_SAMPLES: dict[object, object] = {
    int: 1,
    float: 1.5,
    str: "text",
    bool: True,
    list: [],
    dict: {},
}


@dataclass(frozen=True)
class ExampleCall:
    """The first request the banner shows: a task the API accepts and arguments for it."""

    task: str
    args: tuple[object, ...] = ()
    # Parameters whose values could not be derived (no type hint): shown as "<name>".
    unknown: tuple[str, ...] = ()


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is inside it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def submit_body(call: ExampleCall) -> str:
    body: dict[str, object] = {"task": call.task}
    if call.args:
        body["args"] = list(call.args)
    return json.dumps(body)


def example_call(plan: StackPlan, inherited: Mapping[str, str]) -> ExampleCall | None:
    """A task the stack's API accepts, with arguments it accepts: the demo's add task if
    allowed, else the first allowed task whose required parameters all have type hints (values
    made from them), else the first allowed task with its parameters to fill in.

    Asks the API's own rule (allow-list, else every registered task but ``celery.*``) with the
    API's environment; None when the app cannot be loaded in this process.
    """
    from celeriac.api.services import allowed_tasks
    from celeriac.api.settings import ApiSettings
    from celeriac.app import load_app

    env = plan.environment("api", inherited)
    try:
        api = ApiSettings.from_env(env)
        names = allowed_tasks(api)
        app = load_app(api.common.app, api.common)
    except Exception:
        # Anything the user's module raises at import: a banner must not stop the stack.
        return None
    demo = demo_task()
    if demo in names:
        return ExampleCall(demo, DEMO_ARGS)
    calls = [_call_of(name, app.tasks[name]) for name in sorted(names)]
    return next((call for call in calls if not call.unknown), calls[0] if calls else None)


def _call_of(name: str, task: Callable[..., object]) -> ExampleCall:
    """``task``'s required positional parameters, each with a value of its annotated type."""
    run = getattr(task, "run", task)
    try:
        signature = inspect.signature(run, eval_str=True)
    except (TypeError, ValueError, NameError):
        try:
            signature = inspect.signature(run)
        except (TypeError, ValueError):
            return ExampleCall(name)
    args: list[object] = []
    unknown: list[str] = []
    for parameter in signature.parameters.values():
        if parameter.default is not inspect.Parameter.empty or parameter.kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            continue
        annotation = parameter.annotation
        if isinstance(annotation, str):  # not evaluated: match the plain names
            by_name = {t.__name__: t for t in _SAMPLES if isinstance(t, type)}
            annotation = by_name.get(annotation.split("[", 1)[0])
        # list[str] -> list; int | None -> int
        annotation = typing.get_origin(annotation) or annotation
        if annotation in (typing.Union, types.UnionType):
            annotation = typing.get_args(parameter.annotation)[0]
        if annotation in _SAMPLES:
            args.append(_SAMPLES[annotation])
        else:
            args.append(f"<{parameter.name}>")
            unknown.append(parameter.name)
    return ExampleCall(name, tuple(args), tuple(unknown))


def demo_task() -> str | None:
    """``celeriac.demo.ADD_TASK``; None when the demo app cannot be imported here.

    Imported on use: importing the demo app configures Celery from this process's environment,
    which an app of your own does not need.
    """
    try:
        from celeriac.demo import ADD_TASK
    except Exception:
        return None
    return ADD_TASK


def banner(plan: StackPlan, notes: list[str], call: ExampleCall | None) -> str:
    """``call``: the task and arguments the example request submits (None: a placeholder)."""
    token = plan.api_token
    call = call or ExampleCall(PLACEHOLDER_TASK)
    body = submit_body(call)
    redis_url = redact_url(with_password(plan.broker_url, plan.redis_password))
    lines = [
        "",
        f"{READY_LINE}: app {plan.app}",
        "",
        f"  API           {plan.api_url}",
        f"  API docs      {plan.api_url}/docs",
        f"  metrics       {plan.exporter_url}   (queue backlog, what KEDA reads)",
        f"  worker        {plan.worker_metrics_url}   (task counters)",
        f"  Redis         {redis_url}",
        f"  API token     {token}",
        f"  state, logs   {_shown(plan.state_dir)}/  (logs/<component>.log, pids.json)",
        f"  your code     set -a; . {_shown(plan.env_file)}; set +a   (broker, password, token)",
    ]
    if plan.schedule_file is not None:
        lines.append(f"  schedule      {_shown(plan.schedule_file)}")
    lines += [f"  note          {note}" for note in notes]
    lines += [
        "",
        "Submit a task, then fetch its result with the id it returns:",
        "",
        f"  curl -s -X POST {plan.api_url}/v1/tasks \\",
        f"    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\",
        f"    -d '{body}'",
        "",
        *(
            [
                f"  (replace {', '.join(f'<{n}>' for n in call.unknown)}: "
                f"{call.task} has no type hints to make values from)",
                "",
            ]
            if call.unknown
            else []
        ),
        f"  curl -s {plan.api_url}/v1/tasks/TASK_ID -H 'Authorization: Bearer {token}'",
        "",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    return "\n".join(lines)
