"""The schedule file: a YAML mapping of entry name -> entry, validated completely at start.

Every problem found is reported at once, each naming its entry and field, so one deploy of a
broken ConfigMap shows everything that is wrong with it (``celeriac beat --check`` in CI).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml

from celeriac.beat.entry import Entry, kind_of, parse_entry
from celeriac.env import ConfigError


class ScheduleError(ConfigError):
    """The schedule file is unusable; ``problems`` lists each, naming entry and field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        super().__init__(f"schedule {source} has {count}: " + "; ".join(problems))


def load_schedule(path: Path) -> tuple[Entry, ...]:
    """Read and validate the schedule file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"schedule file {str(path)!r} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"schedule file {str(path)!r} is not UTF-8 text") from None
    return parse_schedule(text, source=str(path))


def parse_schedule(text: str, source: str = "<schedule>") -> tuple[Entry, ...]:
    """Validate a schedule document; raise ScheduleError listing every problem."""
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ScheduleError(source, [_yaml_problem(exc)]) from None
    if document is None:
        raise ScheduleError(source, ["the file is empty; write {} for a schedule with no entries"])
    if not isinstance(document, Mapping):
        raise ScheduleError(
            source,
            [f"the top level must be a mapping of entry name -> entry, not a {kind_of(document)}"],
        )
    entries: list[Entry] = []
    problems: list[str] = []
    for name, body in document.items():
        entry = parse_entry(name, body, problems)
        if entry is not None:
            entries.append(entry)
    if problems:
        raise ScheduleError(source, problems)
    return tuple(entries)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return f"YAML syntax error: {problem}"
    return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {problem}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{key!r} is given twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
