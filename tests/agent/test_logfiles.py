"""Copy-truncate rotation keeps the writer's O_APPEND descriptor working."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.agent.logfiles import remove_logs, rotate_if_needed, tail_lines


def test_rotation_with_a_live_append_writer(tmp_path: Path) -> None:
    log = tmp_path / "i.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for gen in range(4):
            os.write(fd, f"gen{gen} ".encode() * 100 + b"\n")
            assert rotate_if_needed(log, 200, keep=2)
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"after\n"  # the writer continued at the new end
    assert (tmp_path / "i.log.1").read_text().startswith("gen3")
    assert (tmp_path / "i.log.2").read_text().startswith("gen2")
    assert not (tmp_path / "i.log.3").exists()
    assert not rotate_if_needed(log, 200, keep=2)
    remove_logs(log)
    assert list(tmp_path.iterdir()) == []


def test_tail_lines(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    assert tail_lines(log) == []
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail_lines(log, 3) == ["line 97", "line 98", "line 99"]
