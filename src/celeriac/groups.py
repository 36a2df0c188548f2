"""Worker groups: which queues each group of workers (one Deployment) consumes.

KEDA scales each group on the summed backlog of its queues, so the exporter needs the same
mapping the Helm chart uses to run the groups, and ``celeriac inspect`` reports per group too;
both read it here, from the worker-groups file (``CELERIAC_WORKER_GROUPS_FILE``). Format
(YAML)::

    default:
      queues: [default]
    cpu:
      queues: [cpu, reports]

Every error names the file, the group and the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from celeriac.env import ConfigError, Env
from celeriac.settings import QUEUE_NAME, union_of_queues

DEFAULT_GROUP = "default"
GROUP_FIELDS = ("queues",)
# A group names a Deployment and a label value, so it must be a DNS label; the chart's
# values.schema.json and _helpers.tpl repeat it.
GROUP_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class WorkerGroup:
    """A group of workers (one Deployment) and the queues it consumes."""

    name: str
    queues: tuple[str, ...]


def default_groups(queues: tuple[str, ...]) -> tuple[WorkerGroup, ...]:
    """Without a groups file: one group ``default`` over every configured queue."""
    return (WorkerGroup(DEFAULT_GROUP, queues),)


def all_queues(queues: Iterable[str], groups: Iterable[WorkerGroup]) -> tuple[str, ...]:
    """``queues``, then every group's queues, each once, in order: what the exporter measures."""
    return union_of_queues(queues, *(group.queues for group in groups))


def groups_from_env(env: Env, queues: tuple[str, ...]) -> tuple[WorkerGroup, ...]:
    """The groups of ``CELERIAC_WORKER_GROUPS_FILE``; without it, one group over ``queues``."""
    path = env.input_file("WORKER_GROUPS_FILE")
    return load_groups(path) if path else default_groups(queues)


def load_groups(path: Path) -> tuple[WorkerGroup, ...]:
    """Read and validate the worker-groups file at ``path``."""
    # Imported here: the CLI options name DEFAULT_GROUP, and `celeriac probe` must not pay
    # for a YAML parser on every probe.
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"worker groups file {str(path)!r} cannot be read: {exc.strerror}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"worker groups file {str(path)!r} is not valid YAML{where}") from None
    return parse_groups(data, source=str(path))


def parse_groups(data: object, source: str = "worker groups") -> tuple[WorkerGroup, ...]:
    """Validate parsed YAML: a mapping of group name -> {queues: [names]}.

    ``{}`` is no groups (the chart writes it when no worker group is enabled): only the
    per-queue gauges are reported. An empty file is an error: more likely a broken mount.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: expected a mapping of group name to {{queues: [...]}}, got {_kind(data)}"
        )
    return tuple(_group(name, entry, source) for name, entry in data.items())


def _group(name: object, entry: object, source: str) -> WorkerGroup:
    if not isinstance(name, str) or not GROUP_NAME.match(name):
        raise ConfigError(
            f"{source}: group name {name!r} is invalid; use lowercase letters, digits and '-' "
            "(a DNS label, at most 63 characters)"
        )
    if not isinstance(entry, Mapping):
        raise ConfigError(
            f"{source}: group {name!r} must be a mapping with 'queues', got {_kind(entry)}"
        )
    unknown = sorted(str(key) for key in entry if key not in GROUP_FIELDS)
    if unknown:
        raise ConfigError(
            f"{source}: group {name!r} has unknown field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(GROUP_FIELDS)}"
        )
    if "queues" not in entry:
        raise ConfigError(f"{source}: group {name!r} is missing the field 'queues'")
    queues = entry["queues"]
    if not isinstance(queues, list) or not queues:
        raise ConfigError(
            f"{source}: group {name!r} field 'queues' must be a non-empty list of queue names, "
            f"got {_kind(queues)}"
        )
    for queue in queues:
        if not isinstance(queue, str) or not QUEUE_NAME.match(queue):
            raise ConfigError(
                f"{source}: group {name!r} field 'queues' has invalid queue name {queue!r}; "
                "use letters, digits, '_', '.', ':' or '-'"
            )
    if len(set(queues)) != len(queues):
        raise ConfigError(f"{source}: group {name!r} field 'queues' lists a queue twice")
    return WorkerGroup(name, tuple(queues))


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, Mapping):
        return "an empty mapping" if not value else "a mapping"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return f"{type(value).__name__} {value!r}"
