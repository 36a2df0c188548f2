"""The plan of one local stack (ports, secrets, files) and each component's environment.

Every component reads the same ``CELERIAC_*`` variables it reads in Kubernetes; the plan only
fills them in for one machine. Your own ``CELERIAC_*`` settings (log level, queues, ...) pass
through, except the ones the stack must own (broker, secrets, ports, files).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from celeriac.api.settings import DEFAULT_PORT as DEFAULT_API_PORT
from celeriac.env import ConfigError
from celeriac.exporter.settings import DEFAULT_PORT as DEFAULT_EXPORTER_PORT
from celeriac.exporter.settings import ExporterSettings
from celeriac.local.ports import choose_port
from celeriac.local.settings import DEFAULT_REDIS_PORT, LocalSettings
from celeriac.settings import DEFAULT_APP, Settings
from celeriac.worker.settings import DEFAULT_METRICS_PORT as DEFAULT_WORKER_METRICS_PORT

COMPONENTS = ("api", "worker", "beat", "exporter")
HOST = "127.0.0.1"
PIDS_FILE = "pids.json"
# What producers load (``producer_environment``): the broker URL, the Redis password, the token.
ENV_FILE = "stack.env"
LOCK_FILE = "up.lock"
ENV_FILE = "stack.env"

# Variables the stack sets per component; removed from the inherited environment first, so a
# shell that exports e.g. CELERIAC_REDIS_PASSWORD_FILE cannot clash with the generated password.
_SHARED_KEYS = (
    "BROKER_URL",
    "RESULT_BACKEND_URL",
    "REDIS_PASSWORD",
    "REDIS_PASSWORD_FILE",
    "APP",
)
_COMPONENT_KEYS = {
    "api": ("API_HOST", "API_PORT", "API_TOKENS", "API_TOKENS_FILE"),
    "worker": (
        "WORKER_CONCURRENCY",
        "WORKER_HEARTBEAT_FILE",
        "WORKER_READY_FILE",
        "WORKER_METRICS_PORT",
        "WORKER_METRICS_DIR",
        "WORKER_SHUTDOWN_TIMEOUT_SECONDS",
    ),
    "beat": ("BEAT_SCHEDULE_FILE", "BEAT_HEARTBEAT_FILE"),
    "exporter": ("EXPORTER_HOST", "EXPORTER_PORT", "WORKER_GROUPS_FILE"),
}
MANAGED_KEYS = frozenset(
    "CELERIAC_" + key
    for key in (*_SHARED_KEYS, *(k for ks in _COMPONENT_KEYS.values() for k in ks))
)


def demo_schedule_file() -> Path:
    """The schedule shipped for the demo app (celeriac.demo.add every 30 seconds)."""
    return Path(str(resources.files("celeriac.local") / "demo_schedule.yaml"))


def new_secret() -> str:
    # URL-safe, so it can go in a header or a redis:// URL unquoted.
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class StackPlan:
    state_dir: Path
    api_port: int
    exporter_port: int
    worker_metrics_port: int
    redis_port: int
    redis_password: str = field(repr=False)
    api_token: str = field(repr=False)
    app: str = DEFAULT_APP
    schedule_file: Path | None = None
    worker_groups_file: Path | None = None
    concurrency: int = 2
    worker_shutdown_timeout_seconds: int = 5

    # Files under the state dir.
    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def redis_config(self) -> Path:
        return self.redis_dir / "redis.conf"

    @property
    def metrics_dir(self) -> Path:
        return self.state_dir / "worker-metrics"

    @property
    def worker_heartbeat_file(self) -> Path:
        return self.state_dir / "worker.heartbeat"

    @property
    def worker_ready_file(self) -> Path:
        return self.state_dir / "worker.ready"

    @property
    def beat_heartbeat_file(self) -> Path:
        return self.state_dir / "beat.heartbeat"

    @property
    def pids_file(self) -> Path:
        return self.state_dir / PIDS_FILE

    @property
    def env_file(self) -> Path:
        return self.state_dir / ENV_FILE

    @property
    def lock_file(self) -> Path:
        return self.state_dir / LOCK_FILE

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    # Addresses.
    @property
    def broker_url(self) -> str:
        """Without the password: the password travels in CELERIAC_REDIS_PASSWORD."""
        return f"redis://{HOST}:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def exporter_url(self) -> str:
        return f"http://{HOST}:{self.exporter_port}/metrics"

    @property
    def worker_metrics_url(self) -> str:
        return f"http://{HOST}:{self.worker_metrics_port}/metrics"

    @property
    def is_demo(self) -> bool:
        return self.app == DEFAULT_APP

    def environment(self, component: str, inherited: Mapping[str, str]) -> dict[str, str]:
        """The complete environment of ``python -m celeriac <component>``."""
        if component not in _COMPONENT_KEYS:
            raise ValueError(f"unknown component {component!r}")
        env = {
            key: value
            for key, value in inherited.items()
            if key not in MANAGED_KEYS and not key.startswith("CELERIAC_UP_")
        }
        # Log lines reach the terminal as they happen, not when a buffer fills.
        env["PYTHONUNBUFFERED"] = "1"
        env.update(
            CELERIAC_BROKER_URL=self.broker_url,
            CELERIAC_REDIS_PASSWORD=self.redis_password,
            CELERIAC_APP=self.app,
        )
        env.update(self._component_environment(component))
        return env

    def _component_environment(self, component: str) -> dict[str, str]:
        if component == "api":
            return {
                "CELERIAC_API_HOST": HOST,
                "CELERIAC_API_PORT": str(self.api_port),
                "CELERIAC_API_TOKENS": self.api_token,
            }
        if component == "worker":
            return {
                "CELERIAC_WORKER_CONCURRENCY": str(self.concurrency),
                "CELERIAC_WORKER_HEARTBEAT_FILE": str(self.worker_heartbeat_file),
                "CELERIAC_WORKER_READY_FILE": str(self.worker_ready_file),
                "CELERIAC_WORKER_METRICS_PORT": str(self.worker_metrics_port),
                "CELERIAC_WORKER_METRICS_DIR": str(self.metrics_dir),
                "CELERIAC_WORKER_SHUTDOWN_TIMEOUT_SECONDS": str(
                    self.worker_shutdown_timeout_seconds
                ),
            }
        if component == "beat":
            env = {"CELERIAC_BEAT_HEARTBEAT_FILE": str(self.beat_heartbeat_file)}
            if self.schedule_file is not None:
                env["CELERIAC_BEAT_SCHEDULE_FILE"] = str(self.schedule_file)
            return env
        env = {"CELERIAC_EXPORTER_HOST": HOST, "CELERIAC_EXPORTER_PORT": str(self.exporter_port)}
        if self.worker_groups_file is not None:
            env["CELERIAC_WORKER_GROUPS_FILE"] = str(self.worker_groups_file)
        return env

    def producer_environment(self) -> str:
        """``stack.env``: what your own code needs to send tasks to this stack (``set -a; .``)."""
        lines = [
            "# Written by `celeriac up`; load with: set -a; . ./stack.env; set +a",
            f"CELERIAC_BROKER_URL={self.broker_url}",
            f"CELERIAC_REDIS_PASSWORD={self.redis_password}",
            f"CELERIAC_APP={self.app}",
            f"CELERIAC_API_URL={self.api_url}",
            f"CELERIAC_API_TOKEN={self.api_token}",
            "",
        ]
        return "\n".join(lines)


def last_credentials(env_file: Path) -> dict[str, str]:
    """The ``CELERIAC_*`` values a previous run wrote to ``stack.env`` (none if it is absent)."""
    try:
        lines = env_file.read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.partition("=") for line in lines if not line.startswith("#"))
    return {key: value for key, sep, value in pairs if sep and key.startswith("CELERIAC_")}


def make_plan(settings: LocalSettings, state_dir: Path) -> tuple[StackPlan, list[str]]:
    """Choose ports and secrets; returns the plan and notes about ports that moved."""
    notes = []
    reserved: list[int] = []
    ports = {}
    for name, requested, default in (
        ("redis", settings.redis_port, DEFAULT_REDIS_PORT),
        ("api", settings.api_port, DEFAULT_API_PORT),
        ("exporter", settings.exporter_port, DEFAULT_EXPORTER_PORT),
        ("worker metrics", settings.worker_metrics_port, DEFAULT_WORKER_METRICS_PORT),
    ):
        choice = choose_port(name, requested, default, reserved)
        reserved.append(choice.port)
        ports[name] = choice.port
        if choice.note:
            notes.append(f"{name}: {choice.note}, using {choice.port}")
    password, token = new_secret(), settings.api_token or new_secret()
    if settings.keep_credentials:
        last = last_credentials(state_dir / ENV_FILE)
        password = last.get("CELERIAC_REDIS_PASSWORD") or password
        token = settings.api_token or last.get("CELERIAC_API_TOKEN") or token
        notes.append("credentials: the last run's password and token, kept (--keep-credentials)")
    else:
        notes.append("credentials: new this run; --keep-credentials keeps them across runs")
    schedule = settings.schedule_file
    if schedule is None and settings.app == LocalSettings().app:
        schedule = demo_schedule_file()
    plan = StackPlan(
        state_dir=state_dir,
        api_port=ports["api"],
        exporter_port=ports["exporter"],
        worker_metrics_port=ports["worker metrics"],
        redis_port=ports["redis"],
        redis_password=password,
        api_token=token,
        app=settings.app,
        schedule_file=schedule.resolve() if schedule is not None else None,
        worker_groups_file=(
            settings.worker_groups_file.resolve() if settings.worker_groups_file else None
        ),
        concurrency=settings.concurrency,
        worker_shutdown_timeout_seconds=settings.worker_shutdown_timeout_seconds,
    )
    return plan, notes


def ungrouped_queues(plan: StackPlan, inherited: Mapping[str, str]) -> tuple[str, ...]:
    """Queues the worker consumes that no worker group of the exporter counts.

    Without a groups file the exporter's one group spans every queue; a file of your own may
    leave some out, and then no group backlog (what KEDA scales on) sees them.
    """
    try:
        consumed = Settings.from_env(plan.environment("worker", inherited)).queues
        groups = ExporterSettings.from_env(plan.environment("exporter", inherited)).groups
    except ConfigError:
        # The component names the error itself when it starts.
        return ()
    grouped = {queue for group in groups for queue in group.queues}
    return tuple(queue for queue in consumed if queue not in grouped)
