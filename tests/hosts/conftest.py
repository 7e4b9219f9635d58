"""One six-host mesh per module (bench/netmesh.py): three agents, an edge, two reconcilers,
each host a network namespace running the commands of docs/deploy.md."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.netmesh import NetMesh, skip_reason


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetMesh]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    m = NetMesh(workdir=tmp_path_factory.mktemp("hosts"), poll_interval=1.0, warmup_s=0.5)
    try:
        m.bring_up()  # reconcilers, agents, then the app, then the edge
        yield m
    finally:
        m.close()
    left = m.leftovers()
    assert not left, f"left behind: {left}"
