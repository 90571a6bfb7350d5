"""From a pool to a RunSpec (no processes): FedPipe lets a small device train with a quantized base where
homogeneous LoRA leaves it out; FlocOff's spec gives the edge servers what MKL-CO sent them; bad input to
`edgepool federated run` gets one line and exit code 2."""
import numpy as np
import pytest
from typer.testing import CliRunner

from edgepool.cli import app
from edgepool.cluster import load_cluster
from edgepool.federated.experiment import cluster_path
from edgepool.federated.planning import Pool, fedpipe_spec, flocoff_spec, homogeneous_spec
from edgepool.federated.rank_plan import BATCHES, BITS, MB, RANKS, CostRow, LoraCost


def _cost() -> LoraCost:
    """Shaped like MiniLM's measured table: 86 MiB of fp32 weights (56 at int8), 4.7 MiB of activations
    per sample, 34 ms per sample on one core."""
    weights = {32: 86 * MB, 8: 56 * MB, 4: 51 * MB}
    rows = [CostRow(r, b, bits, weights[bits], r * 140_000, int(4.7 * MB) * b, 0.034)
            for r in RANKS for b in BATCHES for bits in BITS]
    return LoraCost(model="minilm-like", target_modules=["query", "value"], seq_len=48, rows=rows)


def test_fedpipe_lets_the_1gb_pi_train_where_homogeneous_lora_leaves_it_out():
    pool = Pool.of(load_cluster(cluster_path("federated-lab")), "server", cpu_budget=1.8, max_cores_per_device=0.55)
    labels = np.array([0, 1] * 150)
    homogeneous = homogeneous_spec(pool, labels, _cost(), rank=8, batch=16, steps=4, alpha=1.0, rounds=2)
    fedpipe = fedpipe_spec(pool, labels, _cost(), ["query"], deadline_s=8.0, alpha=1.0, rounds=2)
    small_h, small_p = homogeneous.node("pi5-1gb"), fedpipe.node("pi5-1gb")
    assert not small_h.participates and "memory" in small_h.reason
    assert small_p.participates and small_p.batch < 16  # a smaller batch fits its 124 MiB
    assert all(n.participates for n in fedpipe.nodes)
    pool.memory["pi5-1gb"] = 80 * MB  # too little for fp32 weights at any batch: the base is quantized
    assert fedpipe_spec(pool, labels, _cost(), ["query"], deadline_s=8.0, alpha=1.0, rounds=2).node("pi5-1gb").bits < 32
    # the slower a device, the less it does in the deadline
    samples = {n.device: n.batch * n.steps for n in fedpipe.nodes}
    assert samples["pi5-a"] <= samples["nano"]
    assert {n.device: n.train_indices for n in fedpipe.nodes} == {n.device: n.train_indices for n in homogeneous.nodes}


def test_flocoff_servers_train_on_what_the_devices_offloaded():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 600)
    devices, servers = [f"d{i}" for i in range(5)], ["s0", "s1"]
    spec = flocoff_spec(devices, servers, labels, {d: 1e6 for d in devices}, alpha=0.1, rounds=1, batch=8,
                        steps=2, lr=3e-3, offload_deadline_s=2.0)
    notes = spec.notes
    assert [n.device for n in spec.nodes] == servers
    received = sum(len(n.train_indices) for n in spec.nodes)
    assert received == notes["offloaded_samples"] > 0
    assert notes["kl_after"] < notes["kl_before"] and 0 < notes["kl_reduction_fraction"] <= 1
    assert 0 < notes["comm_cost_ratio_vs_uniform"] <= 1.0 + 1e-9


@pytest.mark.parametrize("args, field", [
    (["--method", "fedsgd"], "--method"),
    (["--method", "fedavg", "--server", "nowhere"], "--server"),
    (["--method", "fedpipe", "--aggregator", "mean"], "--aggregator"),
    (["--method", "flocoff"], "--edge-servers"),
    (["--method", "fedavg", "--task", "tweets-minilm"], "--task"),
])
def test_bad_input_is_one_line_naming_the_field(args, field):
    argv = ["federated", "run", "--cluster", str(cluster_path("federated-offload")), "--server", "aggregator", *args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert field in result.output and "Traceback" not in result.output
