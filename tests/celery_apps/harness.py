"""Starting real ``celery`` worker and beat processes on the test project, and reading records."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.services import require

HERE = Path(__file__).resolve().parent
CELERY = str(Path(sys.executable).with_name("celery"))


def settings_for(backend: str) -> dict[str, str]:
    """CAPA_TEST_* variables: the legacy URLs an existing Celery app would have."""
    if backend == "sqlite":
        return {}  # nothing set: the embedded default in the working directory
    if backend == "redis":
        url = require("redis") + "/3"
        return {"CAPA_TEST_BROKER": url, "CAPA_TEST_BACKEND": url}
    if backend == "postgres":
        url = require("postgres")
        return {"CAPA_TEST_BROKER": f"sqla+{url}", "CAPA_TEST_BACKEND": f"db+{url}"}
    return {"CAPA_TEST_BROKER": require("rabbitmq"), "CAPA_TEST_BACKEND": "rpc://"}


def make_project(tmp: Path, backend: str, **extra: str) -> Project:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    return Project(tmp, {**settings_for(backend), "CAPA_TEST_PREFIX": prefix, **extra})


class Project:
    """One configuration of tests/celery_apps/proj.py: its env, directory and processes."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.dir = directory
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CAPA_")},
            **env,
            "CAPA_TEST_DIR": str(directory),
            "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        }
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []
        self._module: types.ModuleType | None = None

    @property
    def module(self) -> Any:
        """proj imported in this process with this configuration (a fresh app of its own)."""
        if self._module is None:
            saved = dict(os.environ)
            os.environ.update({k: v for k, v in self.env.items() if k.startswith("CAPA_TEST")})
            try:
                spec = importlib.util.spec_from_file_location("proj", HERE / "proj.py")
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            finally:
                os.environ.clear()
                os.environ.update(saved)
            self._module = module
        return self._module

    def start(self, *args: str, log: str, ready: str | None = None,
              timeout: float = 40.0) -> subprocess.Popen[bytes]:
        """Run ``celery -A proj ARGS`` in the project directory, in its own process group."""
        log_path = self.dir / log
        out = open(log_path, "wb")  # noqa: SIM115 - the child writes to it until stopped
        process = subprocess.Popen(
            [CELERY, "-A", "proj", *args], cwd=self.dir, env=self.env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes.append((process, log_path))
        if ready is not None:
            wait_for(lambda: ready in log_path.read_text(errors="replace")
                     or process.poll() is not None, timeout, f"{log} to say {ready!r}")
            if process.poll() is not None:
                raise AssertionError(f"celery {args} exited:\n{self.tail(log_path)}")
        return process

    def worker(self, name: str, *args: str, log: str = "worker.log") -> subprocess.Popen[bytes]:
        self.hostname = f"{name}@{socket.gethostname()}"
        return self.start(
            "worker", "-n", f"{name}@%h", "-l", "info", *args, log=log, ready=" ready.",
        )

    def celery(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CELERY, "-A", "proj", *args], cwd=self.dir, env=self.env, capture_output=True,
            text=True, timeout=timeout,
        )

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """kill -9 the process and every pool child in its group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGTERM)  # warm shutdown, as an operator would
                    process.wait(10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    self.kill(process)
        self.processes.clear()

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.dir / "records.jsonl"
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in lines if kind is None or r["kind"] == kind]

    @staticmethod
    def tail(path: Path, lines: int = 60) -> str:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def logs(self) -> str:
        return "\n\n".join(f"--- {p.name}\n{self.tail(p)}" for _, p in self.processes)


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def delete_rabbitmq_queues(tokens: set[str]) -> None:
    """Delete the RabbitMQ queues whose names contain one of ``tokens`` (a test's own prefixes).

    A test that ends without deleting its groups (a killed worker, a failed assertion) leaves
    their queues behind: run after run they would slow the server down for everyone.
    """
    if not tokens:
        return
    try:
        listed = subprocess.run(
            ["rabbitmqctl", "list_queues", "name", "-q"], capture_output=True, text=True,
            timeout=60,
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return
    doomed = [name for name in listed if any(token in name for token in tokens)]
    if not doomed:
        return
    import pika

    connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/"))
    try:
        channel = connection.channel()
        for name in doomed:
            channel.queue_delete(name)
    finally:
        connection.close()
    tokens.clear()
