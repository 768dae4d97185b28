"""The processes the demo starts: the agent, gunicorn and the Celery worker.

Each runs in its own session (so its whole process group can be stopped, workers
included, whatever happens to the demo), with its output in a log file of the run
directory, except the agent's stdout, which the demo reads to count its flushes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


class DemoError(RuntimeError):
    """The demo could not get on (a server did not start, stalled, or exited early)."""


def wait_until(
    condition: Callable[[], bool],
    deadline: float,
    what: str,
    tick: Callable[[], None] | None = None,
) -> None:
    """Poll ``condition`` until it holds, calling ``tick`` (the live view) meanwhile;
    raise :class:`DemoError` at ``deadline`` (a ``time.monotonic()`` value)."""
    delay = 0.01
    while not condition():
        if time.monotonic() >= deadline:
            raise DemoError(f"timed out waiting for {what}")
        if tick is not None:
            tick()
        time.sleep(delay)  # the pace of the poll, not a synchronisation
        delay = min(delay * 2, 0.1)


class Service:
    """A subprocess in its own session, logging to ``log``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log: Path,
        cwd: Path,
        pass_fds: tuple[int, ...] = (),
        stdout: int | None = None,
    ) -> None:
        self.name = name
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115  (closed in kill())
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file if stdout is None else stdout,
            stderr=self._log_file,
            pass_fds=pass_fds,
            start_new_session=True,
        )
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "\n".join(f"    {line}" for line in tail)

    def found_in_log(self, pattern: str) -> list[str]:
        return re.findall(pattern, self.log_text())

    def wait_for_log(
        self, pattern: str, count: int, deadline: float, tick: Callable[[], None] | None = None
    ) -> list[str]:
        """Wait until the log has ``count`` matches of ``pattern``; the process must
        stay alive meanwhile. Returns the matches."""
        found: list[str] = []

        def ready() -> bool:
            nonlocal found
            found = self.found_in_log(pattern)
            if len(found) >= count:
                return True
            if not self.alive():
                raise DemoError(
                    f"{self.name} exited ({self.process.returncode}) before it was ready; "
                    f"the end of {self.log}:\n{self.log_tail()}"
                )
            return False

        try:
            wait_until(ready, deadline, f"{self.name} to start", tick)
        except DemoError as error:
            raise DemoError(f"{error}; the end of {self.log}:\n{self.log_tail()}") from None
        return found

    def group(self) -> list[int]:
        """The live (not zombie) processes of this service's process group."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
            except (OSError, ValueError):
                continue
            if len(fields) > 2 and int(fields[2]) == self.pid and fields[0] != "Z":
                found.append(int(entry.name))
        return sorted(found)

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill whatever is left of the process group, and reap the main process."""
        # Once the main process is reaped, its id names our group only while members
        # of it are left (the kernel does not reuse an id that is still a group's).
        if self.alive() or self.group():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._log_file.close()


class AgentFlushes:
    """Reads the agent's stdout (its stdout backend prints one block per flush, led by
    a ``--- <time> interval ...`` header) and counts the flushes as they come."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.count = 0
        self.last_header = ""
        self._stream = stream
        self._thread = threading.Thread(target=self._read, name="demo-agent-stdout", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for raw in self._stream:
            line = raw.decode(errors="replace")
            if line.startswith("--- "):  # "--- <time> interval 1s: 12 series, 3 events, ..."
                self.count += 1
                self.last_header = line.partition(": ")[2].strip()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
