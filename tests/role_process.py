"""A child process running one role of a test module, talking with the test in lines."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class RoleProcess:
    """``python SCRIPT ROLE ARGS...``: the test tells it lines on stdin and reads what it says.

    The script's ``__main__`` block runs the role; every line the role prints starts with a word
    (``ready``, ``got``...) followed by values. Lines are read as they come, with arrival times.
    """

    def __init__(self, script: str, role: str, *args: object) -> None:
        self.role = role
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, script, role, *map(str, args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": path},
        )
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.strip()))

    def expect(self, word: str, timeout: float) -> tuple[float, list[str]]:
        """When the next line saying ``word`` arrived, and its values (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{self.role} did not say {word!r} within {timeout}s "
                    f"(exit code {self.proc.poll()})"
                ) from None
            said = line.split()
            if said[:1] == [word]:
                return at, said[1:]

    def silent(self, duration: float) -> bool:
        """True when the process printed nothing for ``duration`` seconds."""
        try:
            self.lines.get(timeout=duration)
        except queue.Empty:
            return True
        return False

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def say(*words: object) -> None:
    """In a role: one line to the test, at once."""
    print(*words, flush=True)
