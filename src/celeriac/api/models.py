"""Request and response bodies of the API (their schemas are what /openapi.json shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from celeriac.settings import MAX_PRIORITY, MIN_PRIORITY

# Marks the schema of a value that names a queue: each app's OpenAPI document replaces it with
# the enum of the queues that app serves (``celeriac.api.docs.publish_served_queues``).
SERVED_QUEUE = "x-celeriac-served-queue"


class TaskRequest(BaseModel):
    """A task to run. Unknown fields are refused, so a typo never passes silently."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"task": "celeriac.demo.add", "args": [1, 2]},
                {"task": "celeriac.demo.sleep", "kwargs": {"seconds": 5}, "countdown": 30},
            ],
            # What ``_one_delay`` refuses, in the schema: countdown and eta both given (null
            # counts as not given).
            "not": {
                "required": ["countdown", "eta"],
                "properties": {"countdown": {"type": "number"}, "eta": {"type": "string"}},
            },
        },
    )

    task: StrictStr = Field(min_length=1, max_length=255, description="Registered task name.")
    args: list[Any] = Field(default_factory=list, description="Positional arguments (JSON).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments (JSON).")
    queue: StrictStr | None = Field(
        default=None,
        min_length=1,
        description="One of CELERIAC_QUEUES; default CELERIAC_DEFAULT_QUEUE.",
        json_schema_extra={SERVED_QUEUE: True},
    )
    countdown: StrictFloat | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Run no earlier than this many seconds from now. Not with eta.",
    )
    eta: AwareDatetime | None = Field(
        default=None,
        description="Run no earlier than this ISO-8601 time with a time zone. Not with countdown.",
    )
    priority: StrictInt | None = Field(
        default=None,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description=f"{MIN_PRIORITY} (highest) to {MAX_PRIORITY} (lowest).",
    )

    @field_validator("eta", mode="before")
    @classmethod
    def _eta_is_text(cls, value: object) -> object:
        # Without this a bare number would pass as a Unix timestamp.
        if value is not None and not isinstance(value, str):
            raise ValueError("eta must be an ISO-8601 string such as 2030-01-01T12:00:00Z")
        return value

    @model_validator(mode="after")
    def _one_delay(self) -> Self:
        if self.countdown is not None and self.eta is not None:
            raise ValueError("give countdown or eta, not both")
        return self


class TaskAccepted(BaseModel):
    """A task was queued; poll ``Location`` for its state."""

    id: str
    task: str
    queue: str
    state: str = "PENDING"


class TaskError(BaseModel):
    """Why a task failed (or is being retried): the exception type and message, no traceback."""

    type: str
    message: str


class TaskStatus(BaseModel):
    """What is known about a task: its state, and its result or error once there is one."""

    id: str
    task: str | None = Field(default=None, description="Task name, when known.")
    queue: str | None = Field(default=None, description="Queue it was sent to, when known.")
    state: str = Field(
        description="PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED (or a state the task set)."
    )
    result: Any = Field(default=None, description="The return value, on SUCCESS.")
    error: TaskError | None = Field(default=None, description="On FAILURE, RETRY and REVOKED.")
    retries: int | None = None
    finished_at: str | None = Field(default=None, description="When it ended (ISO-8601, UTC).")


class TaskSummary(BaseModel):
    """A task in the list of recent submissions: its state, not its result (``GET`` the id)."""

    id: str
    task: str | None = Field(default=None, description="Task name, when known.")
    queue: str | None = Field(default=None, description="Queue it was sent to, when known.")
    state: str = Field(description="As in TaskStatus.")
    submitted_at: str = Field(description="When the API accepted it (ISO-8601, UTC).")
    finished_at: str | None = Field(default=None, description="When it ended (ISO-8601, UTC).")


class TaskPage(BaseModel):
    """Recent submissions, newest first."""

    tasks: list[TaskSummary]
    next_cursor: str | None = Field(
        description="Pass as ``cursor`` for the next page; null at the end of the list."
    )


class QueueBacklogInfo(BaseModel):
    """Messages of one queue: waiting in Redis, held by workers, and held until their ETA."""

    name: str
    waiting: int
    in_flight: int
    scheduled: int
    backlog: int = Field(description="waiting + in_flight: the work to do now.")
    dead_letters: int = Field(
        default=0, description="Tasks set aside after their worker was lost on each delivery."
    )


class QueueList(BaseModel):
    queues: list[QueueBacklogInfo]


class DeadLetterInfo(BaseModel):
    """A task set aside because its worker was lost on each of its last deliveries."""

    id: str = Field(description="The task id.")
    queue: str
    task: str | None = Field(description="Task name, when the message names one.")
    reason: str
    deliveries: int = Field(description="Deliveries that ended with the worker lost.")
    dead_lettered_at: datetime


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterInfo] = Field(description="Newest first.")
    total: int = Field(description="Dead letters of the queue (or of all queues) in all.")
    offset: int
    limit: int


class ApiIndex(BaseModel):
    """Where to go from here: paths of the docs, the OpenAPI document, resources and probes."""

    title: str
    version: str
    docs: str = Field(description="Swagger UI.")
    openapi: str = Field(description="The OpenAPI document.")
    tasks: str
    queues: str
    dead_letters: str
    health: str = Field(description="Liveness probe.")
    ready: str = Field(description="Readiness probe (pings Redis).")


class Probe(BaseModel):
    status: str


class ErrorBody(BaseModel):
    """Every error: ``detail`` is a sentence, or for 422 a list of {loc, msg, type}."""

    detail: str | list[dict[str, Any]]
