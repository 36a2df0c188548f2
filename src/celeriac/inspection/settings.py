"""Inspection settings: the broker and queues, and the worker groups to report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from celeriac.env import Env
from celeriac.groups import WorkerGroup, all_queues, groups_from_env
from celeriac.settings import Settings


@dataclass(frozen=True)
class InspectionSettings:
    """What ``celeriac inspect`` reads: the broker and queues, and the worker groups."""

    common: Settings
    groups: tuple[WorkerGroup, ...]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InspectionSettings:
        common = Settings.from_env(environ)
        return cls(common=common, groups=groups_from_env(Env(environ), common.queues))

    @property
    def queues(self) -> tuple[str, ...]:
        return all_queues(self.common.served_queues, self.groups)
