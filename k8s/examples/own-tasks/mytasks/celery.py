"""The Celery app of your tasks: a plain app; celeriac applies its broker, serializer and
queue configuration when it loads ``mytasks.celery:app``, so nothing here names Redis.

Give tasks explicit names: they are what producers and the API's allow-list use.
"""

from __future__ import annotations

from celery import Celery

app = Celery("mytasks")


@app.task(name="mytasks.word_count")
def word_count(text: str) -> int:
    """I/O-light work for the default queue."""
    return len(text.split())


@app.task(name="mytasks.fibonacci")
def fibonacci(n: int) -> int:
    """CPU-bound work: route it to the cpu worker group's queue."""
    a, b = 0, 1
    for _ in range(max(int(n), 0)):
        a, b = b, a + b
    return a
