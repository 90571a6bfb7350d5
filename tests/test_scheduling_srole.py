"""SROLE: the shield never lets a colliding joint action through and changes as few agents as possible, the
PettingZoo environment is reproducible from its seed, the baselines do what their docs say, and the scenario's
API returns the issue's metrics."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgepool.cluster import example_cluster_path, load_cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.scheduling.fleet import Fleet
from edgepool.scheduling.srole.shield import Shield, colliding_nodes
from edgepool.scheduling.srole.env import SroleConfig, SroleEnv, View
from edgepool.scheduling.srole.jobs import Job, JobKind, Workload, plan_kind


def fixture_env(rate: float = 0.02, horizon_s: float = 600.0) -> SroleEnv:
    """TEST FIXTURE: the srole-edge cluster with two made-up job kinds (iteration seconds proportional to
    1 / node speed), not the planned zoo models."""
    fleet = Fleet.from_cluster(load_cluster(example_cluster_path("srole-edge")), CostModel())
    slow = fleet.speeds.max() / fleet.speeds
    kinds = [JobKind("small", 32, 10e6, 0.2 * slow, np.full(len(fleet), 32)),
             JobKind("big", 16, 500e6, 0.8 * slow, np.full(len(fleet), 16))]
    workload = Workload(rates_per_s=(rate,) * len(fleet), horizon_s=horizon_s, kind_weights=(0.6, 0.4))
    return SroleEnv(fleet, kinds, workload, SroleConfig(step_s=30.0, capacity_s=120.0))


def random_case(rng: np.random.Generator, nodes: int):
    agents = [a for a in range(nodes) if rng.random() < 0.8] or [0]
    targets = {a: int(rng.integers(nodes)) for a in agents}
    work = {a: rng.uniform(1.0, 100.0, nodes) for a in agents}
    prefs = {a: rng.normal(size=nodes) for a in agents}
    backlog = rng.choice([0.0, 50.0, 150.0, 400.0], size=nodes) * rng.random(nodes)
    return targets, work, prefs, backlog


# ----------------------------------------------------------------------------- the shield
def test_shield_never_lets_a_colliding_joint_action_through_on_many_random_joint_actions():
    shield, seen = Shield(capacity_s=150.0), 0
    for seed in range(2000):
        rng = np.random.default_rng(seed)
        targets, work, prefs, backlog = random_case(rng, int(rng.integers(2, 9)))
        fix = shield.correct(targets, prefs, work, backlog)
        assert colliding_nodes(fix.targets, work, backlog, shield.capacity_s) == []
        assert set(fix.targets) == set(targets)
        assert fix.collisions == colliding_nodes(targets, work, backlog, shield.capacity_s)
        if not fix.collisions:
            assert fix.targets == targets and fix.changed == []
        seen += bool(fix.collisions)
    assert seen > 500  # the cases did exercise the correction


def test_shield_changes_the_fewest_agents_brute_force_on_small_instances():
    shield = Shield(capacity_s=150.0)
    for seed in range(150):
        rng = np.random.default_rng(10_000 + seed)
        nodes = 4
        targets, work, prefs, backlog = random_case(rng, nodes)
        agents = sorted(targets)
        best = min(sum(t[k] != targets[a] for k, a in enumerate(agents))
                   for t in itertools.product(range(nodes), repeat=len(agents))
                   if not colliding_nodes(dict(zip(agents, t)), work, backlog, shield.capacity_s))
        fix = shield.correct(targets, prefs, work, backlog)
        assert len(fix.changed) == best
        assert all(fix.targets[a] != targets[a] for a in fix.changed)


def test_a_redirected_agent_takes_its_next_best_safe_node():
    shield = Shield(capacity_s=100.0)
    work = {0: np.array([80.0, 80.0, 80.0]), 1: np.array([70.0, 70.0, 70.0])}
    prefs = {0: np.array([0.1, 0.2, 0.9]), 1: np.array([0.5, 0.1, 0.9])}
    # both send to node 2: 150 s > 100 s, a collision; the shorter job (agent 1) stays, agent 0 moves to
    # its next choice, node 1
    fix = shield.correct({0: 2, 1: 2}, prefs, work, np.zeros(3))
    assert fix.collisions == [2] and fix.changed == [0] and fix.targets == {0: 1, 1: 2}
    # a node's own job is the one that stays when only one can
    fix = shield.correct({0: 0, 1: 0}, prefs, {0: work[0], 1: np.array([10.0, 10, 10])}, np.array([95.0, 0, 0]))
    assert fix.targets[0] == 0 and fix.changed == [1]


def test_one_job_alone_never_collides_and_several_that_fit_do_not_either():
    work = {0: np.array([500.0, 1.0]), 1: np.array([10.0, 1.0]), 2: np.array([10.0, 1.0])}
    assert colliding_nodes({0: 0}, work, np.array([1e4, 0.0]), 100.0) == []
    assert colliding_nodes({1: 0, 2: 0}, work, np.array([50.0, 0.0]), 100.0) == []
    assert colliding_nodes({1: 0, 2: 0}, work, np.array([90.0, 0.0]), 100.0) == [0]


# ----------------------------------------------------------------------------- the environment
def test_env_follows_the_pettingzoo_parallel_api():
    from pettingzoo.test import parallel_api_test

    parallel_api_test(fixture_env(), num_cycles=50)


def _trajectory(env: SroleEnv, seed: int, action_seed: int):
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed)
    out = []
    while env.agents:
        actions = {a: int(rng.integers(len(env.fleet))) for a in env.agents}
        obs, rewards, *_ = env.step(actions)
        out.append((np.concatenate(list(obs.values())), tuple(rewards.values())))
    return out, list(env.tally.jct_s)


def test_env_is_reproducible_from_its_seed():
    env = fixture_env()
    a, jct_a = _trajectory(env, seed=5, action_seed=1)
    b, jct_b = _trajectory(env, seed=5, action_seed=1)
    c, jct_c = _trajectory(env, seed=6, action_seed=1)
    assert len(a) == len(b) and all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert jct_a == jct_b and jct_a != jct_c and len(jct_a) > 20


def test_a_job_kept_home_completes_after_its_wait_for_the_step_and_its_run():
    env = fixture_env(rate=0.0)
    env.reset(seed=0)
    job = Job(origin=2, arrival_s=3.0, kind=1, iterations=10, dataset_bytes=1e8)
    env.now = 30.0
    env.inbox[2].append(job)
    _, rewards, *_ = env.step({a: 2 for a in env.possible_agents})
    run = env.kinds[1].iteration_s[2] * 10
    assert env.tally.jct_s == [pytest.approx(27.0 + run)]
    assert rewards["nano"] == pytest.approx(-(27.0 + run) / env.config.reward_scale_s)
    # sent across the sites instead: the data set and weights cross the 10 Mbps link first
    env.inbox[2].append(job)
    env.step({a: 4 for a in env.possible_agents})
    moved = env.fleet.transfer_s(2, 4, 1e8 + 500e6)
    assert env.tally.jct_s[-1] == pytest.approx(60.0 - 3.0 + moved + env.kinds[1].iteration_s[4] * 10)


def test_env_rejects_bad_input_with_the_field_named():
    env = fixture_env()
    with pytest.raises(SpecError, match="srole.step_s"):
        SroleEnv(env.fleet, env.kinds, env.workload, SroleConfig(step_s=0))
    with pytest.raises(SpecError, match="workload.rates_per_s"):
        SroleEnv(env.fleet, env.kinds, Workload((0.1,), 100.0, (1.0, 1.0)))
    env.reset(seed=0)
    while not env.pending():
        env.step({})
    agent = env.possible_agents[next(iter(env.pending()))]
    with pytest.raises(SpecError, match="actions"):
        env.step({a: 99 for a in env.possible_agents} | {agent: 99})


def test_job_kinds_are_planned_with_the_cost_model():
    from edgepool.models import build_model
    from edgepool.profile import profile_model

    fleet = Fleet.from_cluster(load_cluster(example_cluster_path("srole-edge")), CostModel())
    profile = profile_model(build_model("resnet18", meta=True), batch=1)
    kind = plan_kind(profile, fleet, 32)
    nano = fleet.index("nano")
    mb = int(kind.microbatch[nano])
    assert kind.iteration_s[nano] == pytest.approx(
        CostModel().layers_time(profile, 0, len(profile), fleet.nodes[nano].device, mb, "fwdbwd") * 32 / mb)
    assert kind.iteration_s[fleet.index("rpi5")] > kind.iteration_s[fleet.index("agx-orin-a")] * 10


# ----------------------------------------------------------------------------- baselines and the MARL adapter
def test_least_loaded_picks_the_fewest_queued_seconds_and_counts_what_it_just_placed():
    from edgepool.scheduling.srole.scenario import EarliestFinish, LeastLoaded

    job = Job(0, 0.0, 0, 10, 1e6)
    view = View(now=0.0, free_at=np.array([5.0, 0.0, 1.0]), jobs={0: job, 1: job},
                run_s={0: np.array([1.0, 100.0, 3.0]), 1: np.array([1.0, 100.0, 3.0])},
                transfer_s={0: np.zeros(3), 1: np.zeros(3)})
    assert LeastLoaded().act(view) == {0: 1, 1: 2}  # node 1 is idle; then it holds 100 s, node 2 only 1 s
    assert EarliestFinish().act(view) == {0: 2, 1: 0}  # finishes at 4 s, then node 0 at 6 s beats node 2 at 7 s


def test_shielded_agent_slots_never_execute_a_collision():
    from edgepool.scheduling.srole.marl import AgentSlots

    env = fixture_env(rate=0.05)
    slots = AgentSlots(env, seeds=[1, 2], shield=Shield(env.config.capacity_s), redirect_penalty=1.0)
    obs = slots.reset()
    assert obs.shape == (len(env.fleet), env.observation_space("nano").shape[0])
    rng = np.random.default_rng(0)
    for _ in range(200):
        obs, reward, done, infos = slots.step(np.full(len(env.fleet), int(rng.integers(2))))  # all to 1 node
        assert reward.shape == (len(env.fleet),)
    assert slots.totals["proposed_collisions"] > 5 and slots.totals["executed_collisions"] == 0
    assert slots.totals["redirected"] >= slots.totals["proposed_collisions"]


# ----------------------------------------------------------------------------- the scenario's API
@pytest.mark.slow
def test_quick_evaluate_returns_the_metrics_on_held_out_seeds(tmp_path):
    from edgepool.scheduling.srole import scenario as srole

    result = srole.evaluate(tmp_path, quick=True, seed=1)
    m = result["metrics"]
    for name in ("srole_jct_ratio_vs_greedy", "srole_jct_ratio_vs_random", "srole_collision_ratio_vs_unshielded",
                 "srole_unsafe_actions_executed"):
        assert name in m and np.isfinite(m[name])
    assert m["srole_unsafe_actions_executed"] == 0
    assert result["policies"]["srole-shielded"]["executed_collisions"] == 0
    assert not set(result["train_seeds"]) & set(result["eval_seeds"])
    assert all(p["jobs"] == result["policies"]["random"]["jobs"] > 0 for p in result["policies"].values())
    assert m["srole_jct_ratio_vs_random"] < 1.0  # even a short training beats random placement
    for path in result["plots"].values():
        assert (tmp_path / path.split("/")[-1]).stat().st_size > 1000
    assert result["collisions_per_iteration"]["srole-shielded"]


def test_scenario_refuses_a_bad_seed_or_a_folder_that_train_did_not_write(tmp_path):
    from edgepool.scheduling.srole import scenario as srole

    with pytest.raises(SpecError, match="seed"):
        srole.train(tmp_path / "t", quick=True, seed=-1)
    with pytest.raises(SpecError, match="trained"):
        srole.evaluate(tmp_path / "e", quick=True, trained=tmp_path)
    assert not (tmp_path / "t").exists()
