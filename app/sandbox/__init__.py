"""Local emulators of the vendor token APIs (upstreams.md "The sandbox")."""

from app.sandbox.app import SandboxApp, create_sandbox_app, run_sandbox
from app.sandbox.faults import FaultRule
from app.sandbox.settings import DEFAULT_HOST, DEFAULT_PORT, SandboxSettings

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FaultRule",
    "SandboxApp",
    "SandboxSettings",
    "create_sandbox_app",
    "run_sandbox",
]
