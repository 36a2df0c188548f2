"""An app that keeps its task results outside Redis (Celery's ``rpc://``): the API reads states
through its backend and refuses what needs results in Redis (test_api_schema)."""

from celery import Celery

app = Celery("results-elsewhere", set_as_current=False)
app.conf.result_backend = "rpc://"


@app.task(name="results_elsewhere.noop", shared=False)  # never in other apps
def noop() -> None:
    """A task, so the API has one to allow."""
