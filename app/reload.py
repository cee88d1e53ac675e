"""Config reload: on a change of the policy file (polled) and on ``SIGHUP``.

A reload validates the new file completely before anything changes. A bad file leaves
the old policy in force, logs the YAML paths and reasons, and counts a ``failure``; a
good one is built and then swapped in with one reference assignment. The poll looks at
the policy file *and* every ``${file:...}`` it references, so a rotated Kubernetes or
Docker secret is picked up without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from app.config.loader import ConfigError, load_policy_file
from app.runtime import Runtime

log = logging.getLogger("token_broker.reload")

_FILE_REFERENCE = re.compile(r"\$\{file:([^}]*)\}")


def fingerprint(path: Path) -> str:
    """A digest of the policy file and the secret files it references (blocking I/O)."""
    digest = hashlib.sha256()
    try:
        text = path.read_bytes()
    except OSError as exc:
        return f"unreadable:{exc.errno}"
    digest.update(text)
    for reference in sorted(set(_FILE_REFERENCE.findall(text.decode("utf-8", "replace")))):
        digest.update(b"\0" + reference.encode())
        try:
            digest.update(Path(reference).read_bytes())
        except OSError as exc:
            digest.update(f"unreadable:{exc.errno}".encode())
    return digest.hexdigest()


class PolicyReloader:
    def __init__(self, runtime: Runtime, path: Path, interval_seconds: float) -> None:
        self._runtime = runtime
        self._path = path
        self._interval = interval_seconds
        self._lock = asyncio.Lock()
        self._seen = ""
        self._tasks: set[asyncio.Task[object]] = set()
        self._signal_installed = False

    async def start(self) -> None:
        self._seen = await asyncio.to_thread(fingerprint, self._path)
        if self._interval > 0:
            self._spawn(self._watch())
        loop = asyncio.get_running_loop()
        # Only the main thread may own signal handlers (not so under some test runners).
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload("sighup")))
            self._signal_installed = True

    async def aclose(self) -> None:
        if self._signal_installed:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                current = await asyncio.to_thread(fingerprint, self._path)
                if current != self._seen:
                    await self.reload("file_changed")
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("config.watch_error")

    async def reload(self, reason: str) -> bool:
        """Validate and swap in the policy file; True when the new policy is in force."""
        async with self._lock:
            metrics = self._runtime.metrics
            self._seen = await asyncio.to_thread(fingerprint, self._path)
            try:
                config = await asyncio.to_thread(load_policy_file, self._path)
                active = await self._runtime.build(config)
            except ConfigError as exc:
                metrics.config_reloads_total.labels("failure").inc()
                log.error(
                    "config.reload_failed",
                    extra={"reason": reason, "problems": [str(issue) for issue in exc.issues]},
                )
                return False
            except Exception as exc:
                metrics.config_reloads_total.labels("failure").inc()
                log.error(
                    "config.reload_failed",
                    extra={"reason": reason, "problems": [type(exc).__name__]},
                )
                return False
            self._runtime.activate(active)
            await self._runtime.jwks.prune(active.verifier.jwks_sources)
            metrics.config_reloads_total.labels("success").inc()
            log.info(
                "config.reloaded",
                extra={
                    "reason": reason,
                    "tenants": len(config.tenants),
                    "embeds": len(config.embeds),
                },
            )
            return True
