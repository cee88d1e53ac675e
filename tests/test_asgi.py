from __future__ import annotations

import pytest

from app.asgi import route_path


@pytest.mark.parametrize(
    ("root_path", "path", "expected"),
    [
        ("", "/v1/tokens", "/v1/tokens"),
        ("/broker", "/broker/v1/tokens", "/v1/tokens"),
        ("/broker", "/broker", "/"),
        ("/broker", "/other/v1/tokens", "/other/v1/tokens"),
    ],
)
def test_route_path_is_the_path_below_the_mount(root_path: str, path: str, expected: str) -> None:
    assert route_path({"path": path, "root_path": root_path}) == expected
