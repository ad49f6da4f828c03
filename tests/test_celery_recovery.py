"""capa_compat.celery under failure: kill -9 of a busy worker, and beat with two processes.

Two beats start with the module and run while the kill -9 checks do, so the crontab check (which
must see a minute boundary pass) costs no extra time.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.celery_apps.harness import Project, delete_rabbitmq_queues, make_project, wait_for

pytestmark = pytest.mark.slow


class BeatRun:
    def __init__(
        self, project: Project, beats: list[subprocess.Popen[bytes]], started: float
    ) -> None:
        self.project, self.beats, self.started = project, beats, started


@pytest.fixture(scope="module")
def beat_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BeatRun]:
    tmp = tmp_path_factory.mktemp("celery-beat")
    project = make_project(tmp, "sqlite", CAPA_TEST_BEAT="1")
    try:
        project.worker(f"b{uuid.uuid4().hex[:6]}", "-c", "1", "-Q", "celery")
        started = time.time()
        beats = [
            project.start("beat", "-l", "info", "-s", str(tmp / f"unused{n}"),
                          log=f"beat{n}.log", ready="beat: Starting")
            for n in (1, 2)
        ]
        yield BeatRun(project, beats, started)
    finally:
        project.stop_all()


@pytest.fixture
def in_project_dir(tmp_path: Path) -> Iterator[Path]:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(cwd)


def finished(proj: Any, ids: list[str]) -> int:
    """How many of ``ids`` the result backend holds as SUCCESS."""
    backend = proj.app.backend
    done = 0
    for start in range(0, len(ids), 500):
        keys = [backend.get_key_for_task(i) for i in ids[start:start + 500]]
        for value in backend.mget(keys):
            if value is not None and backend.decode_result(value)["status"] == "SUCCESS":
                done += 1
    return done


@pytest.mark.parametrize("backend", ["sqlite", "redis", "rabbitmq"])
def test_kill9_mid_run_loses_no_task(
    backend: str, in_project_dir: Path, beat_run: BeatRun
) -> None:
    project = make_project(in_project_dir, backend)  # default transport settings
    proj = project.module
    try:
        ids = [proj.counted.apply_async((n,), queue="kq").id for n in range(1000)]
        first = project.worker(f"k1{uuid.uuid4().hex[:6]}", "-c", "2", "-Q", "kq", log="k1.log")
        wait_for(lambda: finished(proj, ids) >= 200, 60, "200 tasks done")
        Project.kill(first)  # the worker and its pool children, mid-task
        at_kill = finished(proj, ids)
        assert at_kill < 1000
        started = time.monotonic()
        project.worker(f"k2{uuid.uuid4().hex[:6]}", "-c", "2", "-Q", "kq", log="k2.log")
        wait_for(lambda: finished(proj, ids) == 1000, 60, "all 1000 tasks done")
        took = time.monotonic() - started
        print(f"{backend}: {at_kill} done at kill -9; the rest within {took:.1f}s")
        assert took < 60
    except BaseException:
        print(project.logs())
        raise
    finally:
        project.stop_all()
        if backend == "rabbitmq":
            delete_rabbitmq_queues({f":{project.env['CAPA_TEST_PREFIX']}"})


def sent_by(log: Path) -> int:
    return log.read_text(errors="replace").count("Sending due task")


def test_beat_fires_on_time_from_one_of_two_processes(beat_run: BeatRun) -> None:
    project = beat_run.project
    logs = [project.dir / "beat1.log", project.dir / "beat2.log"]
    # Wait for a minute boundary to pass (crontab() fires at every minute) and a bit more.
    boundary = (beat_run.started // 60 + 1) * 60
    wait_for(lambda: time.time() > boundary + 3, 70, "a minute boundary")
    try:
        senders = [n for n, log in enumerate(logs) if sent_by(log)]
        assert len(senders) == 1, [sent_by(log) for log in logs]
        interval = sorted(r["t"] for r in project.records("interval"))
        elapsed = time.time() - beat_run.started
        assert elapsed - 4 <= len(interval) <= elapsed + 1, (len(interval), elapsed)
        gaps = [b - a for a, b in itertools.pairwise(interval)]
        assert min(gaps) > 0.5, gaps  # never two runs of one second: no double firing
        # The beats may have run for minutes before this test (the fixture is shared): one
        # crontab run for every minute boundary since they started, each on time, none twice.
        crontab = sorted(r["t"] for r in project.records("crontab"))
        minutes = [int(t // 60) for t in crontab]
        assert len(set(minutes)) == len(minutes), crontab
        assert all(t % 60 <= 3 for t in crontab), crontab
        passed = set(range(int(beat_run.started // 60) + 1, int((time.time() - 3) // 60) + 1))
        assert boundary // 60 in passed
        assert passed <= set(minutes) <= passed | {int(time.time() // 60)}, crontab

        # The leader dies: the other beat takes over after the lock's 3 s, without repeats.
        leader = beat_run.beats[senders[0]]
        Project.kill(leader)
        killed = time.time()
        standby = logs[1 - senders[0]]
        wait_for(lambda: sent_by(standby) >= 2, 20, "the standby beat to send")
        time.sleep(2)
        after = sorted(r["t"] for r in project.records("interval") if r["t"] > killed)
        gaps = [b - a for a, b in itertools.pairwise(after)]
        assert after and min(gaps) > 0.5, gaps
    except BaseException:
        print(project.logs())
        raise
