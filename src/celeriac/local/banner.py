"""What ``celeriac up`` prints once everything is ready: where things are and a first request."""

from __future__ import annotations

import json
from pathlib import Path

from celeriac.local.plan import StackPlan
from celeriac.settings import redact_url, with_password

READY_LINE = "celeriac is up"
DEMO_TASK = "celeriac.demo.add"
DEMO_ARGS = (2, 3)


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is inside it (shorter to read)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def submit_body(task: str, args: tuple[int, ...]) -> str:
    return json.dumps({"task": task, "args": list(args)})


def banner(plan: StackPlan, notes: list[str]) -> str:
    token = plan.api_token
    task = DEMO_TASK if plan.is_demo else "YOUR.TASK.NAME"
    body = submit_body(task, DEMO_ARGS) if plan.is_demo else json.dumps({"task": task})
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
