"""Exporter settings: where to listen, which groups to report, how long Redis may take."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from celeriac.env import Env
from celeriac.groups import WorkerGroup, all_queues, groups_from_env
from celeriac.settings import Settings

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 9540
# Well under KEDA's default 3 s metrics-api timeout: a hung Redis must not hang the scrape.
DEFAULT_REDIS_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class ExporterSettings:
    """What ``celeriac exporter`` needs; ``common`` holds the broker and queue settings."""

    common: Settings = field(default_factory=Settings)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # from_env: the groups file's groups, or one "default" group when no file is set.
    groups: tuple[WorkerGroup, ...] = ()
    redis_timeout_seconds: float = DEFAULT_REDIS_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ExporterSettings:
        env = Env(environ)
        common = Settings.from_env(environ)
        return cls(
            common=common,
            host=env.host("EXPORTER_HOST", DEFAULT_HOST),
            port=env.port("EXPORTER_PORT", DEFAULT_PORT),
            groups=groups_from_env(env, common.queues),
            redis_timeout_seconds=env.number(
                "EXPORTER_REDIS_TIMEOUT_SECONDS", DEFAULT_REDIS_TIMEOUT_SECONDS, minimum=0.05
            ),
        )

    @property
    def queues(self) -> tuple[str, ...]:
        """Queues measured: the configured ones and the default, then every group's, each once."""
        return all_queues(self.common.served_queues, self.groups)
