"""Where a backing server comes from: the configured URL, else the local port, else an embedded one."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from app.cli.embedded import POSTGRES, REDIS, Backing, backing_server


def kind(port: int, stops: list[Path]) -> Backing:
    def start(data_dir: Path) -> tuple[str, Callable[[], None]]:
        return f"fake://{data_dir.name}", lambda: stops.append(data_dir)

    return Backing("FAKE_URL", f"fake://127.0.0.1:{port}", port, "embedded fake", start)


def test_the_configured_url_wins_then_the_local_port_then_an_embedded_server(tmp_path: Path) -> None:
    stops: list[Path] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fake = kind(port, stops)
        with backing_server(fake, tmp_path / "a", "fake://configured", probe_local=True) as found:
            assert found == ("fake://configured", "FAKE_URL")
        with backing_server(fake, tmp_path / "b", None, probe_local=True) as found:
            assert found == (f"fake://127.0.0.1:{port}", f"local :{port}")
        # Not probing (as `pagelens run` does), or nothing listening: an embedded one, stopped on exit.
        with backing_server(fake, tmp_path / "c", None, probe_local=False) as found:
            assert found == ("fake://c", "embedded fake")
            assert stops == []
    assert stops == [tmp_path / "c"]
    with backing_server(fake, tmp_path / "d", None, probe_local=True) as found:  # the port is closed now
        assert found == ("fake://d", "embedded fake")
    assert stops == [tmp_path / "c", tmp_path / "d"]


def test_the_two_kinds_name_their_variables_and_ports() -> None:
    assert (POSTGRES.variable, POSTGRES.local_port, POSTGRES.local_url.split("@")[1]) == (
        "DATABASE_URL",
        5432,
        "127.0.0.1:5432/postgres",
    )
    assert (REDIS.variable, REDIS.local_port, REDIS.local_url) == ("REDIS_URL", 6379, "redis://127.0.0.1:6379/0")
