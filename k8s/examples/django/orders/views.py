from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from orders.models import Order
from orders.tasks import pay as pay_task


@csrf_exempt  # an API endpoint for the example; a form view keeps Django's CSRF check
@require_POST
def pay(request: HttpRequest, order_id: int) -> JsonResponse:
    """Enqueue the payment and answer at once: 202 with the task id."""
    order = get_object_or_404(Order, pk=order_id)
    result = pay_task.delay(order.pk)
    return JsonResponse({"order": order.pk, "task_id": result.id}, status=202)
