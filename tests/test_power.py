"""Power modes: mode spaces, power model, Pagoda rooflines, PowerTrain transfer, Fulcrum searches."""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgepool.errors import SpecError
from edgepool.power import fulcrum as fc
from edgepool.power import powertrain as pt
from edgepool.power.modes import jetson_mode_space, local_mode_space
from edgepool.power.power_model import local_power_model, power_model_for
from edgepool.profile import LayerProfile, ModelProfile


def test_orin_grid_is_powertrains_4368_modes_with_presets_on_it():
    space = jetson_mode_space("jetson-agx-orin")
    assert space.size == 4368 == len(space.modes())
    assert [len(v) for v in space.dims.values()] == [6, 14, 13, 4]
    for mode in space.presets.values():
        space.index(mode)  # on the grid
    assert space.presets["MAXN"] == space.max_mode()
    with pytest.raises(SpecError, match="gpu_mhz"):
        space.parse("cores=4,cpu_mhz=2201.6,gpu_mhz=999,mem_mhz=3199")
    assert space.parse("15W") == space.presets["15W"]


def test_neighbors_step_along_one_dimension():
    space = local_mode_space()
    mode = (1.0, 1.0, 0.5)
    around = space.neighbors(mode)
    assert {d for d, _, _ in around} == {"cores", "threads", "cpu_fraction"}
    for dim, _, other in around:
        changed = [a != b for a, b in zip(mode, other)]
        assert sum(changed) == 1 and space.dim_names[changed.index(True)] == dim


def test_jetson_power_model_tracks_budgets_and_grows_with_clocks():
    space = jetson_mode_space("jetson-agx-orin")
    pm = power_model_for(space)
    for point in pm.fit["points"]:
        assert abs(point["model_w"] - point["published_w"]) / point["published_w"] < 0.35
    low = pm.power(space, (12.0, 2201.6, 420.75, 3199.0))
    high = pm.power(space, (12.0, 2201.6, 1300.5, 3199.0))
    assert high > low > pm.power(space, space.max_mode(), 0, 0, 0)
    assert "modelled" in pm.source and "modelled" in local_power_model(local_mode_space()).source


def _toy_profile() -> ModelProfile:
    layers = [LayerProfile("conv", fwd_flops=4e9, bwd_flops=8e9, param_bytes=2e6, output_bytes=4e6, saved_bytes=4e6,
                           input_bytes=4e6),
              LayerProfile("norm", fwd_flops=1e6, bwd_flops=2e6, param_bytes=1e3, output_bytes=4e6, saved_bytes=4e6,
                           input_bytes=4e6)]
    return ModelProfile(model="toy", batch=1, seq=None, layers=layers)


def test_pagoda_rooflines_place_layers_and_pick_min_energy_within_bound():
    from edgepool.catalog import get_device
    from edgepool.power.roofline import layer_work, min_energy_mode, placement, rooflines, sweep

    space = jetson_mode_space("jetson-agx-orin")
    roof = rooflines(space, get_device("jetson-agx-orin"), power_model_for(space))
    work = layer_work(_toy_profile(), 8, "train")
    s = sweep(work, roof, 8)
    top = space.modes().index(space.max_mode())
    assert s.time_s[top] == pytest.approx(s.time_s.min())
    bounds = {p["layer"]: p["bound"] for p in placement(work, roof, top)}
    assert bounds["conv"] == "compute" and bounds["norm"] == "memory"
    bound = 2.0 * s.time_s[top]
    pick = min_energy_mode(s, bound)
    assert s.time_s[pick] <= bound and s.energy_j[pick] <= s.energy_j[top]
    assert min_energy_mode(s, 0.5 * s.time_s[top]) is None


def _synthetic(space, modes, scale, exponent, rng, noise=0.02):
    x = space.features(modes)
    cores, threads, frac = x[:, 0] * 2, x[:, 1] * 2, x[:, 2]
    speed = np.minimum(cores, threads) * frac ** exponent
    t = scale / speed * (1 + 0.15 * (threads > cores)) * (1 + noise * rng.standard_normal(len(modes)))
    return t, np.array([local_power_model(space).power(space, m) for m in modes])


def test_powertrain_transfer_beats_scratch_and_scaling_on_a_shifted_workload():
    space = local_mode_space(fraction_step=0.05)
    modes = space.modes()
    rng = np.random.default_rng(0)
    ref_t, ref_p = _synthetic(space, modes, 0.02, 1.0, rng)
    new_t, new_p = _synthetic(space, modes, 0.05, 0.7, rng)  # a workload that scales differently
    pretrained = pt.fit_predictor(space, modes, ref_t, ref_p)
    idx = rng.choice(len(modes), 20, replace=False)
    hold = np.setdiff1d(np.arange(len(modes)), idx)
    seen, unseen = [modes[i] for i in idx], [modes[i] for i in hold]
    moved = pt.transfer(pretrained, seen, new_t[idx], new_p[idx]).predict(unseen)[0]
    scratch = pt.fit_predictor(space, seen, new_t[idx], new_p[idx], seed=1).predict(unseen)[0]
    linear = pt.linear_scaling(ref_t, idx, new_t[idx])[hold]
    err = {k: pt.mape(v, new_t[hold]) for k, v in (("transfer", moved), ("scratch", scratch), ("linear", linear))}
    assert err["transfer"] < 10 and err["transfer"] < err["scratch"] and err["transfer"] < err["linear"], err


def test_pareto_front_and_budget_choice():
    times = np.array([1.0, 2.0, 3.0, 2.5, 1.5])
    powers = np.array([10.0, 6.0, 3.0, 7.0, 12.0])
    front = pt.pareto_front(times, powers)
    assert front == [0, 1, 2]
    for i in set(range(5)) - set(front):
        assert any(times[j] <= times[i] and powers[j] <= powers[i] for j in front)
    assert pt.best_under_budget(times, powers, 6.5) == 1
    assert pt.best_under_budget(times, powers, 1.0) is None


def test_interleave_model_respects_goal_and_arrivals():
    s = fc.Scenario(arrival_rate=50, latency_goal_s=0.1, power_budget_w=10, train_batch=8)
    thr, b, k = fc.interleave_throughput(0.01, 0.002, 0.006, s)
    ti = fc.infer_time(0.002, 0.006, b)
    cycle = ti + k * 0.01
    assert thr > 0 and cycle + ti <= 0.1 + 1e-9 and s.arrival_rate * cycle <= b + 1e-9
    assert fc.interleave_throughput(0.2, 0.002, 0.006, s)[0] == 0  # a training step longer than the goal
    many = fc.throughput_array([0.01, 0.2], [0.002] * 2, [0.006] * 2, [5, 5], s)
    assert many[0] == pytest.approx(thr) and many[1] == 0


def _local_oracle_table():
    space = local_mode_space()
    rng = np.random.default_rng(3)
    modes = space.modes()
    t, p = _synthetic(space, modes, 0.02, 1.0, rng, noise=0.0)
    b1, _ = _synthetic(space, modes, 0.002, 1.0, rng, noise=0.0)
    table = {m: fc.Measurement({"train": t[i], "infer_b1": b1[i], "infer_b8": 3 * b1[i]}, p[i])
             for i, m in enumerate(modes)}
    ref_t, ref_p = _synthetic(space, modes, 0.03, 0.9, rng)
    return space, table, pt.fit_predictor(space, modes, ref_t, ref_p)


def test_gmd_and_als_reach_the_optimum_with_few_profiles():
    space, table, pretrained = _local_oracle_table()
    cap = space.size // 10
    for budget_w in (9.0, 14.0):
        s = fc.Scenario(arrival_rate=60, latency_goal_s=0.12, power_budget_w=budget_w, train_batch=8)
        best = fc.exhaustive_search(fc.Oracle(space, table), s)
        assert best.profiled == space.size and best.throughput > 0
        gmd = fc.gmd_search(fc.Oracle(space, table), s, budget=cap)
        als = fc.als_search(fc.Oracle(space, table), s, pretrained, budget=cap)
        for r in (gmd, als):
            assert r.profiled <= cap
            assert r.throughput >= 0.95 * best.throughput, (r.method, budget_w, r.throughput, best.throughput)
            assert table[r.mode].power_w <= budget_w


def test_managed_interleaving_meets_the_latency_goal_with_real_steps():
    def train_step():
        time.sleep(0.01)

    def infer(batch):
        time.sleep(0.001 + 0.0005 * batch)

    managed = fc.run_interleaved(train_step, infer, train_batch=8, arrival_rate=40, latency_goal_s=0.05,
                                 duration_s=1.0, managed=True, seed=1)
    assert managed.requests > 10 and len(managed.latencies_s) == managed.requests
    assert managed.train_steps > 10
    assert managed.goal_met >= 0.9, managed.to_dict()
    assert managed.to_dict()["source"] == "measured"


def test_gmd_speed_is_read_from_the_named_quantities():
    space, table, _ = _local_oracle_table()
    s = fc.Scenario(arrival_rate=60, latency_goal_s=0.12, power_budget_w=9.0, train_batch=8)
    cap = space.size // 10
    default = fc.gmd_search(fc.Oracle(space, table), s, budget=cap)
    renamed = {m: fc.Measurement({**x.times, "infer_big": x.times[fc.INFER_B8]}, x.power_w) for m, x in table.items()}
    named = fc.gmd_search(fc.Oracle(space, renamed), s, budget=cap, speed_keys=(fc.TRAIN, "infer_big"))
    assert (named.mode, named.throughput, named.profiled, named.trace) == (
        default.mode, default.throughput, default.profiled, default.trace)


def test_profile_rows_keep_the_fastest_block_and_model_power_without_a_sensor():
    from edgepool.power import profiler
    from edgepool.power.modes import quick_local_mode_space
    from edgepool.power.workloads import Workload

    space = quick_local_mode_space()
    work = Workload("mlp-small-train", "mlp", "train", batch=32, overrides={"width": 256, "depth": 2})
    messages = []
    modes = profiler._full_speed_modes(space, space.modes(), "no cgroups here", messages.append)
    assert modes and all(space.describe(m)["cpu_fraction"] == 1.0 for m in modes)
    assert "no cgroups here" in messages[0]
    blocks = {(work.name, m): [0.3, 0.2, 0.25] for m in modes}
    rows = profiler._rows(space, [work], modes, blocks, {}, None, power_model_for(space))
    assert [r["time_s"] for r in rows] == [0.2] * len(modes)
    assert all(r["power_source"] == profiler.MODELLED_POWER and r["power_w"] > 0 for r in rows)
