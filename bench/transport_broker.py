"""``token-broker serve`` with the outbound client of ``BENCH_OUTBOUND_TRANSPORT`` (S9).

Everything else is the shipped broker under the shipped server options (app.cli); the
only difference is the client injected into ``create_app(http_client=...)``.
"""

from __future__ import annotations

import os
import signal

import uvicorn

from app.cli import uvicorn_options
from app.main import create_app
from app.observability.logging import configure_logging
from app.settings import Settings
from bench.transports import outbound_client


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    client = outbound_client(os.environ["BENCH_OUTBOUND_TRANSPORT"])
    uvicorn.run(create_app(settings, http_client=client), **uvicorn_options(settings))


if __name__ == "__main__":
    main()
