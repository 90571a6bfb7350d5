"""Adaptive offloading: the bandwidth traces, the environment's queue and utility, the baselines and PPO."""
from __future__ import annotations

import math

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from edgepool.split.adaptive import (AdaptiveResult, EnvConfig, FixedPolicy, OffloadEnv, ThresholdHeuristic,
                                     bandwidth_from_obs, compare, draw_adaptive, evaluate, rollout, train_agent)
from edgepool.split.options import OptionMeasure, SplitOption
from edgepool.split.traces import BandwidthTrace, generate_traces

MBIT = 1e6


def fixture_table() -> list[OptionMeasure]:
    """TEST FIXTURE, not measurements: a MobileNetV2-like table with plausible magnitudes (a 224-px local run
    ~25 ms on one host thread, JPEG 4-18 KB, bottleneck features 1-3 KB), 21 options over location x
    resolution x compression level."""
    table = []
    for res in (224, 160, 112):
        px = (res / 224) ** 2
        racc = {224: 1.0, 160: 0.9, 112: 0.72}[res]
        table.append(OptionMeasure(SplitOption("device", "local", resolution=res), racc, 0.0, 0.025 * px, 0.0))
        for method, level, acc, kb in (("jpeg", "90", 0.98, 18), ("jpeg", "50", 0.94, 8), ("jpeg", "20", 0.86, 4),
                                       ("webp", "50", 0.95, 6)):
            table.append(OptionMeasure(SplitOption("server", method, level, res), acc * racc, kb * 1000 * px,
                                       0.002 * px, 0.026 * px))
        for level, acc, kb in (("b12", 0.96, 3.0), ("b4", 0.88, 1.0)):
            table.append(OptionMeasure(SplitOption("split", "bottlefit", level, res, cut=5), acc * racc,
                                       kb * 1000 * px, 0.009 * px, 0.018 * px))
    return table


def constant_trace(mbit: float, seconds: int = 60) -> BandwidthTrace:
    return BandwidthTrace(name=f"const-{mbit}", step_s=1.0, bps=np.full(seconds, mbit * MBIT))


def test_env_passes_gymnasium_check():
    env = OffloadEnv(fixture_table(), generate_traces(3, 120, seed=1))
    check_env(env, skip_render_check=True)
    check_env(OffloadEnv(fixture_table(), generate_traces(2, 60, seed=1), evaluation=True), skip_render_check=True)


def test_traces_deterministic_and_seed_dependent():
    a, b = generate_traces(4, 200, seed=3), generate_traces(4, 200, seed=3)
    assert [t.name for t in a] == [t.name for t in b]
    assert all(np.array_equal(x.bps, y.bps) for x, y in zip(a, b))
    c = generate_traces(4, 200, seed=4)
    assert not all(np.array_equal(x.bps, y.bps) for x, y in zip(a, c))
    assert all(len(t.bps) == 200 and t.step_s == 1.0 for t in a)


def test_trace_statistics_match_the_documented_shapes():
    g3 = np.concatenate([t.bps for t in generate_traces(20, 600, seed=11, kind="3g")]) / MBIT
    g4 = np.concatenate([t.bps for t in generate_traces(20, 600, seed=11, kind="4g")]) / MBIT
    assert g3.min() >= 0.05 and g3.max() <= 8.0 and g4.max() <= 100.0
    assert 0.5 <= np.median(g3) <= 6 and 1.0 <= g3.mean() <= 3.0  # HSDPA commute: mostly 0.5-6 Mbit/s
    assert 0.7 <= ((g3 >= 0.5) & (g3 <= 6)).mean()
    assert 0.005 <= (g3 < 0.2).mean() <= 0.1  # tunnels: outages near 0.1 Mbit/s
    assert 10 <= g4.mean() <= 50 and np.percentile(g4, 95) >= 30  # LTE: mean tens of Mbit/s
    mixed = generate_traces(20, 60, seed=5)
    assert {t.name.split("-")[0] for t in mixed} == {"3g", "4g"}
    # correlated over seconds (AR(1) in log-space), not white noise
    x = np.log(g4[:600])
    assert np.corrcoef(x[:-1], x[1:])[0, 1] > 0.6


def test_step_reward_is_the_written_formula():
    cfg = EnvConfig(frame_interval_s=0.1, device_slowdown=2.0, server_slowdown=0.5, rtt_s=0.02,
                    latency_weight=1.0, deadline_s=0.5, late_penalty=0.5)
    m = OptionMeasure(SplitOption("server", "jpeg", "90"), accuracy=0.9, bytes_per_image=30_000, device_s=0.01,
                      server_s=0.04)
    env = OffloadEnv([m], [constant_trace(2.0)], cfg, evaluation=True)
    env.reset(options={"trace": 0})
    _, r, *_ , info = env.step(0)
    # 0.01*2 device + 240 kbit / 2 Mbit/s = 0.12 s transfer + 0.02 rtt + 0.04*0.5 server = 0.18 s
    assert info["latency_s"] == pytest.approx(0.18)
    assert r == pytest.approx(0.9 - 1.0 * 0.18)
    # the second frame arrives at 0.1 s, leaves the device at 0.12 s, but the link is busy until 0.14 s:
    # it waits 0.02 s, so 0.18 + 0.02
    _, r2, *_, info2 = env.step(0)
    assert info2["latency_s"] == pytest.approx(0.20)
    assert r2 == pytest.approx(0.9 - 0.20)
    assert cfg.utility(0.9, 0.51) == -0.5 and cfg.utility(0.9, None) == -0.5
    assert "0.5" in cfg.formula()


def test_transfer_integrates_time_varying_bandwidth():
    cfg = EnvConfig(device_slowdown=1.0, server_slowdown=1.0, rtt_s=0.0)
    m = OptionMeasure(SplitOption("server", "png"), 1.0, bytes_per_image=250_000, device_s=0.0, server_s=0.0)
    trace = BandwidthTrace("step", 1.0, np.array([1.0, 3.0, 3.0]) * MBIT)
    env = OffloadEnv([m], [trace], cfg, evaluation=True)
    env.reset(options={"trace": 0})
    *_, info = env.step(0)  # 2 Mbit: 1 Mbit in the first second, the other at 3 Mbit/s
    assert info["latency_s"] == pytest.approx(1.0 + 1 / 3)


def test_queue_grows_when_a_slow_option_meets_low_bandwidth():
    table = fixture_table()
    heavy = next(i for i, m in enumerate(table) if m.option.name == "offload-jpeg-90")
    env = OffloadEnv(table, [constant_trace(0.5)], EnvConfig(), evaluation=True)
    obs, _ = env.reset(options={"trace": 0})
    latencies, queued = [], []
    for _ in range(6):
        obs, r, *_, info = env.step(heavy)
        latencies.append(info["latency_s"])
        queued.append(obs[HIST_LINK])
    assert all(b > a for a, b in zip(latencies, latencies[1:]))
    assert queued[-1] > queued[0] > 0
    for _ in range(20):
        obs, r, *_, info = env.step(heavy)
    assert info["dropped"] and r == -EnvConfig().late_penalty


HIST_LINK = 6  # the observation's estimated-uplink-wait entry (after 5 bandwidths and the device backlog)


def test_heuristic_goes_local_when_starved_and_offloads_when_fat():
    table = fixture_table()
    h = ThresholdHeuristic(table, EnvConfig())
    # 20 kbit/s: even the 1-KB bottleneck needs 0.4 s a frame, more than the 0.1-s frame interval
    assert table[h.choose(0.02 * MBIT)].option.name == "local-r112"
    assert table[h.choose(100 * MBIT)].option.location != "device"
    assert table[h.choose(100 * MBIT)].option.name == "offload-jpeg-90"
    env = OffloadEnv(table, [constant_trace(80.0)], EnvConfig(), evaluation=True)
    obs, _ = env.reset(options={"trace": 0})
    assert bandwidth_from_obs(obs) == pytest.approx(80 * MBIT, rel=1e-5)


def test_fixed_and_heuristic_evaluation_is_deterministic_and_sane():
    table = fixture_table()
    traces = generate_traces(2, 60, seed=21)
    h = ThresholdHeuristic(table)
    a, b = evaluate(h, table, traces), evaluate(h, table, traces)
    assert a == b and math.isfinite(a) and a > 0
    local = next(i for i, m in enumerate(table) if m.option.name == "local-r112")
    r = rollout(FixedPolicy(local), table, traces[0])
    assert len(r.utilities) == 600 and all(u > 0 for u in r.utilities)


@pytest.mark.slow
def test_short_ppo_training_and_compare(tmp_path):
    table = fixture_table()[:7]
    train, test = generate_traces(4, 120, seed=1), generate_traces(2, 60, seed=2)
    cfg = EnvConfig(episode_frames=100)
    model = train_agent(table, train, timesteps=2048, seed=0, config=cfg, n_steps=512)
    assert math.isfinite(evaluate(model, table, test, cfg))
    messages = []
    result = compare(table, train, test, timesteps=2048, seed=0, config=cfg, progress=messages.append)
    assert isinstance(result, AdaptiveResult) and messages
    assert math.isfinite(result.utility_ratio_vs_best_fixed) and math.isfinite(result.utility_ratio_vs_heuristic)
    assert set(result.utilities) >= {"ppo", "heuristic", *(f"fixed:{m.option.name}" for m in table)}
    assert result.to_dict()["formula"] == cfg.formula()
    assert draw_adaptive(result, tmp_path / "adaptive.png").stat().st_size > 1000
