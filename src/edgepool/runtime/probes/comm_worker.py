"""The device side of the communication probes: `python -m edgepool.runtime.probes.comm_worker JOB.json`, one
process per device, started by `probes.comm` through the worker harness. The job's `probe` says which:
`message` (two ranks bounce a tensor) or `collectives` (all-reduce groups, a hop, the all-to-all exchange).
"""
from __future__ import annotations

import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from edgepool.runtime.harness import read_job, write_result
from edgepool.runtime.netif import choose_gloo_interface

WARMUP_ROUNDS = 50  # message probe
BLOCKS = 5  # the median block: wake-ups of a shared host make single blocks vary 2-4x


def main(job_path: str) -> None:
    job = read_job(job_path)
    torch.set_num_threads(1)
    choose_gloo_interface()  # on a real host: the interface that routes to MASTER_ADDR, not loopback
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=job.get("timeout_s", 300)))
    rank = dist.get_rank()
    out = PROBES[job["probe"]](job, rank)
    write_result(Path(job_path).parent, rank, out)
    dist.barrier()
    dist.destroy_process_group()


# ----------------------------------------------------------------------------- one message
def bounce(job: dict, rank: int) -> dict:
    """CPU seconds per message (send or receive) on this side, the median of `BLOCKS` blocks."""
    x = torch.zeros(job["nbytes"] // 4)
    peer, rounds = 1 - rank, job["rounds"]

    def one_round():
        if rank == 0:
            dist.send(x, peer)
            dist.recv(x, peer)
        else:
            dist.recv(x, peer)
            dist.send(x, peer)

    for _ in range(WARMUP_ROUNDS):
        one_round()
    per_message = []
    for _ in range(BLOCKS):
        start = time.process_time()
        for _ in range(rounds):
            one_round()
        per_message.append((time.process_time() - start) / (2 * rounds))
    return {"rank": rank, "device": os.environ.get("EDGEPOOL_DEVICE"), "message_cpu_s": statistics.median(per_message)}


# ----------------------------------------------------------------------------- the inference collectives
def _timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and median CPU seconds of `fn()` (every rank calls it in lockstep)."""
    walls, cpus = [], []
    for _ in range(repeats):
        dist.barrier()
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return statistics.median(walls), statistics.median(cpus)


def _exchange(tensors_out, tensors_in, peers, rank):
    works = []
    for p in peers:
        if p != rank:
            works.append(dist.irecv(tensors_in[p], p, tag=7))
    for p in peers:
        if p != rank:
            works.append(dist.isend(tensors_out, p, tag=7))
    for w in works:
        w.wait()


def collectives(job: dict, rank: int) -> dict:
    world = dist.get_world_size()
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
    out["hop_s"] = _hop_s(hidden, rank, repeats)
    peers = list(range(world))
    for name, numel in (("tiny", hidden), ("big", max(1, rows // world) * hidden)):
        send = torch.ones(numel)
        recv = {p: torch.empty(numel) for p in peers}
        reps = repeats if name == "tiny" else max(2, repeats // 6)
        wall, cpu = _timed(lambda: _exchange(send, recv, peers, rank), reps)
        out["p2p"][name] = {"wall_s": wall, "cpu_s": cpu, "messages": 2 * (world - 1),
                            "bytes": 2 * (world - 1) * numel * 4}
    return out


def _hop_s(hidden: int, rank: int, repeats: int) -> float:
    """Wall seconds of one tiny message: rank 0 -> 1 -> 0, halved."""
    ping = torch.zeros(hidden)

    def pingpong():
        if rank == 0:
            dist.send(ping, 1, tag=5)
            dist.recv(ping, 1, tag=6)
        elif rank == 1:
            dist.recv(ping, 0, tag=5)
            dist.send(ping, 0, tag=6)

    wall, _ = _timed(pingpong, repeats)
    return wall / 2


PROBES = {"message": bounce, "collectives": collectives}

if __name__ == "__main__":
    main(sys.argv[1])
