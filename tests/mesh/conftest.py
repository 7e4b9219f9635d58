"""Fixtures for end-to-end tests on a real local mesh (see :mod:`bench.localmesh`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.localmesh import LocalMesh, start_mesh
from tests.helpers import wait_for


@pytest.fixture
def local_mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    mesh = start_mesh(tmp_path)
    try:
        yield mesh
    finally:
        mesh.stop()
        assert_nothing_left(mesh)


def assert_nothing_left(mesh: LocalMesh) -> None:
    """Every process of the mesh is gone (instances included) and the edge port is free."""
    wait_for(lambda: not mesh.processes(), timeout=20, what="no process of the mesh left")
    host, port = mesh.edge.rsplit(":", 1)
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))  # raises if anything still listens there
