"""How worker processes start: the local and testbed launchers (from `edgepool.testbed`), or `torchrun` per host.

The worker is `python -m edgepool.runtime.worker SPEC.json` in every case (started through the one worker
harness, `edgepool.runtime.harness`, under the local and testbed launchers); it reads the `torchrun`
environment (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK), which the local and testbed
launchers set the same way `torchrun` does.
"""
from __future__ import annotations

import contextlib
import shlex
from typing import Iterator

from edgepool.cluster import Cluster
from edgepool.errors import SpecError
from edgepool.plan import Plan

LAUNCHERS = ("local", "testbed")
DEFAULT_MASTER_PORT = 29500


def make_run_launcher(kind: str, cluster: Cluster | None, **testbed_options):
    """A launcher for runs on `cluster`: the testbed emulates all its devices (so CPU quotas are relative to
    the cluster's fastest device whatever subset a plan uses); falls back to local without root. `kind` may
    also be a launcher already made (the pool's, `edgepool.pool.launcher.PoolLauncher`): it is returned as it
    is, and the caller's `with` starts and tears it down as it would one made here."""
    from edgepool.testbed.launcher import make_launcher

    if not isinstance(kind, str):
        return kind
    if kind not in LAUNCHERS:
        raise SpecError(field="launcher", value=kind, accepted=", ".join(LAUNCHERS),
                        hint="for real hosts, start one worker per host with torchrun (`torchrun_commands`)")
    if kind == "testbed":  # imports and model building at full speed; the worker applies its quota after
        testbed_options = {"cpu_quota_at_start": False, **testbed_options}
    return make_launcher(kind, cluster, devices=None, fallback=True, **testbed_options)


@contextlib.contextmanager
def started_launcher(launcher, cluster: Cluster | None, **testbed_options) -> Iterator:
    """A started launcher for the length of the block: `launcher` itself when it is one (the caller keeps it
    up, e.g. one testbed for several runs), else one made by name (`make_run_launcher`) and torn down after."""
    if not isinstance(launcher, str):
        yield launcher
        return
    with make_run_launcher(launcher, cluster, **testbed_options) as owned:
        yield owned


def torchrun_commands(plan: Plan, cluster: Cluster, spec_path: str = "plan-run.json",
                      master_port: int = DEFAULT_MASTER_PORT) -> dict[str, str]:
    """The shell command to start on each host, in rank order (one process per device).

    Every host needs edgepool installed and the same spec file (the command line writes it next to the plan);
    the first device of the plan hosts the rendezvous.
    """
    missing = [d for d in plan.devices if d not in cluster.addresses]
    if missing:
        raise SpecError(field="devices.address", value=missing, source=cluster.source,
                        accepted="an address (host name or IP) for every device the plan uses",
                        hint="add `address: 192.168.1.10` to each device of the cluster spec")
    master = cluster.addresses[plan.devices[0]]
    commands = {}
    for rank, device in enumerate(plan.devices):
        argv = ["torchrun", f"--nnodes={len(plan.devices)}", "--nproc-per-node=1", f"--node-rank={rank}",
                f"--master-addr={master}", f"--master-port={master_port}",
                "-m", "edgepool.runtime.worker", spec_path]
        commands[device] = f"EDGEPOOL_DEVICE={shlex.quote(device)} OMP_NUM_THREADS=1 " + shlex.join(argv)
    return commands
