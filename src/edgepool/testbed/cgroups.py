"""One cgroup v1 pair (cpu + memory) per emulated device: a CPU quota and a memory limit.

The cgroups are created under the cgroup this process itself belongs to (read from /proc/self/cgroup),
so the testbed stays inside whatever accounting the host already applies to its caller.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from edgepool.testbed.system import CGROUP_ROOT, CONTROLLERS

# A short CFS period makes a quota a fine-grained duty cycle: with the kernel's default 100 ms, a quarter-core
# device computes at full speed for 25 ms and then sits throttled for 75 ms, stalling every pipeline hand-off
# that lands in the gap. 10 ms keeps those stalls below the micro-batch times; the period only grows where
# the kernel's 1 ms floor on the quota needs it (devices below a tenth of a core).
SHORT_CFS_PERIOD_US = 10_000
MAX_CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel refuses quotas below 1 ms per period
# cgroup v1 cpu.shares of a device cgroup (the default is 1024, a plain process's weight): when other jobs
# load the host, an emulated device still gets its whole quota, the quotas adding up to at most the host's
# cores leave the rest to them.
DEVICE_CPU_SHARES = 65_536


def own_cgroup_dir(controller: str) -> Path:
    """The directory of this process's cgroup in a v1 hierarchy (e.g. /sys/fs/cgroup/memory/a/b)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return CGROUP_ROOT / controller / path.lstrip("/")
    return CGROUP_ROOT / controller


@dataclass
class DeviceCgroup:
    """The cpu and memory cgroups of one device process; `cpu_cores` and `memory_bytes` are its limits."""

    name: str
    cpu_cores: float
    memory_bytes: int | None

    def path(self, controller: str) -> Path:
        return own_cgroup_dir(controller) / self.name

    @property
    def procs_files(self) -> list[Path]:
        """Files a process writes its pid into to join this cgroup (both controllers)."""
        return [self.path(c) / "cgroup.procs" for c in CONTROLLERS]

    @property
    def period_us(self) -> int:
        """The CFS period: short, unless the quota would fall under the kernel's 1 ms floor."""
        needed = MIN_QUOTA_US / self.cpu_cores if self.cpu_cores > 0 else MAX_CFS_PERIOD_US
        return int(min(MAX_CFS_PERIOD_US, max(SHORT_CFS_PERIOD_US, needed)))

    @property
    def quota_us(self) -> int:
        """CPU time per CFS period the device's processes may use."""
        return max(MIN_QUOTA_US, int(round(self.cpu_cores * self.period_us)))

    @property
    def quota_file(self) -> Path:
        return self.path("cpu") / "cpu.cfs_quota_us"

    def create(self, cpu_quota: bool = True) -> None:
        """Make both cgroups; without `cpu_quota` the CPU stays unlimited until the quota file is written."""
        for controller in CONTROLLERS:
            self.path(controller).mkdir(exist_ok=True)
        (self.path("cpu") / "cpu.cfs_period_us").write_text(str(self.period_us))
        (self.path("cpu") / "cpu.shares").write_text(str(DEVICE_CPU_SHARES))
        self.quota_file.write_text(str(self.quota_us if cpu_quota else -1))
        if self.memory_bytes is not None:
            (self.path("memory") / "memory.limit_in_bytes").write_text(str(int(self.memory_bytes)))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            found |= _read_pids(procs)
        return found

    def oom_kills(self) -> int:
        """How many processes the kernel killed in this cgroup for exceeding the memory limit."""
        try:
            for line in (self.path("memory") / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def kill_all(self, timeout: float = 5.0) -> None:
        kill_cgroup_processes([self.path(c) for c in CONTROLLERS], timeout)

    def remove(self, timeout: float = 5.0) -> list[str]:
        """Kill what is left inside, then remove both directories; returns error messages, if any."""
        return remove_cgroup_dirs([self.path(c) for c in CONTROLLERS], timeout)


def _read_pids(procs: Path) -> set[int]:
    try:
        return {int(p) for p in procs.read_text().split()}
    except OSError:
        return set()


def kill_cgroup_processes(dirs: list[Path], timeout: float = 5.0) -> None:
    """SIGKILL every process in the cgroups until they are empty (new children included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = set().union(*(_read_pids(d / "cgroup.procs") for d in dirs))
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def remove_cgroup_dirs(dirs: list[Path], timeout: float = 5.0) -> list[str]:
    kill_cgroup_processes([d for d in dirs if d.exists()], timeout)
    errors: list[str] = []
    for d in dirs:
        deadline = time.monotonic() + timeout
        while d.exists():
            try:
                d.rmdir()
            except FileNotFoundError:
                break
            except OSError as exc:  # EBUSY while killed tasks are still being reaped
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    errors.append(f"could not remove cgroup {d}: {exc}")
                    break
                time.sleep(0.05)
    return errors


def list_cgroups(prefix: str) -> list[Path]:
    """Cgroup directories (both controllers) next to ours whose names start with `prefix`."""
    found: list[Path] = []
    for controller in CONTROLLERS:
        parent = own_cgroup_dir(controller)
        if parent.is_dir():
            found += sorted(p for p in parent.iterdir() if p.is_dir() and p.name.startswith(prefix))
    return found
