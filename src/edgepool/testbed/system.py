"""Host checks and command running for the testbed: root, iproute2 tools, cgroup v1 controllers."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "memory")


class TestbedUnavailable(RuntimeError):
    """The host cannot run the emulated testbed (not root, a missing tool or cgroup controller)."""

    __test__ = False  # not a pytest test class despite the name


class CommandFailed(RuntimeError):
    """A setup command (`ip`, `tc`) failed; the message carries the command and its stderr."""


def run(argv: Sequence[str], check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run one host command (no shell); raise CommandFailed with its stderr when `check` and it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandFailed(f"`{' '.join(argv)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Why the testbed cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return ("the emulated testbed needs root (network namespaces, tc and cgroups); "
                f"this process runs as uid {os.geteuid()}")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed; the testbed uses it for namespaces and link shaping"
    for controller in CONTROLLERS:
        if not (CGROUP_ROOT / controller / "cgroup.procs").exists():
            return (f"cgroup v1 controller '{controller}' is not mounted at {CGROUP_ROOT / controller}; "
                    "the testbed limits CPU and memory through cgroup v1")
    return None


def require_testbed() -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise TestbedUnavailable(reason)


def process_start_time(pid: int) -> int | None:
    """Kernel start time of a process (clock ticks since boot), to tell a live owner from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])
