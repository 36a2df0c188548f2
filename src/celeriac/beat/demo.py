"""A demo schedule for the local stack and for trying beat: tasks of ``celeriac.demo``."""

from __future__ import annotations

from pathlib import Path

DEMO_SCHEDULE = """\
# celeriac beat schedule: entry name -> entry (see services/beat/README.md).
add-every-10s:
  task: celeriac.demo.add
  every: 10
  args: [1, 2]
  expires: 10
sleep-every-minute:
  task: celeriac.demo.sleep
  cron: "* * * * *"
  kwargs: {seconds: 1}
  queue: default
  priority: 6
"""

DEMO_SCHEDULE_FILENAME = "demo-schedule.yaml"


def write_demo_schedule(directory: Path) -> Path:
    """Write the demo schedule into ``directory`` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DEMO_SCHEDULE_FILENAME
    path.write_text(DEMO_SCHEDULE, encoding="utf-8")
    return path
