"""Measures what the inference collectives cost where they will run: a short probe on the same launcher (on the
testbed: the same CPU quotas and shaped links) before planning, so the simulator's communication terms are
calibrated constants of this setup, not guesses.

`python -m edgepool.inference.commprobe JOB.json` is the worker side (one process per device, like
`inference.worker`); `probe_comm(launcher, devices, ...)` launches it and fits `CommCosts`:

- all-reduce (gloo's ring, what Megatron-style tensor parallelism uses), for groups of the first k devices:
  the wall time of a tiny one (one token's hidden state: pure per-call latency: scheduling, wake-ups, the
  CPU quota's gaps) and the CPU seconds per byte of a large one;
- the point-to-point exchange the tensor+sequence mode uses (every member `isend`s to and `irecv`s from every
  other): CPU seconds per message and per byte, and the wall time of a tiny exchange.

CPU seconds are those of this host's cores (process time, all threads, kernel included); the simulator divides
them by a device's fraction of such a core. Wall latencies are used as they were measured.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgepool.atomic import write_text_atomic
from edgepool.runtime.netif import choose_gloo_interface


@dataclass(frozen=True)
class CommCosts:
    """Costs of the inference collectives. The defaults are what `probe_comm` measured once on the 2-core
    development VM's testbed (4 devices with 0.65/0.55/0.45/0.35 of a core, 1 Gbps pairs, 2026-11-23), used
    when no probe ran; a tiny gloo all-reduce there takes milliseconds, not microseconds.

    - `allreduce_call_s[n]`: wall seconds of one tiny all-reduce among n devices (its fixed part);
    - `allreduce_cpu_per_byte_s`: CPU seconds per byte of the reduced tensor, per member;
    - `p2p_message_cpu_s` / `p2p_byte_cpu_s`: CPU seconds per message and per byte sent or received;
    - `p2p_phase_s`: wall seconds of one tiny all-to-all exchange (fixed part of each tiled phase);
    - `hop_s`: wall seconds of one tiny point-to-point message (pipeline hand-offs);
    - `p2p_wait_cpu_fraction`: CPU seconds a process burns per wall second while point-to-point messages are
      outstanding (gloo's threads and the network stack; CPU over wall of the tiny exchange). The tiled
      tensor+sequence mode keeps receives posted through a whole layer, so this is charged on the layer's time;
    - `core_flops`: FLOP/s of the core whose CPU seconds these are (None: CPU seconds are device seconds).
    """

    allreduce_call_s: dict[int, float] = field(default_factory=lambda: {2: 3.4e-3, 3: 8.1e-3, 4: 10.5e-3})
    allreduce_cpu_per_byte_s: float = 1.4e-9
    p2p_message_cpu_s: float = 1.1e-4
    p2p_byte_cpu_s: float = 3.6e-10
    p2p_phase_s: float = 3.6e-3
    hop_s: float = 4.4e-4
    p2p_wait_cpu_fraction: float = 0.24
    core_flops: float | None = None
    source: str = "default (not measured in this run)"

    def allreduce_fixed_s(self, n: int) -> float:
        """Tiny all-reduce wall time among n; outside the measured sizes, linear in the 2(n-1) ring steps."""
        if n <= 1:
            return 0.0
        if n in self.allreduce_call_s:
            return self.allreduce_call_s[n]
        k, t = max(self.allreduce_call_s.items())
        return t / (2 * (k - 1)) * 2 * (n - 1)

    def cpu_scale(self, device_flops: float) -> float:
        """Device seconds per CPU second of the probed core (1 when no core rate is known)."""
        if not self.core_flops or device_flops <= 0:
            return 1.0
        return self.core_flops / device_flops

    def to_dict(self) -> dict:
        d = asdict(self)
        d["allreduce_call_s"] = {str(k): v for k, v in self.allreduce_call_s.items()}
        return d


# ----------------------------------------------------------------------------- worker side
def _timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and median CPU seconds of `fn()` (every rank calls it in lockstep)."""
    import torch.distributed as dist

    walls, cpus = [], []
    for _ in range(repeats):
        dist.barrier()
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return statistics.median(walls), statistics.median(cpus)


def _exchange(tensors_out, tensors_in, peers, rank):
    import torch.distributed as dist

    works = []
    for p in peers:
        if p != rank:
            works.append(dist.irecv(tensors_in[p], p, tag=7))
    for p in peers:
        if p != rank:
            works.append(dist.isend(tensors_out, p, tag=7))
    for w in works:
        w.wait()


def worker_main(job_path: str) -> None:
    import torch
    import torch.distributed as dist

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(1)
    choose_gloo_interface()  # on a real host: the interface that routes to MASTER_ADDR, not loopback
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=job.get("timeout_s", 300)))
    rank, world = dist.get_rank(), dist.get_world_size()
    hidden, rows, repeats = job["hidden"], job["rows"], job["repeats"]
    out: dict = {"rank": rank, "device": os.environ.get("EDGEPOOL_DEVICE"), "allreduce": {}, "p2p": {}}
    groups = {k: (dist.group.WORLD if k == world else dist.new_group(list(range(k))))
              for k in range(2, world + 1)}
    for _ in range(2):  # warm the connections up
        dist.all_reduce(torch.zeros(hidden))
    for k, group in groups.items():
        member = rank < k
        for name, numel in (("tiny", hidden), ("big", rows * hidden)):
            t = torch.ones(numel)
            reps = repeats if name == "tiny" else max(2, repeats // 6)
            fn = (lambda: dist.all_reduce(t, group=group)) if member else (lambda: None)
            wall, cpu = _timed(fn, reps)
            if member:
                out["allreduce"][f"{k}:{name}"] = {"wall_s": wall, "cpu_s": cpu, "bytes": numel * 4}
    ping = torch.zeros(hidden)  # one hop: rank 0 -> 1 -> 0, halved

    def pingpong():
        if rank == 0:
            dist.send(ping, 1, tag=5)
            dist.recv(ping, 1, tag=6)
        elif rank == 1:
            dist.recv(ping, 0, tag=5)
            dist.send(ping, 0, tag=6)

    wall, _ = _timed(pingpong, repeats)
    out["hop_s"] = wall / 2
    peers = list(range(world))
    for name, numel in (("tiny", hidden), ("big", max(1, rows // world) * hidden)):
        send = torch.ones(numel)
        recv = {p: torch.empty(numel) for p in peers}
        reps = repeats if name == "tiny" else max(2, repeats // 6)
        wall, cpu = _timed(lambda: _exchange(send, recv, peers, rank), reps)
        out["p2p"][name] = {"wall_s": wall, "cpu_s": cpu, "messages": 2 * (world - 1),
                            "bytes": 2 * (world - 1) * numel * 4}
    write_text_atomic(Path(job["out_dir"]) / f"probe{rank}.json", json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- host side
def fit_comm_costs(ranks: list[dict], core_flops: float | None, source: str) -> CommCosts:
    """`CommCosts` from the probe's per-rank results: wall times of the slowest member (collectives end
    together), CPU costs of the median member."""
    sizes = sorted({int(k.split(":")[0]) for r in ranks for k in r["allreduce"]})
    call, per_byte = {}, []
    for n in sizes:
        tiny = [r["allreduce"][f"{n}:tiny"] for r in ranks if f"{n}:tiny" in r["allreduce"]]
        big = [r["allreduce"][f"{n}:big"] for r in ranks if f"{n}:big" in r["allreduce"]]
        call[n] = max(x["wall_s"] for x in tiny)
        extra_cpu = statistics.median(b["cpu_s"] - t["cpu_s"] for b, t in zip(big, tiny))
        per_byte.append(max(0.0, extra_cpu) / max(1, big[0]["bytes"] - tiny[0]["bytes"]))
    tiny = [r["p2p"]["tiny"] for r in ranks]
    big = [r["p2p"]["big"] for r in ranks]
    byte_cpu = max(0.0, statistics.median(b["cpu_s"] - t["cpu_s"] for b, t in zip(big, tiny))) / max(
        1, big[0]["bytes"] - tiny[0]["bytes"])
    msg_cpu = max(0.0, statistics.median(t["cpu_s"] for t in tiny) - byte_cpu * tiny[0]["bytes"]) / tiny[0]["messages"]
    return CommCosts(allreduce_call_s=call, allreduce_cpu_per_byte_s=statistics.median(per_byte),
                     p2p_message_cpu_s=msg_cpu, p2p_byte_cpu_s=byte_cpu,
                     p2p_phase_s=max(t["wall_s"] for t in tiny), hop_s=ranks[0]["hop_s"],
                     p2p_wait_cpu_fraction=statistics.median(t["cpu_s"] / t["wall_s"] for t in tiny if t["wall_s"] > 0),
                     core_flops=core_flops, source=source)


def probe_comm(launcher, devices: list[str], hidden: int, rows: int, core_flops: float | None = None,
               repeats: int = 24, timeout_s: float = 300.0, source: str = "") -> tuple[CommCosts, list[dict]]:
    """Launch the probe on `devices` (rank order) and fit `CommCosts`; also returns the raw per-rank figures."""
    tmp = Path(tempfile.mkdtemp(prefix="edgepool-commprobe-"))
    job = {"out_dir": str(tmp), "hidden": hidden, "rows": rows, "repeats": repeats, "timeout_s": int(timeout_s)}
    (tmp / "job.json").write_text(json.dumps(job))
    launcher.launch({d: [sys.executable, "-m", "edgepool.inference.commprobe", str(tmp / "job.json")]
                     for d in devices}, log_dir=tmp / "logs")
    launcher.wait(timeout=timeout_s)
    ranks = [json.loads((tmp / f"probe{i}.json").read_text()) for i in range(len(devices))]
    return fit_comm_costs(ranks, core_flops, source or "measured by inference.commprobe"), ranks


if __name__ == "__main__":
    worker_main(sys.argv[1])
