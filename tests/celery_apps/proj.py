"""A small Celery project for the end-to-end tests, configured by CAPA_TEST_* variables.

CAPA_TEST_BROKER / CAPA_TEST_BACKEND: legacy or capa URLs ("" = the embedded default);
CAPA_TEST_PREFIX: topic and key prefix isolating one test run; CAPA_TEST_DIR: where tasks and
signal handlers write their records (JSON lines); CAPA_TEST_VT: the visibility timeout;
CAPA_TEST_BEAT: "1" adds an interval and a crontab entry to the beat schedule.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from kombu import Exchange, Queue

from capa_compat.celery import Celery, signals
from capa_compat.celery.schedules import crontab

PREFIX = os.environ.get("CAPA_TEST_PREFIX", "proj.")
RECORDS = Path(os.environ.get("CAPA_TEST_DIR", "."))

app = Celery("proj")
options = {"topic_prefix": PREFIX, "max_attempts": 3}
if os.environ.get("CAPA_TEST_VT"):
    options["visibility_timeout"] = float(os.environ["CAPA_TEST_VT"])
app.config_from_object(
    {
        "CELERY_BROKER_URL": os.environ.get("CAPA_TEST_BROKER") or None,
        "CELERY_RESULT_BACKEND": os.environ.get("CAPA_TEST_BACKEND") or None,
        "CELERY_BROKER_TRANSPORT_OPTIONS": options,
        "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": {"global_keyprefix": PREFIX},
        "CELERY_TASK_QUEUES": [
            Queue("celery", Exchange("celery"), routing_key="celery"),
            Queue("q2", Exchange("q2"), routing_key="q2"),
            Queue("prio", Exchange("prio"), routing_key="prio",
                  queue_arguments={"x-max-priority": 9}),
        ],
        "CELERY_WORKER_PREFETCH_MULTIPLIER": 1,
        "CELERY_BEAT_CAPA_LOCK_TTL": 3,
        "CELERY_WORKER_LOST_WAIT": 1,
    },
    namespace="CELERY",
)
if os.environ.get("CAPA_TEST_BEAT") == "1":
    app.conf.beat_schedule = {
        "every-second": {"task": "proj.record", "schedule": 1.0, "args": ("interval",)},
        "every-minute": {"task": "proj.record", "schedule": crontab(), "args": ("crontab",)},
    }


def write(kind: str, **fields: object) -> None:
    line = json.dumps({"kind": kind, "t": time.time(), "pid": os.getpid(), **fields}) + "\n"
    with open(RECORDS / "records.jsonl", "a") as out:
        out.write(line)


@app.task(shared=False)
def add(x, y):
    return x + y


@app.task(shared=False)
def tsum(values):
    return sum(values)


@app.task(shared=False)
def record(kind, **fields):
    write(kind, **fields)
    return kind


@app.task(shared=False, bind=True)
def where(self):
    return {"routing_key": self.request.delivery_info.get("routing_key"), "t": time.time()}


@app.task(shared=False, bind=True, max_retries=5, default_retry_delay=0.1)
def flaky(self, failures):
    if self.request.retries < failures:
        raise self.retry()
    return self.request.retries


@app.task(shared=False, bind=True, autoretry_for=(KeyError,), retry_backoff=1, retry_jitter=False,
          max_retries=2)
def backs_off(self):
    write("backs_off", retries=self.request.retries)
    if self.request.retries < 2:
        raise KeyError("not yet")
    return self.request.retries


@app.task(shared=False, bind=True, max_retries=1, default_retry_delay=0.1)
def always_retries(self):
    raise self.retry(exc=RuntimeError("still failing"))


@app.task(shared=False)
def boom(message):
    raise ValueError(message)


@app.task(shared=False, ignore_result=True)
def quiet(token):
    write("quiet", token=token)
    return token


@app.task(shared=False, bind=True)
def ordered(self, label):
    write("ordered", label=label)
    time.sleep(0.05)
    return label


@app.task(shared=False, bind=True, acks_late=True)
def slow(self, seconds, token):
    write("slow-start", token=token, task_id=self.request.id)
    time.sleep(seconds)
    return token


@app.task(shared=False, acks_late=True)
def counted(n):
    time.sleep(0.01)
    return n


@app.task(shared=False, acks_late=True, reject_on_worker_lost=True)
def crash():
    os._exit(1)  # dies as a segfaulting extension would: the pool loses the child


@signals.task_prerun.connect
def on_prerun(sender=None, task_id=None, **kwargs):
    if sender is not None and sender.name == "proj.add":
        write("signal-prerun", task_id=task_id)


@signals.task_success.connect
def on_success(sender=None, result=None, **kwargs):
    if sender is not None and sender.name == "proj.add":
        write("signal-success", task_id=sender.request.id, result=result)


@signals.task_failure.connect
def on_failure(sender=None, task_id=None, **kwargs):
    if sender is not None and sender.name == "proj.boom":
        write("signal-failure", task_id=task_id)
