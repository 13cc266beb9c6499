"""Ports on 127.0.0.1: a free one to bind, and whether one answers (a leaf: the local Ray head of
the manager and the simulated spot cluster both start Ray on this machine)."""

from __future__ import annotations

import socket


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
