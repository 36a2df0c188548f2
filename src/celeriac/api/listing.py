"""``GET /v1/tasks``: the recent submissions, newest first, a page at a time.

Each submission adds its id to a sorted set (``tracking.Recent``, scored by submit time); a page
reads the ids after its cursor with one script and their states with one pipelined round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio

from celeriac.api.models import TaskStatus, TaskSummary
from celeriac.api.tracking import RECENT_KEY, RECORD_PREFIX, RESULT_PREFIX, parse_status

# KEYS[1]: the recent ids. ARGV: the cursor's id ('' for the newest), its score, how many.
# The ids after the cursor, newest first, with their scores. Where the cursor's id is gone (taken
# back), the ids older than its score follow it. One script: nothing moves in between.
RECENT_AFTER = """
local start = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
  if rank then
    start = rank + 1
  else
    start = redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf')
  end
end
return redis.call('ZREVRANGE', KEYS[1], start, start + tonumber(ARGV[3]) - 1, 'WITHSCORES')
"""
# Ids whose state one request reads at most: a rare state's filter stops here with a cursor.
MAX_SCANNED = 1000
MIN_CHUNK = 100


@dataclass(frozen=True)
class Cursor:
    """Where a page of recent tasks ended: the last id looked at and its score."""

    score: int
    task_id: str

    def __str__(self) -> str:
        return f"{self.score}:{self.task_id}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        score, _, task_id = text.partition(":")
        if not score.isdigit() or not task_id:
            return None
        return cls(int(score), task_id)


async def recent(
    client: redis.asyncio.Redis,
    *,
    limit: int,
    state: str | None = None,
    after: Cursor | None = None,
) -> tuple[list[TaskSummary], Cursor | None]:
    """Recent submissions, newest first, from ``after`` on: at most ``limit`` (in ``state``,
    in any case: Celery's states are upper-case, a custom state a task sets may not be).

    States are read for the ids looked at only, at most ``MAX_SCANNED`` per call: a filter
    that matches little returns fewer tasks and a cursor to go on from. Ids whose record and
    result have both expired are passed over. The cursor is None at the end of the list.
    """
    found: list[TaskSummary] = []
    scanned = 0
    chunk = limit if state is None else max(limit, MIN_CHUNK)
    while True:
        size = min(chunk, MAX_SCANNED - scanned)
        words = ("", 0) if after is None else (after.task_id, after.score)
        reply = await client.eval(RECENT_AFTER, 1, RECENT_KEY, *words, size)
        entries = [(reply[i].decode(), int(float(reply[i + 1]))) for i in range(0, len(reply), 2)]
        if not entries:
            return found, None
        scanned += len(entries)
        async with client.pipeline(transaction=False) as pipe:
            for task_id, _ in entries:
                pipe.get(RECORD_PREFIX + task_id)
                pipe.get(RESULT_PREFIX + task_id)
            raws = await pipe.execute()
        for index, (task_id, score) in enumerate(entries):
            after = Cursor(score, task_id)
            status = parse_status(task_id, raws[2 * index], raws[2 * index + 1])
            if status is None or (state is not None and status.state.upper() != state.upper()):
                continue
            found.append(_summary(status, score))
            if len(found) == limit:
                return found, after
        if len(entries) < size:
            return found, None
        if scanned >= MAX_SCANNED:
            return found, after


def _summary(status: TaskStatus, score: int) -> TaskSummary:
    submitted = datetime.fromtimestamp(score / 1_000_000, UTC)
    return TaskSummary(
        id=status.id,
        task=status.task,
        queue=status.queue,
        state=status.state,
        submitted_at=submitted.isoformat(),
        finished_at=status.finished_at,
    )
