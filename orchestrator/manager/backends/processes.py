"""What the local backends need to know of processes and to do to them, through psutil.

Zombies count as dead everywhere here: PID 1 in a container may never reap them.
"""

from __future__ import annotations

import os
from typing import Iterator

import psutil

_DEAD = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in _DEAD
    except psutil.Error:  # no such process, or it vanished while we looked
        return False


def _live() -> Iterator[psutil.Process]:
    for proc in psutil.process_iter():
        try:
            if proc.status() not in _DEAD:
                yield proc
        except psutil.Error:
            continue


def members(leader: int) -> list[int]:
    """Live processes in the leader's process group or session."""
    found = []
    for proc in _live():
        try:
            if leader in (os.getpgid(proc.pid), os.getsid(proc.pid)):
                found.append(proc.pid)
        except OSError:  # gone meanwhile
            continue
    return found


def with_title_and_env(title_prefix: str, env: dict[str, str]) -> list[int]:
    """Live processes whose command line starts with title_prefix and whose environment holds
    every NAME: value of env."""
    found = []
    for proc in _live():
        try:
            if not " ".join(proc.cmdline()).startswith(title_prefix):
                continue
            present = proc.environ()
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
        if all(present.get(name) == value for name, value in env.items()):
            found.append(proc.pid)
    return found


def command_line(pid: int) -> str:
    """The process's command line joined by spaces, or "" when there is no such process."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
