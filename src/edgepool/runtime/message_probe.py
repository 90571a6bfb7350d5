"""What one point-to-point message costs the CPU: two gloo processes on this host bounce a tensor back and
forth, each timing its own CPU (all threads, kernel included) per message sent or received.

The cost model charges it to a pipeline stage per micro-batch and neighbour, divided by the emulated
device's share of a core (`runtime.emulation`). Measured on loopback and without CPU quotas: the fixed
part of a message, not its bytes on the wire (those are the link's).
`python -m edgepool.runtime.message_probe RANK PORT NBYTES MESSAGES` is one side.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

WARMUP_ROUNDS = 50
BLOCKS = 5  # the median block: wake-ups of a shared host make single blocks vary 2-4x


def measure_message_cpu_s(nbytes: int, rounds: int = 100, timeout_s: float = 60.0) -> float:
    """CPU seconds per message (send or receive), the mean of both sides."""
    from edgepool.testbed.launcher import free_port

    port = str(free_port())
    args = [str(max(int(nbytes), 4)), str(rounds)]
    procs = [subprocess.Popen([sys.executable, "-m", "edgepool.runtime.message_probe", str(rank), port, *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outs = [p.communicate(timeout=timeout_s) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        errors = " | ".join(err.strip().splitlines()[-1] for _, err in outs if err.strip())
        raise RuntimeError(f"message probe failed: {errors}")
    return sum(float(out.strip().splitlines()[-1]) for out, _ in outs) / 2


def _bounce(rank: int, port: str, nbytes: int, rounds: int) -> float:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x = torch.zeros(nbytes // 4)
    peer = 1 - rank

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
    dist.destroy_process_group()
    return statistics.median(per_message)


if __name__ == "__main__":
    rank, port, nbytes, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print(_bounce(rank, port, nbytes, rounds), flush=True)
