"""The demo as `token-broker demo` runs it (sandbox + broker + demo page), in threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from app.demo import demo_config_path, demo_site
from app.main import create_app
from app.sandbox import create_sandbox_app
from app.settings import Settings
from tests.support.servers import serve_in_thread


@dataclass(frozen=True)
class Demo:
    broker: str
    sandbox: str

    @property
    def page(self) -> str:
        return f"{self.broker}/demo/"


@contextlib.contextmanager
def running_demo() -> Iterator[Demo]:
    with serve_in_thread(create_sandbox_app()) as sandbox_url:
        sandbox_port = int(sandbox_url.rsplit(":", 1)[1])
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SANDBOX_URL", sandbox_url)
            config = demo_config_path()
            app = demo_site(create_app(Settings(config=config)), config, sandbox_port)
            with serve_in_thread(app) as broker_url:
                yield Demo(broker=broker_url, sandbox=sandbox_url)
