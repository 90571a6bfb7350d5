"""The RL placement policy: the environment's rules and rewards, and what a trained PPO places."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from edgepool.catalog import get_device
from edgepool.precision.cost import CostTable, UnitCost
from edgepool.precision.placement import CPU, Target
from edgepool.precision.problem import PlacementProblem, all_cpu
from edgepool.precision.problem import proxy_range
from edgepool.precision.rl import PlacementEnv, RLPolicy, rollout, train_rl

INT8, FP16 = Target("accelerator", "int8"), Target("accelerator", "fp16")
SENSITIVE = {2, 5}  # units whose int8 costs ten times the others'


def fixture_problem(n: int = 8, restrict: bool = False, work: float = 1.0) -> PlacementProblem:
    """TEST FIXTURE, not measurements: made-up FLOPs and bytes on a catalog phone, a proxy table, and a
    deterministic `measure` (0.95 minus 1.5x the int8 proxies, plus the fp16 ones). At a 1-point floor
    all-int8 fails, all-fp16 passes and int8 outside the sensitive units passes. `work` scales FLOPs and
    bytes (small: hand-overs cost more than units)."""
    device = get_device("phone-snapdragon-8-gen-3")
    units = [UnitCost(f"u{i}", flops=(60 + 40 * (i % 3)) * 1e6 * work, param_bytes=(0.5 + 0.25 * (i % 4)) * 1e6 * work,
                      input_bytes=200e3 * work, output_bytes=200e3 * work) for i in range(n)]
    costs = CostTable.build(device, units)
    int8 = [0.01 if i in SENSITIVE else 0.001 for i in range(n)]
    proxy = [{"fp32": 0.0, "int8": p, "fp16": 0.0001} for p in int8]

    def measure(precisions: tuple[str, ...]) -> float:
        scale = {"fp32": 0.0, "int8": 1.5, "fp16": 1.0}
        return 0.95 - sum(scale[p] * proxy[i][p] for i, p in enumerate(precisions))

    allowed = None
    if restrict:  # unit 0 stays on the CPU, unit 3 has no int8
        allowed = [[CPU] if i == 0 else [CPU, FP16] if i == 3 else list(costs.targets) for i in range(n)]
    return PlacementProblem(costs, proxy, [{} for _ in range(n)], 0.95, 1.0, measure, allowed)


def respects_targets(problem: PlacementProblem, targets) -> bool:
    return len(targets) == problem.num_units and all(t in problem.targets_of(i) for i, t in enumerate(targets))


@pytest.fixture(scope="module")
def trained():
    problem = fixture_problem(restrict=True)
    return problem, train_rl(problem, timesteps=6_000, seed=0)


def test_env_passes_gymnasium_check():
    for restrict in (False, True):
        check_env(PlacementEnv(fixture_problem(restrict=restrict)), skip_render_check=True)


def test_rewards_add_up_to_the_cost_model_time_and_rules_hold():
    problem = fixture_problem(restrict=True)
    env = PlacementEnv(problem)
    cpu_time = problem.time_of(all_cpu(problem))
    rng = np.random.default_rng(0)
    for episode in range(30):
        obs, _ = env.reset(seed=episode)
        assert env.observation_space.contains(obs)
        total, done = 0.0, False
        while not done:
            obs, reward, done, truncated, _ = env.step(int(rng.integers(env.k)))
            assert env.observation_space.contains(obs) and not truncated
            total += reward
        assert respects_targets(problem, env.placement)
        assert problem.proxy_of(env.placement) <= env.budget + 1e-12
        assert -total * env.reward_scale == pytest.approx(problem.time_of(env.placement), rel=1e-9)


def test_invalid_and_over_budget_actions_become_the_cpu():
    problem = fixture_problem(restrict=True)
    env = PlacementEnv(problem)
    env.reset(options={"budget": 0.0015})
    # unit 0 allows only the CPU; units 1, 2: int8 fits (0.001), then int8 at 0.01 does not
    for action, expected, substituted in ((1, CPU, True), (1, INT8, False), (1, CPU, True), (1, CPU, True)):
        _, _, _, _, info = env.step(action)
        assert env.placement[-1] == expected and info["substituted"] == substituted  # unit 3 has no int8
    env.reset(options={"budget": 0.0015})
    for _ in range(3):
        env.step(0)
    env.step(2)
    assert env.placement[-1] == FP16


def test_budgets_cover_zero_the_maximum_and_between():
    problem = fixture_problem()
    env = PlacementEnv(problem)
    low, high = proxy_range(problem)
    env.reset(seed=1)
    budgets = [env.draw_budget() for _ in range(500)]
    assert 0.0 in budgets and high in budgets
    between = [b for b in budgets if 0 < b < high]
    assert len(between) > 300 and min(between) >= low * (1 - 1e-9)
    observed = {float(env.reset(options={"budget": b})[0][-(env.k + 2)]) for b in (0.0, low, high)}
    assert observed == {0.0, 1.0}  # the budget's log-scale position: 0 (zero and the smallest), 1 (the max)


def test_trained_policy_respects_restrictions_floor_and_beats_all_cpu(trained):
    problem, model = trained
    cpu_time = problem.time_of(all_cpu(problem))
    low, high = proxy_range(problem)
    for budget in (0.0, low, 0.003, high):
        assert respects_targets(problem, rollout(model, problem, budget))
    assert rollout(model, problem, 0.0) == all_cpu(problem)
    placement = RLPolicy(model=model).place(problem)
    assert placement.policy == "rl (ppo)"
    assert respects_targets(problem, placement.targets)
    assert problem.meets_floor(placement.targets)
    # all-fp16 beyond unit 0 keeps the floor at a fifth of the all-CPU time: a trained agent finds that much
    assert problem.time_of(placement.targets) < 0.5 * cpu_time


def test_policy_never_slower_than_all_cpu():
    class Hopper:  # a poor agent: to the accelerator (fp16, keeps the floor) and back on every other unit
        action_space = gym.spaces.Discrete(3)

        def predict(self, obs, deterministic=True):
            return (2 if round(float(obs[0]) * 8) % 2 else 0), None

    problem = fixture_problem(work=1e-3)  # tiny units: every hand-over costs more than it saves
    hops = rollout(Hopper(), problem, proxy_range(problem)[1])
    assert problem.meets_floor(hops) and problem.time_of(hops) > problem.time_of(all_cpu(problem))
    assert RLPolicy(model=Hopper()).place(problem).targets == all_cpu(problem)


def test_training_is_seeded_and_restores_torch_threads():
    problem = fixture_problem(restrict=True)
    threads = torch.get_num_threads()
    a, b = (train_rl(problem, timesteps=512, seed=3, n_steps=256) for _ in range(2))
    assert torch.get_num_threads() == threads
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(pa, pb)
    low, high = proxy_range(problem)
    assert all(rollout(a, problem, x) == rollout(b, problem, x) for x in (low, 0.003, high))


def test_given_model_must_match_the_devices_targets(trained):
    _, model = trained

    class Two:
        action_space = gym.spaces.Discrete(2)

    with pytest.raises(ValueError, match="targets"):
        RLPolicy(model=Two()).place(fixture_problem())
    policy = RLPolicy(model=model)
    policy.place(fixture_problem(n=5))  # another model of the same device: reused, not retrained
    assert policy.last_model is model
