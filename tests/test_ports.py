"""Ports picked for listeners that start later stay clear of outgoing connections."""

from __future__ import annotations

import socket

from reconciler.ports import ephemeral_range, free_port


def test_a_picked_port_is_below_the_ephemeral_range_and_binds() -> None:
    low, high = ephemeral_range()
    assert 1024 <= low <= high
    for _ in range(20):
        port = free_port("127.0.0.1")
        assert port < low  # never where the kernel puts outgoing connections' local ports
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_picked() -> None:
    taken = []
    try:
        for _ in range(50):
            port = free_port("127.0.0.1")
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            s.listen()
            taken.append(s)
        assert len({s.getsockname()[1] for s in taken}) == len(taken)
    finally:
        for s in taken:
            s.close()
