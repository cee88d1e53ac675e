"""ASGI helpers shared by the broker's middleware and the sandbox."""

from __future__ import annotations

from starlette.types import Scope


def route_path(scope: Scope) -> str:
    """The path below any mount point: ``/v1/tokens`` for ``/broker/v1/tokens`` served
    with ``root_path="/broker"`` (uvicorn ``--root-path`` keeps the prefix in ``path``).
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path
