"""What ``celeriac up`` prints once everything is ready: where things are and a first request."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from celeriac.local.plan import StackPlan
from celeriac.settings import Settings, redact_url, with_password

READY_LINE = "celeriac is up"
# Arguments for the demo's add task (celeriac.demo.ADD_TASK); any other task's are up to you.
DEMO_ARGS = (2, 3)
# Only when the app cannot be loaded here (the API loaded it, so this is rare).
PLACEHOLDER_TASK = "YOUR.TASK.NAME"


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is inside it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def submit_body(task: str, args: tuple[int, ...]) -> str:
    return json.dumps({"task": task, "args": list(args)})


def example_task(plan: StackPlan, inherited: Mapping[str, str]) -> str | None:
    """A task the stack's API accepts: the demo task if allowed, else the first allowed name.

    Asks the API's own rule (allow-list, else every registered task but ``celery.*``) with the
    API's environment; None when the app cannot be loaded in this process.
    """
    from celeriac.api.services import allowed_tasks
    from celeriac.api.settings import ApiSettings

    env = plan.environment("api", inherited)
    try:
        names = allowed_tasks(Settings.from_env(env), ApiSettings.from_env(env))
    except Exception:
        # Anything the user's module raises at import: a banner must not stop the stack.
        return None
    demo = demo_task()
    return demo if demo in names else min(names, default=None)


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


def banner(plan: StackPlan, notes: list[str], task: str | None) -> str:
    """``task``: the name the example request submits (None: a placeholder)."""
    token = plan.api_token
    task = task or PLACEHOLDER_TASK
    # The demo task's arguments are known; for any other task the user fills them in.
    body = submit_body(task, DEMO_ARGS) if task == demo_task() else json.dumps({"task": task})
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
        f"  curl -s {plan.api_url}/v1/tasks/TASK_ID -H 'Authorization: Bearer {token}'",
        "",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    return "\n".join(lines)
