"""What the local backends need from /proc and signals: process state, group/session members.

Zombies count as dead everywhere here: PID 1 in a container may never reap them.
"""

from __future__ import annotations

import os
from pathlib import Path


def read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # includes a process vanishing while /proc is read
        return None


def proc_state(pid: int) -> tuple[str, int, int] | None:
    """(state letter, process group, session) from /proc, or None when there is no such process."""
    stat = read_text(Path(f"/proc/{pid}/stat"))
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2]), int(fields[3])


def alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def members(leader: int) -> list[int]:
    """Live processes in the leader's process group or session."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            state = proc_state(int(entry.name))
            if state and leader in (state[1], state[2]) and state[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def with_title_and_env(title_prefix: bytes, env: set[bytes]) -> list[int]:
    """Live processes whose command line starts with title_prefix and whose environment holds
    every ``NAME=value`` entry of env."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if not Path(f"/proc/{entry.name}/cmdline").read_bytes().startswith(title_prefix):
                continue
            present = set(Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0"))
        except OSError:  # gone meanwhile
            continue
        if env <= present and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


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
