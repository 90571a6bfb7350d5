"""MoE²: the discrete monotonic optimization against exhaustive search, the baselines' budgets, the queries, the
simulated costs, the gate, and (slow) the real SmolLM2 experts and the scenario's API end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgepool.errors import SpecError
from edgepool.scheduling.moe2 import gate as gating
from edgepool.scheduling.moe2.experts import ExpertTable, Variant, cached_or_measured, measure, simulated_costs
from edgepool.scheduling.moe2.monotonic import Problem, dmo, exhaustive, greedy, random_feasible
from edgepool.scheduling.moe2.queries import CATEGORIES, build_queries, prompt


def random_problem(seed: int, n: int, strict: bool = True, tight: float = 0.35) -> Problem:
    """TEST FIXTURE: a random monotone instance. strict: Q(S) = 1 - prod(1 - a_k) + 0.01 sum(b_k) (strictly
    increasing); else a weighted coverage of 6 items (monotone with many ties)."""
    rng = np.random.default_rng(seed)
    energy, latency = rng.uniform(0.1, 1.0, n), rng.uniform(0.001, 0.02, n)
    if strict:
        a, b = rng.uniform(0.05, 0.6, n), rng.uniform(0, 1, n)
        quality = lambda s: float(1 - np.prod(1 - a[list(s)]) + 0.01 * b[list(s)].sum()) if s else 0.0  # noqa
    else:
        covers, weights = rng.random((n, 6)) < 0.3, rng.integers(1, 4, 6)
        quality = lambda s: float(weights[covers[list(s)].any(0)].sum()) if s else 0.0  # noqa: E731
    return Problem(energy=energy, latency=latency, energy_budget=tight * energy.sum(),
                   latency_budget=float(np.quantile(latency, 0.8)), quality=quality)


@pytest.mark.parametrize("seed", range(8))
def test_dmo_matches_exhaustive_exactly(seed):
    calls = {"dmo": 0, "exhaustive": 0}
    for n, tight in ((6, 0.3), (8, 0.45), (10, 0.25), (10, 0.6)):
        problem = random_problem(seed, n, strict=True, tight=tight)
        best, found = exhaustive(problem), dmo(problem)
        assert found.value == best.value and found.subset == best.subset
        calls["dmo"] += found.evaluations
        calls["exhaustive"] += best.evaluations
    assert calls["dmo"] < calls["exhaustive"] / 2  # the bounds cut most of the lattice


@pytest.mark.parametrize("seed", range(6))
def test_dmo_matches_exhaustive_with_ties(seed):
    problem = random_problem(100 + seed, 9, strict=False)
    best, found = exhaustive(problem), dmo(problem)
    assert found.value == best.value and found.energy == pytest.approx(best.energy)


@pytest.mark.parametrize("seed", range(4))
def test_every_search_respects_the_budgets(seed):
    problem = random_problem(200 + seed, 10, tight=0.2)
    rng = np.random.default_rng(seed)
    picks = [exhaustive(problem), dmo(problem), greedy(problem)] + [random_feasible(problem, rng) for _ in range(5)]
    for pick in picks:
        assert pick.energy <= problem.energy_budget + 1e-12
        assert pick.latency <= problem.latency_budget
        assert all(problem.latency[i] <= problem.latency_budget for i in pick.subset)
    assert picks[1].value >= picks[2].value  # the exact search is never beaten by greedy on a monotone Q


def test_random_and_queries_reproducible_from_seed():
    problem = random_problem(7, 10)
    a = [random_feasible(problem, np.random.default_rng(3)).subset for _ in range(1)]
    b = [random_feasible(problem, np.random.default_rng(3)).subset for _ in range(1)]
    assert a == b
    (q1, s1), (q2, _), (q3, _) = build_queries(6, seed=1), build_queries(6, seed=1), build_queries(6, seed=2)
    assert q1 == q2 and q1 != q3
    assert [sum(q.category == c for q in q1) for c in CATEGORIES] == [6] * len(CATEGORIES)
    for q in q1:
        assert 0 <= q.answer < len(q.choices)
        if q.category == "arithmetic":
            a_, op, b_ = q.question.split(": ")[1].rstrip(" =").split(" ")
            assert int(a_) + (int(b_) if op == "+" else -int(b_)) == q.answer
    few, zero = prompt(q1[0], s1[q1[0].category], "few-shot"), prompt(q1[0], s1[q1[0].category], "zero-shot")
    assert few.endswith(zero.split("\n\n", 1)[1]) and len(few) > len(zero)


def test_bad_input_is_a_spec_error():
    with pytest.raises(SpecError, match="per_category"):
        build_queries(3)
    with pytest.raises(SpecError):
        Problem(energy=np.ones(3), latency=np.ones(4), energy_budget=1.0, latency_budget=1.0, quality=len)
    queries, specs = build_queries(4)
    with pytest.raises(SpecError, match="precision"):
        measure(queries[:2], specs, [Variant("fp64", "zero-shot", 30)])
    with pytest.raises(SpecError, match="prompt_style"):
        prompt(queries[0], specs[queries[0].category], "chain-of-thought")


def test_repair_never_hurts_on_a_non_monotone_quality():
    """TEST FIXTURE: a quality with a penalty for pairs (not monotone): repair may only improve DMO's answer."""
    for seed in range(5):
        rng = np.random.default_rng(300 + seed)
        a, clash = rng.uniform(0.1, 1, 9), rng.uniform(0, 0.5, (9, 9))
        quality = lambda s: float(a[list(s)].sum() - clash[np.ix_(list(s), list(s))].sum() / 2) if s else 0.0  # noqa
        problem = Problem(energy=rng.uniform(0.1, 1, 9), latency=rng.uniform(0, 1, 9), energy_budget=2.0,
                          latency_budget=0.9, quality=quality)
        plain, repaired, best = dmo(problem), dmo(problem, repair=True), exhaustive(problem)
        assert plain.value <= repaired.value <= best.value
        assert problem.feasible(repaired.subset)


def test_scorer_serves_the_mixture_and_selects_on_a_monotone_quality():
    from edgepool.scheduling.moe2.scenario import Scorer, monotone_violations

    rng = np.random.default_rng(0)
    n, k, c = 30, 6, 3
    weights = rng.dirichlet(np.ones(k), n)
    probs = rng.dirichlet(np.ones(c), (n, k)).astype(np.float32)
    answers = rng.integers(0, c, n)
    scorer = Scorer(weights, probs, answers)
    expected = ((weights[:, [0, 2], None] * probs[:, [0, 2]]).sum(1).argmax(1) == answers).mean()
    assert scorer.accuracy((0, 2)) == pytest.approx(expected)
    assert scorer.accuracy(()) == 0.0 and scorer.objective(()) == 0.0
    assert monotone_violations(scorer.objective, k, np.random.default_rng(1), 300) == 0.0


def fixture_table(n_queries: int = 8) -> ExpertTable:
    """TEST FIXTURE: token counts only (costs depend on nothing else)."""
    variants = [Variant("fp32", "few-shot", 30), Variant("int8", "few-shot", 30), Variant("fp32", "zero-shot", 24)]
    tokens = np.tile(np.array([[60, 60, 25]]), (n_queries, 1))
    return ExpertTable(variants=variants, categories=["parity"] * n_queries, answers=np.zeros(n_queries, int),
                       probs=np.full((n_queries, 3, 2), 0.5, np.float32), tokens=tokens, key="fixture",
                       seconds=0.0, source="fixture")


def test_simulated_costs_follow_the_catalog():
    from edgepool.scheduling.moe2.scenario import _fleet

    fleet = _fleet()
    table = fixture_table()
    orin, orin_slow, gpu, gw = (fleet.index(n) for n in ("orin-1", "orin-8", "rtx4090-1", "gateway"))
    e_orin, l_orin = simulated_costs(table, fleet, [orin, orin, orin], gw)
    e_gpu, l_gpu = simulated_costs(table, fleet, [gpu, gpu, gpu], gw)
    _, l_slow = simulated_costs(table, fleet, [orin_slow] * 3, gw)
    assert np.all(e_orin > 0) and np.all(l_orin > fleet.latency[gw, orin])  # compute plus the trip
    assert np.all(l_gpu < l_orin) and np.all(l_slow > l_orin)  # a 4090 beats an Orin; 15 W mode is slower
    assert np.all(l_orin[:, 1] < l_orin[:, 0])  # int8 moves a quarter of fp32's bytes, at a higher peak
    assert np.all(e_orin[:, 2] < e_orin[:, 0])  # fewer tokens, fewer layers


def test_gate_training_is_seeded_and_fits_the_mixture():
    rng = np.random.default_rng(0)
    n, k = 64, 4
    x = rng.normal(size=(n, 8)).astype(np.float32)
    answers = rng.integers(0, 2, n)
    probs = np.full((n, k, 2), 0.5, np.float32)
    good = (x[:, 0] > 0).astype(int)  # expert `good` knows the answer where x0 says so: the gate must learn it
    probs[np.arange(n), good, answers] = 0.95
    probs[np.arange(n), good, 1 - answers] = 0.05
    cfg = gating.GateConfig(epochs=80)
    g1, g2 = gating.train_gate(x, probs, answers, 0, cfg), gating.train_gate(x, probs, answers, 0, cfg)
    w1, w2 = gating.gate_weights(g1, x), gating.gate_weights(g2, x)
    assert np.array_equal(w1, w2)
    assert (w1.argmax(1) == good).mean() > 0.9
    assert gating.subset_loss(w1, probs, answers, [0, 1]) < gating.subset_loss(w1, probs, answers, [2, 3])


@pytest.mark.slow
def test_real_experts_on_a_handful_of_queries(tmp_path):
    queries, specs = build_queries(4, seed=0)
    queries = [q for i, q in enumerate(queries) if i % 4 == 0]  # 4 queries, one of each category
    variants = [Variant("fp32", "few-shot", 30), Variant("int8", "zero-shot", 24)]
    table, reused = cached_or_measured(tmp_path / "t.npz", queries, specs, variants)
    assert not reused
    np.testing.assert_allclose(table.probs.sum(-1), 1.0, atol=1e-4)  # a distribution over each query's choices
    assert np.all(table.tokens[:, 0] > table.tokens[:, 1])  # few-shot prompts are longer
    again, reused = cached_or_measured(tmp_path / "t.npz", queries, specs, variants)
    assert reused and np.array_equal(again.probs, table.probs)


@pytest.mark.slow
def test_scenario_api_end_to_end(tmp_path):
    from edgepool.scheduling.moe2 import scenario as moe2

    trained = moe2.train(tmp_path, quick=True, seed=0)  # measures the quick table (a few real queries)
    assert trained["scenario"] == "moe2" and trained["train_seeds"] == [0] and not trained["table_reused"]
    result = moe2.evaluate(tmp_path, quick=True, seed=0, trained=tmp_path)  # reuses the table just measured
    json.dumps(result)
    metrics = result["metrics"]
    assert {"moe2_fraction_of_optimum", "moe2_search_speedup_vs_exhaustive"} <= set(metrics)
    for name in ("dmo", "exhaustive", "greedy", "random", "best_single"):
        assert result["policies"][name]["budget_violations"] == 0
    assert result["policies"]["dmo"]["evaluations"] < result["policies"]["exhaustive"]["evaluations"]
    assert all(__import__("pathlib").Path(p).is_file() for p in result["plots"].values())
    assert metrics["moe2_monotone_violation_rate_objective"] == 0.0
    assert metrics["moe2_selection_fraction_of_optimum"] == pytest.approx(1.0)  # exact on a monotone Q
    again = moe2.evaluate(tmp_path, quick=True, seed=0, trained=tmp_path)  # same seed: same figures
    for a, b in zip(again["instances"], result["instances"]):
        for name in a["picks"]:  # wall times differ; choices and accuracies may not
            assert a["picks"][name].get("subset") == b["picks"][name].get("subset")
            assert a["picks"][name]["test_accuracy"] == b["picks"][name]["test_accuracy"]
    assert result["simulated"] and result["measured"]
