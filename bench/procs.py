"""Child processes of the harness: started on loopback, always stopped.

Every server runs in its own session (process group), so a Ctrl-C in the terminal
reaches only the harness, which then stops each child itself: SIGTERM to the child's
group, SIGKILL after a grace period. :class:`Supervisor` is a context manager; leaving
it (normally, on an exception, on Ctrl-C or on SIGTERM, see :func:`sigterm_raises`)
stops everything it started.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

LOOPBACK = "127.0.0.1"


class HarnessError(RuntimeError):
    """Something the harness needs did not work (a server did not start, ...)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass(eq=False)
class Child:
    name: str
    argv: Sequence[str]
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    started_at: float = field(default_factory=time.perf_counter)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident set size, from /proc/<pid>/status (VmRSS, in kB there)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise HarnessError(f"{self.name}: no VmRSS in /proc/{self.pid}/status")


class Supervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Child] = []
        self._serial = 0

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        cwd: Path | None = None,
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._serial += 1
        log_path = self.log_dir / f"{self._serial:02d}-{name}.log"
        started_at = time.perf_counter()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        child = Child(
            name=name,
            argv=argv,
            process=process,
            log_path=log_path,
            port=port,
            started_at=started_at,
        )
        self._children.append(child)
        return child

    def stop(self, child: Child, *, grace_seconds: float = 10.0) -> None:
        if child in self._children:
            self._children.remove(child)
        if child.process.poll() is not None:
            return
        _signal_group(child.process, signal.SIGTERM)
        try:
            child.process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            _signal_group(child.process, signal.SIGKILL)
            child.process.wait(timeout=5)

    def close(self) -> None:
        for child in reversed(list(self._children)):
            with contextlib.suppress(Exception):
                self.stop(child, grace_seconds=5.0)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    # The child was started with start_new_session=True: its pid is its group id, and
    # the group holds only it and what it started.
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError:
        process.send_signal(signum)


def http_status(url: str, path: str, *, timeout: float = 1.0) -> int | None:
    """The status of a GET, or None when nothing answers (yet)."""
    host, _, port = url.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def wait_for_status(
    child: Child,
    path: str,
    *,
    timeout: float = 30.0,
    interval: float = 0.01,
    accept: frozenset[int] = frozenset({200}),
) -> float:
    """Poll ``GET path`` until it answers an accepted status; seconds since the start."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if not child.running():
            raise HarnessError(
                f"{child.name} exited with {child.process.returncode} before it was ready; "
                f"last log lines:\n{child.log_tail()}"
            )
        if http_status(child.url, path, timeout=max(interval, 0.5)) in accept:
            return time.perf_counter() - child.started_at
        time.sleep(interval)
    raise HarnessError(
        f"{child.name} was not ready within {timeout:.0f} s; last log lines:\n{child.log_tail()}"
    )


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so every ``finally`` runs."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
