"""RecSLAM: the real fusion recovers the map, the IP is optimal (brute force), the greedy keeps its bound, the
simulated round follows its event order, and the environment is reproducible from its seed."""
from __future__ import annotations

import json

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from edgepool.errors import SpecError
from edgepool.scheduling.recslam.assignment import (AssignmentProblem, brute_force, greedy, greedy_bound, nearest,
                                            simulate_round, solve_ip)
from edgepool.scheduling.recslam.scenario import (GreedyPolicy, NearestPolicy, PlannedPolicy, RandomPolicy, RecSlamEnv,
                                         default_cluster, ip_planner, rollout)
from edgepool.scheduling.recslam.site import SiteConfig, WifiModel, build_site, calibrate
from edgepool.scheduling.recslam.scans import run_fusion


@pytest.fixture(scope="module")
def cal():
    return calibrate(0, scans=6, robots=1)  # a tiny real fusion run: enough work figures for the cost model


def random_problem(rng: np.random.Generator, robots: int = 6, servers: int = 3, capacity: float = 3.0,
                   out_of_range: float = 0.15) -> AssignmentProblem:
    """TEST FIXTURE: random seconds with unrelated-machine structure (each server fast for some robots)."""
    upload = rng.uniform(0.005, 0.1, (robots, servers))
    upload[rng.random((robots, servers)) < out_of_range] = np.inf
    upload[np.arange(robots), rng.integers(servers, size=robots)] = rng.uniform(0.005, 0.05, robots)
    return AssignmentProblem(upload_s=upload, fuse_s=rng.uniform(0.01, 0.2, (robots, servers)),
                             submap_s=rng.uniform(0, 0.01, (robots, servers)), merge_s=rng.uniform(0, 1e-3, robots),
                             link_latency_s=rng.uniform(0.001, 0.02, servers), memory_bytes=np.ones(robots),
                             capacity_bytes=np.full(servers, capacity),
                             distance_m=rng.uniform(1, 40, (robots, servers)))


@pytest.mark.parametrize("seed", range(6))
def test_ip_optimum_equals_brute_force_on_tiny_cases(seed):
    problem = random_problem(np.random.default_rng(seed))
    for capacity in (True, False):
        sol = solve_ip(problem, capacity=capacity)
        _, best = brute_force(problem, capacity=capacity)
        assert sol.objective == pytest.approx(best, rel=1e-6)
        assert not capacity or problem.violations(sol.assign) == 0


def test_ip_matches_brute_force_on_a_real_site(cal):
    site = build_site(default_cluster(), 3, cal, SiteConfig(robots=(6, 6)))
    assert site.problem.robots == 6 and site.problem.servers == 5
    _, best = brute_force(site.problem)
    assert solve_ip(site.problem).objective == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_greedy_keeps_its_stated_bound_against_the_ip(seed):
    rng = np.random.default_rng(100 + seed)
    problem = random_problem(rng, robots=int(rng.integers(4, 14)), servers=int(rng.integers(2, 6)))
    opt = solve_ip(problem, capacity=False).objective
    for order in (None, rng.permutation(problem.robots)):
        load = problem.objective(greedy(problem, order=order, capacity=False))
        assert opt - 1e-9 <= load <= greedy_bound(problem) + 1e-9
        assert load <= problem.servers * opt + problem.link_latency_s.max() + 1e-9


def test_round_simulation_follows_uploads_fusion_and_cloud_merges():
    problem = AssignmentProblem(upload_s=np.array([[1.0, 5.0], [2.0, 5.0], [9.0, 1.0]]),
                                fuse_s=np.array([[3.0, 1.0], [1.0, 1.0], [1.0, 2.0]]),
                                submap_s=np.full((3, 2), 0.5), merge_s=np.array([0.25, 0.25, 1.0]),
                                link_latency_s=np.array([0.1, 0.2]), memory_bytes=np.ones(3),
                                capacity_bytes=np.full(2, 3.0), distance_m=np.ones((3, 2)))
    rnd = simulate_round(problem, np.array([0, 0, 1]))
    # server 0: robot 0 uploads 0-1, fuses 1-4; robot 1 uploads 1-3, waits, fuses 4-5; server 1: robot 2 1-3
    assert rnd.robot_latency_s.tolist() == [4.0, 5.0, 3.0]
    # submaps reach the cloud at 3 + 0.2 + 0.5 = 3.7 (merge 1.0 -> 4.7) and 5 + 0.1 + 1.0 = 6.1 (merge 0.5)
    assert rnd.latency_s == pytest.approx(6.6)
    assert problem.objective(np.array([0, 0, 1])) == pytest.approx(0.1 + 1 + 3 + 0.5 + 0.25 + 2 + 1 + 0.5 + 0.25)
    with pytest.raises(SpecError, match="assignment"):
        simulate_round(problem, np.array([0, 2, 1]))


def test_real_fusion_recovers_the_map_and_beats_odometry():
    run = run_fusion(5, robots=2, servers=2, scans=14)
    assert run.accuracy["accuracy"] >= 0.97
    assert run.accuracy["occupied_precision"] >= 0.9
    assert run.accuracy["accuracy"] > run.accuracy_odometry_only["accuracy"]
    assert run.pose_error_m < run.odometry_error_m
    icp = [w for w in run.work if w.iterations > 0]
    assert icp and all(w.flops > 5 * w.scan_points * w.submap_points for w in icp)


def test_wifi_rate_falls_with_distance_and_ends_at_the_range():
    wifi = WifiModel()
    rates = wifi.goodput_bps(np.arange(1, 80))
    assert np.all(np.diff(rates) <= 0)
    assert rates[0] == pytest.approx(390e6 / 8 * wifi.mac_efficiency)
    assert rates[-1] == 0 and rates[20] > 0


def test_env_is_reproducible_from_its_seed(cal):
    env_a, env_b = RecSlamEnv(cal), RecSlamEnv(cal)
    check_env(RecSlamEnv(cal), skip_render_check=True)
    a, b = rollout(env_a, RandomPolicy(1), seed=42), rollout(env_b, RandomPolicy(1), seed=42)
    assert a == b
    assert rollout(env_a, RandomPolicy(1), seed=43)["assignment"] != a["assignment"]
    obs_a, _ = env_a.reset(seed=7)
    obs_b, _ = env_b.reset(seed=7)
    assert np.array_equal(obs_a, obs_b) and env_a.observation_space.contains(obs_a)


def test_policies_roll_out_through_the_env_as_their_offline_versions(cal):
    env = RecSlamEnv(cal)
    ip = rollout(env, PlannedPolicy("ip", ip_planner(10.0)), seed=11)
    problem = env.site.problem
    assert ip["load_s"] == pytest.approx(solve_ip(problem).objective, rel=1e-6)
    assert ip["violations"] == 0
    assert rollout(env, NearestPolicy(), seed=11)["assignment"] == nearest(problem).tolist()
    online = rollout(env, GreedyPolicy(), seed=11)
    assert online["assignment"] == greedy(problem, order=env.order).tolist()
    assert ip["load_s"] <= online["load_s"] + 1e-9
    json.dumps(ip)


def test_bad_input_names_the_field(cal):
    with pytest.raises(SpecError, match="robots"):
        SiteConfig(robots=(0, 5))
    with pytest.raises(SpecError, match="cloud"):
        build_site(default_cluster(), 0, cal, SiteConfig(cloud="nope"))
    with pytest.raises(SpecError, match="action"):
        env = RecSlamEnv(cal)
        env.reset(seed=0)
        env.step(99)


@pytest.mark.slow
def test_evaluate_quick_reports_the_metric_and_plots(tmp_path):
    from edgepool.scheduling.recslam import scenario as recslam

    assert recslam.train(tmp_path)["saved"] is None
    result = recslam.evaluate(tmp_path, quick=True)
    m = result["metrics"]
    assert 0 < m["recslam_latency_ratio_vs_nearest"] <= 1.0
    assert m["recslam_greedy_bound_held"] == 1.0 and m["recslam_map_accuracy"] > 0.97
    assert result["policies"]["ip"]["violations_total"] == 0
    assert all((tmp_path / p).exists() for p in result["plots"].values())
    assert set(result["eval_seeds"]).isdisjoint(result["train_seeds"])
    json.dumps(result)
