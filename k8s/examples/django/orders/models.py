from django.db import models


class Order(models.Model):
    """An order paid by a task: the slow part (a payment provider, say) runs in a worker."""

    amount_cents = models.PositiveIntegerField()
    paid_at = models.DateTimeField(null=True, blank=True)
    # Which worker process and which PostgreSQL connection (backend pid) ran the payment:
    # shown in the admin, and how the tests see Django's connection handling in the worker.
    paid_by_pid = models.IntegerField(null=True, blank=True)
    paid_on_connection = models.IntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return f"order {self.pk} ({'paid' if self.paid_at else 'unpaid'})"
