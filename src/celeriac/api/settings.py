"""API settings: where to listen, who may call, which tasks may be submitted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from celeriac.env import ConfigError, Env
from celeriac.settings import Settings

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8000
# Task arguments travel through Redis and every worker's memory; big payloads belong elsewhere.
DEFAULT_MAX_BODY_BYTES = 65536
# One process serves about one core; more processes per pod need a CPU limit to match.
DEFAULT_WORKERS = 1
MAX_WORKERS = 64
# How long an Idempotency-Key names its first submission (``celeriac.api.idempotency``).
DEFAULT_IDEMPOTENCY_WINDOW_SECONDS = 86400
# Ids kept for ``GET /v1/tasks``, newest first (about 100 bytes of Redis memory each).
DEFAULT_RECENT_TASKS = 10000
MAX_RECENT_TASKS = 1_000_000


@dataclass(frozen=True)
class ApiSettings:
    """Settings of ``celeriac api``; ``common`` holds the broker, app and queue settings.

    ``tokens`` stay out of ``repr`` so they never reach a log.
    """

    tokens: tuple[str, ...] = field(repr=False)
    common: Settings = field(default_factory=Settings)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # None: every task the app registers except Celery's own ``celery.*``.
    allowed_tasks: tuple[str, ...] | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # uvicorn worker processes sharing the listening socket.
    workers: int = DEFAULT_WORKERS
    # One line per request; off by default (see the API README: it costs ~15-25% throughput).
    access_log: bool = False
    idempotency_window_seconds: int = DEFAULT_IDEMPOTENCY_WINDOW_SECONDS
    # 0: no list of recent tasks is kept (``GET /v1/tasks`` lists nothing).
    recent_tasks: int = DEFAULT_RECENT_TASKS

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ConfigError(_NO_TOKENS)
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(
                f"CELERIAC_API_WORKERS={self.workers} must be between 1 and {MAX_WORKERS}"
            )
        if not 0 <= self.recent_tasks <= MAX_RECENT_TASKS:
            raise ConfigError(
                f"CELERIAC_API_RECENT_TASKS={self.recent_tasks} must be between 0 and "
                f"{MAX_RECENT_TASKS}"
            )
        if self.idempotency_window_seconds < 1:
            raise ConfigError(
                f"CELERIAC_API_IDEMPOTENCY_WINDOW_SECONDS={self.idempotency_window_seconds} "
                "must be at least 1"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiSettings:
        env = Env(environ)
        return cls(
            # First, so a broken shared setting is reported before an API one, as before.
            common=Settings.from_env(environ),
            tokens=_tokens(env),
            host=env.host("API_HOST", DEFAULT_HOST),
            # 0: any free port (tests and `celeriac up` pick one).
            port=env.port("API_PORT", DEFAULT_PORT, minimum=0),
            allowed_tasks=env.names("API_ALLOWED_TASKS", ()) or None,
            max_body_bytes=env.integer("API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1),
            workers=env.integer("API_WORKERS", DEFAULT_WORKERS, minimum=1),
            access_log=env.boolean("API_ACCESS_LOG", False),
            idempotency_window_seconds=env.integer(
                "API_IDEMPOTENCY_WINDOW_SECONDS", DEFAULT_IDEMPOTENCY_WINDOW_SECONDS, minimum=1
            ),
            recent_tasks=env.integer("API_RECENT_TASKS", DEFAULT_RECENT_TASKS, minimum=0),
        )


_NO_TOKENS = (
    "no API token configured; set CELERIAC_API_TOKENS (comma list) or "
    "CELERIAC_API_TOKENS_FILE (one token per line)"
)


def _tokens(env: Env) -> tuple[str, ...]:
    direct = env.raw("API_TOKENS")
    path = env.raw("API_TOKENS_FILE")
    if direct is not None and path is not None:
        raise ConfigError("set only one of CELERIAC_API_TOKENS and CELERIAC_API_TOKENS_FILE")
    if path is not None:
        tokens = parse_token_file(path)
        source = f"CELERIAC_API_TOKENS_FILE={path!r}"
    elif direct is not None:
        tokens = [token.strip() for token in direct.split(",") if token.strip()]
        source = "CELERIAC_API_TOKENS"
    else:
        raise ConfigError(_NO_TOKENS)
    if not tokens:
        raise ConfigError(f"{source} holds no token")
    for number, token in enumerate(tokens, start=1):
        check_token(f"{source}: token {number}", token)
    return tuple(dict.fromkeys(tokens))


def check_token(label: str, token: str) -> str:
    """``token`` if a client can send it as ``Bearer <token>``; else an error naming ``label``.

    Never echoes the token itself: ``label`` says which one, the message what is wrong.
    """
    if any(char.isspace() for char in token):
        raise ConfigError(f"{label} contains whitespace")
    if not token.isascii() or not token.isprintable():
        raise ConfigError(f"{label} must be printable ASCII")
    return token


def parse_token_file(path: str) -> list[str]:
    """Tokens of a file mounted from a Secret: one per line, blank lines and ``#`` comments out."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"CELERIAC_API_TOKENS_FILE={path!r} cannot be read: {reason}") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]
