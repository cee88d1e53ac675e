"""The installed package's version (``token-broker --version``, ``token_broker_build_info``)."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version


@functools.cache
def package_version() -> str:
    try:
        return version("token-broker")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"
