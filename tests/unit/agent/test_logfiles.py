from __future__ import annotations

import os
from pathlib import Path

import pytest

from sage.unified.agent.logfiles import engine_log_path, open_engine_log, rotate_if_needed, tail


def test_engine_log_path_rejects_escapes(tmp_path: Path) -> None:
    assert engine_log_path(tmp_path, "e-1.a_b") == tmp_path / "e-1.a_b.log"
    for bad in ("../x", "a/b", "", ".hidden", "a..b"):
        with pytest.raises(ValueError, match="cannot name a log file"):
            engine_log_path(tmp_path, bad)


def test_open_appends_and_creates_folder(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "e.log"
    for text in (b"one\n", b"two\n"):
        fd = open_engine_log(path)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
    assert path.read_bytes() == b"one\ntwo\n"


def test_copytruncate_rotation_keeps_writer_appending(tmp_path: Path) -> None:
    path = tmp_path / "e.log"
    fd = open_engine_log(path)  # stands in for the child's stdout
    try:
        os.write(fd, b"a" * 50 + b"\n")
        assert not rotate_if_needed(path, max_bytes=100, backups=2)
        os.write(fd, b"b" * 60 + b"\n")
        assert rotate_if_needed(path, max_bytes=100, backups=2)
        assert path.stat().st_size == 0
        assert (tmp_path / "e.log.1").read_bytes().startswith(b"a" * 50)
        # The writer's next bytes land at the start, not after a hole.
        os.write(fd, b"c\n")
        assert path.read_bytes() == b"c\n"
        os.write(fd, b"d" * 100 + b"\n")
        assert rotate_if_needed(path, max_bytes=100, backups=2)
        os.write(fd, b"e" * 100 + b"\n")
        assert rotate_if_needed(path, max_bytes=100, backups=2)
    finally:
        os.close(fd)
    assert (tmp_path / "e.log.1").read_bytes() == b"e" * 100 + b"\n"
    assert (tmp_path / "e.log.2").read_bytes() == b"c\n" + b"d" * 100 + b"\n"
    assert not (tmp_path / "e.log.3").exists()


def test_rotation_without_backups_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "e.log"
    assert not rotate_if_needed(path, max_bytes=10, backups=3)
    path.write_bytes(b"x" * 20)
    assert rotate_if_needed(path, max_bytes=10, backups=0)
    assert path.read_bytes() == b""
    assert list(tmp_path.iterdir()) == [path]


def test_tail_reads_last_lines_across_blocks(tmp_path: Path) -> None:
    path = tmp_path / "e.log"
    path.write_text("".join(f"line {i} " + "x" * 100 + "\n" for i in range(1000)))
    last = tail(path, 3)
    assert [line.split()[1] for line in last] == ["997", "998", "999"]
    assert len(tail(path, 500)) == 500
    assert tail(path, 0) == []
    assert tail(tmp_path / "missing.log", 5) == []


def test_tail_without_trailing_newline_and_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "e.log"
    path.write_bytes(b"a\nb\n\xffc")
    assert tail(path, 2) == ["b", "\ufffdc"]


def test_tail_includes_newest_backup_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "e.log"
    (tmp_path / "e.log.1").write_text("old1\nold2\nold3\n")
    (tmp_path / "e.log.2").write_text("older\n")
    path.write_text("new1\n")
    assert tail(path, 3) == ["old2", "old3", "new1"]
    assert tail(path, 10) == ["old1", "old2", "old3", "new1"]
