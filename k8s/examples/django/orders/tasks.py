"""Tasks that use the ORM; found by ``app.autodiscover_tasks()``. Each takes ids, not objects:
arguments are JSON, and the row may have changed by the time the task runs."""

import os
import time

from celery import shared_task
from django.db import connection, transaction
from django.utils import timezone

from orders.models import Order


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        row = cursor.fetchone()
    return int(row[0])


@shared_task(name="orders.pay")
def pay(order_id: int) -> int:
    """Mark the order paid; returns how many rows changed (0 if it was paid already)."""
    return Order.objects.filter(pk=order_id, paid_at=None).update(
        paid_at=timezone.now(), paid_by_pid=os.getpid(), paid_on_connection=_backend_pid()
    )


@shared_task(name="orders.pay_slowly")
def pay_slowly(order_id: int, seconds: float) -> int:
    """Like ``pay``, inside one transaction that stays open ``seconds`` (a slow provider)."""
    with transaction.atomic():
        changed = Order.objects.filter(pk=order_id, paid_at=None).update(
            paid_at=timezone.now(), paid_by_pid=os.getpid(), paid_on_connection=_backend_pid()
        )
        time.sleep(seconds)
    return changed


@shared_task(name="orders.report")
def report() -> dict[str, int]:
    """A periodic task (scheduled in the admin): how many orders are paid and unpaid."""
    unpaid = Order.objects.filter(paid_at=None).count()
    return {"paid": Order.objects.count() - unpaid, "unpaid": unpaid}
