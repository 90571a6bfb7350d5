"""Split-computing latency on the testbed: a toy pipeline's 100 KB payload over 1 and 20 Mbit/s links takes
what the bandwidth says, answers come back right, nothing is left behind; and the sweep's plain data."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edgepool.split.latency import LatencyMeasure, LatencySweep, draw_latency_sweep, measure_latency
from edgepool.split.options import SplitOption
from edgepool.testbed import unavailable_reason
from edgepool.testbed.cgroups import list_cgroups
from edgepool.testbed.netns import list_namespaces

TESTS = str(Path(__file__).parent)


def _sweep() -> LatencySweep:
    measures = [LatencyMeasure("local", bw, [0.30, 0.32, 0.31], 0.0, location="device", measured_bps=1e6)
                for bw in (1e6, 2e7)]
    measures += [LatencyMeasure("offload-jpeg-90", 1e6, [0.9, 0.8, 0.85], 1e5, location="server"),
                 LatencyMeasure("offload-jpeg-90", 2e7, [0.05, 0.06, 0.07], 1e5, location="server")]
    return LatencySweep(measures, [1e6, 2e7], {"device_cores": 0.15, "server_cores": 1.0})


def test_sweep_round_trips_and_picks_the_fastest_option(tmp_path):
    sweep = _sweep()
    again = LatencySweep.from_dict(sweep.to_dict())
    assert again.to_dict() == sweep.to_dict()
    assert again.best(1e6).option == "local" and again.best(2e7).option == "offload-jpeg-90"
    assert again.best(2e7, names=["local"]).option == "local"
    assert again.latency("offload-jpeg-90", 1e6) == pytest.approx(0.85)
    assert again.measure("local", 2e7).mean_s == pytest.approx(0.31)
    with pytest.raises(KeyError, match="no measure"):
        again.latency("local", 5e6)
    assert draw_latency_sweep(again, tmp_path / "sweep.png").stat().st_size > 0


def test_without_the_testbed_it_says_why(monkeypatch):
    import edgepool.testbed.system as system

    monkeypatch.setattr(system, "unavailable_reason", lambda: "the emulated testbed needs root (test)")
    with pytest.raises(system.TestbedUnavailable, match="needs root"):
        measure_latency("split_toy:toy_pipeline", {}, [SplitOption("device", "local")],
                        np.zeros((1, 4, 4, 3), np.uint8), [1e6])


_reason = unavailable_reason()


def _ms(values) -> float:
    return round(float(np.mean(values)) * 1e3, 1) if values else 0.0


def _transfer(m: LatencyMeasure) -> float:
    """Seconds per image on the link (both ways, and gloo): the latency less both sides' compute."""
    return m.mean_s - float(np.mean(m.device_s)) - float(np.mean(m.server_s))


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(_reason is not None, reason=f"testbed unavailable: {_reason}")
def test_toy_pipeline_latency_follows_the_link_bandwidth():
    from split_toy import toy_class

    payload, work = 100_000, 30  # work: about 18 ms of CPU per side on one host core
    images = np.random.default_rng(0).integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    options = [SplitOption("server", "png"), SplitOption("device", "local")]
    low, high = 1e6, 2e7
    started = time.monotonic()
    sweep = measure_latency("split_toy:toy_pipeline", {"payload_bytes": payload, "work": work}, options, images,
                            [low, high], warmup=1, repeats=4, env={"PYTHONPATH": TESTS})
    elapsed = time.monotonic() - started
    print(f"\ntwo testbed runs in {elapsed:.1f} s; runs: "
          + "; ".join(f"{r['bandwidth_bps']:g} bit/s setup {r['setup_s']} s total {r['run_s']} s"
                      for r in sweep.testbed["runs"]))
    for m in sweep.measures:
        print(f"{m.option:16s} {m.bandwidth_bps / 1e6:5g} Mbit/s  mean {m.mean_s * 1e3:8.1f} ms  "
              f"latencies {[round(x * 1e3, 1) for x in m.latencies_s]} ms  bytes {m.bytes_per_image:g}  "
              f"device {_ms(m.device_s)} ms  server {_ms(m.server_s)} ms")

    offload, fast = sweep.measure("offload-png", low), sweep.measure("offload-png", high)
    expected = 8 * payload / low
    assert offload.bytes_per_image == payload
    assert abs(_transfer(offload) - expected) < 0.25 * expected + 0.05
    assert max(offload.latencies_s) - min(offload.latencies_s) < 0.1 * expected  # htb paces packets, not bursts
    assert _transfer(fast) < _transfer(offload) / 5
    slowdown = np.mean(offload.device_s) / np.mean(offload.server_s)  # same work: the quotas' ratio, 1 / 0.15
    assert 0.5 * (1 / 0.15) < slowdown < 1.5 * (1 / 0.15)
    for m in sweep.measures:
        assert m.predictions == [toy_class(images[i]) for i in m.images] and len(m.images) == 4
    local = [sweep.measure("local", bw) for bw in (low, high)]
    assert local[0].latencies_s == local[1].latencies_s and local[0].measured_bps == low
    assert local[0].bytes_per_image == 0
    assert sweep.best(low).option == "local"
    assert all(r["quota_applied"] == [True, True] for r in sweep.testbed["runs"])
    assert all(r["leftovers"] == {"namespaces": [], "cgroups": [], "processes": []} for r in sweep.testbed["runs"])
    run_ids = [r["where"]["run_id"] for r in sweep.testbed["runs"]]
    assert not [ns for ns in list_namespaces() if any(rid in ns for rid in run_ids)]
    assert not [p for p in list_cgroups("edgepool-") if any(rid in p.name for rid in run_ids)]
    assert LatencySweep.from_dict(json.loads(json.dumps(sweep.to_dict()))).to_dict() == sweep.to_dict()
    assert elapsed < 90
