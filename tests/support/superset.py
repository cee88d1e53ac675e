"""A real Apache Superset on loopback, for the broker's Superset provider to talk to.

Superset is a large Flask application (about 800 MB installed) with dependencies that
conflict with the broker's own, so it lives in a virtual environment of its own,
cached outside the repository under ``~/.cache/token-broker/`` (``XDG_CACHE_HOME``
respected, ``TOKEN_BROKER_SUPERSET_VENV`` overrides) and keyed by the hash of the
pinned ``tests/superset/requirements.txt``: the first run installs it (about 1.5
minutes here), later runs reuse it, and a change to the pins makes a new one.

:class:`SupersetServer` then initialises a fresh SQLite metadata database in a
temporary directory (``superset db upgrade``, an admin user, ``superset init``),
starts ``superset run`` on a free loopback port with ``EMBEDDED_SUPERSET`` enabled and
``GUEST_TOKEN_JWT_AUDIENCE`` set, and creates what an embed needs through Superset's
own REST API: a dashboard and its embedded uuid. Superset's request log is kept in a
file so tests can count the calls the broker made (logins, for one).

``python -m tests.support.superset install`` installs the environment without
starting anything (``make test-superset`` does this first).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.servers import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "tests" / "superset" / "requirements.txt"
SUPERSET_VERSION = "6.1.0"
COMPLETE_MARKER = ".token-broker-complete"
INSTALL_TIMEOUT_SECONDS = 1200
SETUP_TIMEOUT_SECONDS = 300
START_TIMEOUT_SECONDS = 180

ADMIN_USERNAME = "broker-admin"
GUEST_TOKEN_AUDIENCE = "token-broker-tests"
LOGIN_PATH = "/api/v1/security/login"


class SupersetUnavailable(RuntimeError):
    """Superset could not be installed or started (the message says why)."""


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "token-broker"


def venv_dir() -> Path:
    """The environment for the current pins: a new pin set gets a new directory."""
    override = os.environ.get("TOKEN_BROKER_SUPERSET_VENV")
    if override:
        return Path(override)
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    return cache_root() / f"superset-{SUPERSET_VERSION}-{digest.hexdigest()[:12]}"


def _uv() -> str:
    local = ROOT / ".tools" / "bin" / "uv"
    if local.exists():
        return str(local)
    found = shutil.which("uv")
    if found is None:
        raise SupersetUnavailable("uv is not installed: run `make install` first")
    return found


def _base_python() -> str:
    # The interpreter behind the broker's own .venv (the same CPython minor version
    # the pins were compiled for), not the .venv's wrapper.
    return getattr(sys, "_base_executable", sys.executable)


def ensure_installed(log: Path | None = None) -> Path:
    """Install the pinned Superset into its cached environment; return its ``bin``.

    Safe to call from several processes at once (a file lock); an install that was
    interrupted is thrown away and done again, never half-used.
    """
    target = venv_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"{target.name}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE_MARKER).exists():
            return target / "bin"
        shutil.rmtree(target, ignore_errors=True)
        output = log.open("ab") if log is not None else None
        try:
            for command in (
                [_uv(), "venv", "--quiet", "--python", _base_python(), str(target)],
                [
                    _uv(),
                    "pip",
                    "sync",
                    "--python",
                    str(target / "bin" / "python"),
                    str(REQUIREMENTS),
                ],
            ):
                done = subprocess.run(
                    command,
                    stdout=output or subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=INSTALL_TIMEOUT_SECONDS,
                    check=False,
                )
                if done.returncode != 0:
                    tail = (done.stdout or b"").decode(errors="replace")[-2000:]
                    raise SupersetUnavailable(
                        f"`{' '.join(command[:3])}` failed ({done.returncode}): {tail}"
                    )
        finally:
            if output is not None:
                output.close()
        (target / COMPLETE_MARKER).write_text(f"apache-superset {SUPERSET_VERSION}\n")
        return target / "bin"


CONFIG_TEMPLATE = """\
# Written by tests/support/superset.py for one test run.
SECRET_KEY = {secret_key!r}
SQLALCHEMY_DATABASE_URI = {database_uri!r}
FEATURE_FLAGS = {{"EMBEDDED_SUPERSET": True}}
GUEST_TOKEN_JWT_SECRET = {guest_secret!r}
GUEST_TOKEN_JWT_ALGO = "HS256"
GUEST_TOKEN_JWT_AUDIENCE = {audience!r}
GUEST_TOKEN_JWT_EXP_SECONDS = 300
GUEST_ROLE_NAME = "Public"
# CSRF protection stays on (the default): the broker must fetch the token and cookie.
WTF_CSRF_ENABLED = True
TALISMAN_ENABLED = False
# No Celery, Redis or thumbnails: an in-process cache and nothing scheduled.
CACHE_CONFIG = {{"CACHE_TYPE": "SimpleCache"}}
DATA_CACHE_CONFIG = {{"CACHE_TYPE": "SimpleCache"}}
RATELIMIT_ENABLED = False
"""


@dataclass
class SupersetServer:
    """A running Superset: its URL, admin credentials, guest-token secret and log."""

    url: str
    admin_password: str = field(repr=False)
    guest_token_secret: str = field(repr=False)
    audience: str
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    admin_username: str = ADMIN_USERNAME

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count_requests(self, method: str, path: str) -> int:
        """Requests Superset logged for ``method path`` (werkzeug's access log lines,
        which colour the request line of an error answer with ANSI escapes)."""
        pattern = re.compile(
            rf'"(?:\x1b\[[0-9;]*m)*{re.escape(method)} {re.escape(path)}(?:\?[^ ]*)? HTTP/1\.[01]'
        )
        return len(pattern.findall(self.log_text()))

    def logins(self) -> int:
        return self.count_requests("POST", LOGIN_PATH)

    def admin_session(self) -> AdminSession:
        return AdminSession.open(self.url, self.admin_username, self.admin_password)


@dataclass
class AdminSession:
    """Superset's REST API as its admin: what a person would click together in the UI."""

    client: httpx.Client
    csrf_token: str = field(repr=False)

    @classmethod
    def open(cls, url: str, username: str, password: str) -> AdminSession:
        client = httpx.Client(base_url=url, timeout=60)
        login = client.post(
            LOGIN_PATH,
            json={"username": username, "password": password, "provider": "db", "refresh": True},
        )
        login.raise_for_status()
        client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
        csrf = client.get("/api/v1/security/csrf_token/")
        csrf.raise_for_status()
        token = str(csrf.json()["result"])
        client.headers["X-CSRFToken"] = token
        client.headers["Referer"] = url
        return cls(client, token)

    def create_dashboard(self, title: str) -> int:
        created = self.client.post("/api/v1/dashboard/", json={"dashboard_title": title})
        _expect(created, 201, "create a dashboard")
        return int(created.json()["id"])

    def embed_dashboard(self, dashboard_id: int) -> str:
        """Mark the dashboard embedded; return its embedded uuid (what the SDK loads)."""
        embedded = self.client.post(
            f"/api/v1/dashboard/{dashboard_id}/embedded", json={"allowed_domains": []}
        )
        _expect(embedded, 200, "embed the dashboard")
        return str(embedded.json()["result"]["uuid"])

    def close(self) -> None:
        self.client.close()


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise SupersetUnavailable(
            f"Superset refused to {what}: HTTP {response.status_code} {response.text[:500]}"
        )


def _run(bin_dir: Path, args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as output:
        output.write(f"$ superset {' '.join(args)}\n".encode())
        output.flush()
        done = subprocess.run(
            [str(bin_dir / "superset"), *args],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=SETUP_TIMEOUT_SECONDS,
            check=False,
        )
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SupersetUnavailable(f"`superset {args[0]}` failed ({done.returncode}):\n{tail}")


@contextlib.contextmanager
def superset_server(work_dir: Path | None = None) -> Iterator[SupersetServer]:
    """Install (cached), initialise and start Superset; stop it on exit."""
    owned = work_dir is None
    base = Path(tempfile.mkdtemp(prefix="tb-superset-")) if work_dir is None else work_dir
    base.mkdir(parents=True, exist_ok=True)
    setup_log = base / "superset-setup.log"
    bin_dir = ensure_installed(setup_log)
    admin_password = secrets.token_urlsafe(18)
    guest_secret = secrets.token_urlsafe(32)
    config_path = base / "superset_config.py"
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            secret_key=secrets.token_urlsafe(42),
            database_uri=f"sqlite:///{base / 'superset.db'}",
            guest_secret=guest_secret,
            audience=GUEST_TOKEN_AUDIENCE,
        )
    )
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": os.environ.get("HOME", str(base)),
        "LANG": "C.UTF-8",
        "SUPERSET_CONFIG_PATH": str(config_path),
        "SUPERSET_HOME": str(base / "home"),
        "FLASK_APP": "superset.app:create_app()",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    _run(bin_dir, ["db", "upgrade"], env, setup_log)
    _run(
        bin_dir,
        [
            "fab",
            "create-admin",
            "--username",
            ADMIN_USERNAME,
            "--firstname",
            "Broker",
            "--lastname",
            "Admin",
            "--email",
            "broker-admin@example.test",
            "--password",
            admin_password,
        ],
        env,
        setup_log,
    )
    _run(bin_dir, ["init"], env, setup_log)

    port = free_port()
    log_path = base / "superset.log"
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            [
                str(bin_dir / "superset"),
                "run",
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--with-threads",
                "--no-reload",
                "--no-debugger",
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = SupersetServer(
        url=f"http://{LOOPBACK}:{port}",
        admin_password=admin_password,
        guest_token_secret=guest_secret,
        audience=GUEST_TOKEN_AUDIENCE,
        log_path=log_path,
        process=process,
    )
    try:
        _wait_healthy(server)
        yield server
    finally:
        _stop(process)
        if owned:
            shutil.rmtree(base, ignore_errors=True)


def _wait_healthy(server: SupersetServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SupersetUnavailable(
                f"superset exited with {server.process.returncode}:\n{server.log_text()[-3000:]}"
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SupersetUnavailable(
        f"superset not healthy in {START_TIMEOUT_SECONDS} s:\n{server.log_text()[-3000:]}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def main(argv: list[str]) -> int:
    if argv[1:] != ["install"]:
        print("usage: python -m tests.support.superset install", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        bin_dir = ensure_installed()
    except SupersetUnavailable as exc:
        print(f"superset: {exc}", file=sys.stderr)
        return 1
    print(f"superset {SUPERSET_VERSION}: {bin_dir.parent} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
