"""capa_compat.celery end to end: real ``celery`` workers and beats on each backend.

One worker per backend serves every check of that backend (tests/celery_apps/proj.py). The
embedded SQLite default runs everything; the server backends run the task, canvas, control and
monitoring (``celery events``, Flower) checks, and a few checks of code that does not depend on
the backend run on two. Beat and kill -9 recovery are in tests/test_celery_recovery.py.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu.exceptions import EncodeError
from tests.celery_apps.harness import Project, delete_rabbitmq_queues, make_project, wait_for

from capa_compat.celery import chain, chord, group, signals, states
from capa_compat.celery.exceptions import TaskRevokedError, TimeoutError
from capa_compat.kombu import Connection

pytestmark = pytest.mark.slow

BACKENDS = ["sqlite", "redis", "postgres", "rabbitmq"]


@pytest.fixture(scope="module", params=BACKENDS)
def project(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    tmp = tmp_path_factory.mktemp(f"celery-{request.param}")
    project = make_project(tmp, request.param, CAPA_TEST_VT="2")
    prefix = {f":{project.env['CAPA_TEST_PREFIX']}"}
    project.backend = request.param  # type: ignore[attr-defined]
    cwd = os.getcwd()
    os.chdir(tmp)  # the embedded default lives in the working directory, as for the worker
    try:
        project.worker(f"w{uuid.uuid4().hex[:6]}", "-c", "2", "-Q", "celery,q2")
        yield project
    finally:
        project.stop_all()
        os.chdir(cwd)
        if request.param == "rabbitmq":
            delete_rabbitmq_queues(prefix)


@pytest.fixture
def proj(project: Project) -> Iterator[Any]:
    try:
        yield project.module
    except BaseException:
        print(project.logs())
        raise


def test_delay_get_state(proj: Any) -> None:
    result = proj.add.delay(2, 3)
    assert result.get(timeout=20) == 5
    assert result.ready() and result.successful()
    assert result.state == states.SUCCESS
    assert proj.app.AsyncResult(result.id).result == 5


def test_countdown_eta_and_expires(proj: Any) -> None:
    sent = time.time()
    later = proj.where.apply_async(countdown=1.5)
    eta = proj.where.apply_async(eta=datetime.datetime.now(datetime.UTC)
                                 + datetime.timedelta(seconds=1.5))
    expired = proj.add.apply_async((1, 1), countdown=2, expires=1)
    assert later.get(timeout=20)["t"] >= sent + 1.5
    assert eta.get(timeout=20)["t"] >= sent + 1.5
    with pytest.raises(TaskRevokedError):
        expired.get(timeout=20)
    assert expired.state == states.REVOKED


def test_queue_routing(proj: Any) -> None:
    assert proj.where.apply_async(queue="q2").get(timeout=20)["routing_key"] == "q2"
    assert proj.where.delay().get(timeout=20)["routing_key"] == "celery"


def test_priority(project: Project, proj: Any) -> None:
    low = [proj.ordered.apply_async(("low",), queue="prio", priority=1) for _ in range(4)]
    high = proj.ordered.apply_async(("high",), queue="prio", priority=9)
    time.sleep(0.5)  # all of them wait in the queue before the worker looks at it
    replies = proj.app.control.add_consumer(
        "prio", reply=True, timeout=5, destination=[project.hostname], limit=1
    )
    assert replies, project.logs()
    for result in [*low, high]:
        result.get(timeout=20)
    labels = [r["label"] for r in sorted(project.records("ordered"), key=lambda r: r["t"])]
    # Published last, it is handed out first; the worker's two pool processes then start it and
    # the next one together, in either order. Without priorities it would start fifth.
    assert "high" in labels[:2], labels


def test_retry_backoff_and_max_retries(project: Project, proj: Any) -> None:
    if project.backend not in ("sqlite", "redis"):  # type: ignore[attr-defined]
        pytest.skip("retry timing is Celery's: two backends suffice")
    assert proj.flaky.delay(2).get(timeout=20) == 2
    backs_off = proj.backs_off.delay()
    failing = proj.always_retries.delay()
    with pytest.raises(RuntimeError, match="still failing"):
        failing.get(timeout=20)
    assert failing.state == states.FAILURE
    assert backs_off.get(timeout=30) == 2
    times = [r["t"] for r in project.records("backs_off")]
    assert len(times) == 3
    # retry_backoff=1: the retries wait 1 s and then 2 s.
    assert times[1] - times[0] >= 0.9 and times[2] - times[1] >= 1.9


def test_failure_traceback_and_signals(project: Project, proj: Any) -> None:
    published: list[str] = []

    def on_publish(sender: str | None = None, headers: Any = None, **kwargs: Any) -> None:
        published.append(headers["id"])

    signals.after_task_publish.connect(on_publish)
    try:
        failed = proj.boom.delay("broken on purpose")
        ok = proj.add.delay(20, 22)
    finally:
        signals.after_task_publish.disconnect(on_publish)
    with pytest.raises(ValueError, match="broken on purpose"):
        failed.get(timeout=20)
    assert failed.failed() and failed.state == states.FAILURE
    assert "ValueError: broken on purpose" in failed.traceback
    assert ok.get(timeout=20) == 42
    assert {failed.id, ok.id} <= set(published)

    def kinds() -> set[tuple[str, str]]:
        return {(r["kind"], r["task_id"]) for r in project.records() if "task_id" in r}

    # Celery stores a result before it sends task_success / task_failure: wait for both.
    wanted = {("signal-prerun", ok.id), ("signal-success", ok.id), ("signal-failure", failed.id)}
    wait_for(lambda: wanted <= kinds(), 10, "task_success and task_failure in the worker")


def test_ignore_result(project: Project, proj: Any) -> None:
    token = uuid.uuid4().hex
    result = proj.quiet.delay(token)
    wait_for(lambda: [r for r in project.records("quiet") if r["token"] == token], 20, "quiet")
    time.sleep(0.3)
    assert result.state == states.PENDING  # ran, and nothing was stored
    assert proj.app.backend.get(proj.app.backend.get_key_for_task(result.id)) is None


def test_canvas(proj: Any) -> None:
    assert chain(proj.add.s(1, 2), proj.add.s(3), proj.add.s(4))().get(timeout=20) == 10
    assert group(proj.add.s(i, i) for i in range(10))().get(timeout=20) == [
        2 * i for i in range(10)
    ]
    # 30 header tasks finishing on two processes: the chord counter must count every one.
    body = chord((proj.add.s(i, 1) for i in range(30)), proj.tsum.s())()
    assert body.get(timeout=30) == sum(range(30)) + 30
    chunks = proj.add.chunks([(i, i) for i in range(6)], 3).group().apply_async()
    assert chunks.get(timeout=20) == [[0, 2, 4], [6, 8, 10]]


def test_get_timeout_and_revoke(proj: Any) -> None:
    slow = proj.slow.delay(1.5, uuid.uuid4().hex)
    with pytest.raises(TimeoutError):
        slow.get(timeout=0.3)
    assert not slow.ready()
    revoked = proj.add.apply_async((1, 1), countdown=2)
    revoked.revoke()
    with pytest.raises(TaskRevokedError):
        revoked.get(timeout=20)
    assert revoked.state == states.REVOKED
    assert slow.get(timeout=20)


def test_inspect_ping(project: Project) -> None:
    done = project.celery("inspect", "ping", "--timeout", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pong" in done.stdout


def test_events_reach_celery_events_and_flower(project: Project, proj: Any) -> None:
    """The worker's task events, switched on by a broadcast, reach both monitors."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    project.env["FLOWER_UNAUTHENTICATED_API"] = "true"  # Flower 2 serves its API only so
    dump = project.start("events", "--dump", log="events.log")
    flower = project.start("flower", "--address=127.0.0.1", f"--port={port}", log="flower.log",
                           ready="Visit me at")
    try:
        enabled = project.celery("control", "enable_events", "--timeout", "5")
        assert "OK" in enabled.stdout, enabled.stdout + enabled.stderr
        results = [proj.add.delay(n, n) for n in range(3)]
        assert [r.get(timeout=30) for r in results] == [0, 2, 4]
        ids = {r.id for r in results}

        def flower_saw_them() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/tasks", timeout=5) as r:
                tasks = json.load(r)
            return all(tasks.get(i, {}).get("state") == "SUCCESS" for i in ids)

        wait_for(flower_saw_them, 30, "Flower to list the three tasks as succeeded")
        dumped = project.dir / "events.log"
        wait_for(lambda: all(i in dumped.read_text(errors="replace") for i in ids), 30,
                 "celery events --dump to print the three tasks")
        assert "task succeeded" in dumped.read_text(errors="replace")
    finally:
        project.celery("control", "disable_events", "--timeout", "5")
        for process in (dump, flower):
            process.terminate()
            process.wait(10)


def test_unserializable_argument_is_named(proj: Any) -> None:
    with pytest.raises(EncodeError, match=r"positional argument 1 \(object\)"):
        proj.add.delay(1, object())
    with pytest.raises(EncodeError, match=r"keyword argument 'y'"):
        proj.add.delay(x=1, y={1, 2})


def test_poison_message_is_dead_lettered(project: Project, proj: Any) -> None:
    if project.backend != "sqlite":  # type: ignore[attr-defined]
        pytest.skip("dead-lettering is the transport's, whatever the backend")
    crash = proj.crash.delay()
    prefix = project.env["CAPA_TEST_PREFIX"]
    url = project.env.get("CAPA_TEST_BROKER") or "capa://default"
    with Connection(url, transport_options={"topic_prefix": prefix}) as connection:
        dead = connection.SimpleQueue("celery.dead")
        message = dead.get(timeout=60)  # three pool children died on it, then it went here
        assert message.headers["id"] == crash.id
        message.ack()
        dead.close()
    assert proj.add.delay(1, 1).get(timeout=20) == 2  # and the worker keeps going


def test_task_longer_than_visibility_timeout_runs_once(project: Project, proj: Any) -> None:
    if project.backend not in ("sqlite", "redis"):  # type: ignore[attr-defined]
        pytest.skip("the lease keeper is backend-independent: two backends suffice")
    token = uuid.uuid4().hex
    # The worker's visibility timeout is 2 s; the task holds its message (acks_late) for 3.5 s:
    # a lease left to run out would have handed the message to the other pool process.
    assert proj.slow.delay(3.5, token).get(timeout=30) == token
    starts = [r for r in project.records("slow-start") if r["token"] == token]
    assert len(starts) == 1, starts
