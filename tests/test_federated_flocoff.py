"""FlocOff: the non-IID split, MKL-CO against brute force, MCC-RA against a grid and the uniform split."""
import numpy as np
import pytest

from edgepool.errors import SpecError
from edgepool.federated.flocoff import (
    OffloadProblem, brute_force, channel_gain, communication_cost_ratio, local_search, offload_problem_from_links,
    sample_offload, solve_mcc_ra, solve_mkl_co, stratified_counts, uniform_allocation)
from edgepool.federated.partition import dirichlet_partition, label_counts


def _kl(q, p):
    q, p = q / q.sum(), p / p.sum()
    keep = q > 0
    return float((q[keep] * np.log(q[keep] / p[keep])).sum())


LABELS = np.random.default_rng(0).integers(0, 10, 3000)


def test_dirichlet_is_disjoint_complete_and_deterministic():
    parts = dirichlet_partition(LABELS, 8, alpha=0.3, seed=1, min_size=5)
    joined = np.concatenate(parts)
    assert len(joined) == len(LABELS) and len(np.unique(joined)) == len(LABELS)
    assert min(len(p) for p in parts) >= 5
    again = dirichlet_partition(LABELS, 8, alpha=0.3, seed=1, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert label_counts(LABELS, parts, 10).sum() == len(LABELS)


def test_smaller_alpha_gives_more_skew():
    p = np.bincount(LABELS, minlength=10).astype(float)

    def mean_kl(alpha):
        counts = label_counts(LABELS, dirichlet_partition(LABELS, 10, alpha, seed=2), 10)
        return np.average([_kl(c.astype(float), p) for c in counts], weights=counts.sum(axis=1))

    assert mean_kl(0.1) > mean_kl(10.0) + 0.3


def _random_problem(seed, n=5, m=2, c=4):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, (n, c)) * (rng.random((n, c)) < 0.6)
    counts[:, 0] += 1
    reachable = rng.random((n, m)) < 0.8
    reachable[np.arange(n), rng.integers(0, m, n)] = True
    cap = rng.integers(5, 60, (n, m))
    return OffloadProblem(counts=counts, reachable=reachable, cap=cap)


@pytest.mark.parametrize("seed", range(6))
def test_local_search_matches_brute_force(seed):
    problem = _random_problem(seed)
    exact, found = brute_force(problem), local_search(problem, seed=seed)
    assert found.objective == pytest.approx(exact.objective, abs=1e-9)
    assert exact.feasible and found.server_counts.sum() == found.offloaded.sum()


def test_kl_falls_on_a_skewed_case_and_small_cases_use_brute_force():
    counts = np.array([[40, 0, 0, 2], [0, 40, 1, 0], [0, 0, 40, 3], [1, 0, 0, 40], [20, 20, 0, 0]])
    plan = solve_mkl_co(OffloadProblem(counts=counts, reachable=np.ones((5, 2), bool), cap=np.full((5, 2), 100)))
    assert plan.solver == "brute force" and plan.kl_reduction_fraction > 0.5
    assert plan.kl_after < plan.kl_before


def test_two_one_class_devices_on_one_server_reach_zero_kl():
    problem = OffloadProblem(counts=np.array([[10, 0], [0, 10]]), reachable=np.ones((2, 1), bool),
                             cap=np.full((2, 1), 10))
    plan = brute_force(problem)
    assert plan.fraction.tolist() == [1.0, 1.0] and plan.kl_after == pytest.approx(0, abs=1e-6)
    assert plan.kl_before == pytest.approx(np.log(2), rel=1e-6)
    assert plan.server_counts.tolist() == [[10, 10]]


def test_caps_from_links_and_stratified_sampling():
    counts = np.array([[30, 10], [5, 25]])
    # 10 samples of 785 B within 2 s need 31,400 bit/s
    problem = offload_problem_from_links(counts, np.array([[31_400.0, 0.0], [0.0, 1e9]]), deadline_s=2.0)
    assert problem.cap[0, 0] == 10 and problem.reachable.tolist() == [[True, False], [False, True]]
    assert stratified_counts(np.array([30, 10]), 10).tolist() == [8, 2]
    plan = solve_mkl_co(problem)
    labels = np.array([0] * 30 + [1] * 10 + [0] * 5 + [1] * 25)
    devices = [np.arange(40), np.arange(40, 70)]
    received = sample_offload(plan, devices, labels, seed=0)
    for j, idx in enumerate(received):
        assert np.bincount(labels[idx], minlength=2).tolist() == plan.server_counts[j].tolist()
        assert len(np.unique(idx)) == len(idx)


def _energy(b, bits, gain, t, n0=10 ** (-20.4)):
    with np.errstate(over="ignore"):  # a tiny band needs infinite power: never the minimum
        return t * n0 * b / gain * (2 ** (bits / (b * t)) - 1)


@pytest.mark.parametrize("seed", range(4))
def test_mcc_ra_beats_uniform_and_meets_constraints(seed):
    rng = np.random.default_rng(seed)
    n, w, t, p_max = 6, 1e6, 1.0, 0.2
    bits, gain = rng.uniform(1e5, 2e6, n), channel_gain(rng.uniform(50, 500, n))
    opt, uni = solve_mcc_ra(bits, gain, w, t, p_max), uniform_allocation(bits, gain, w, t, p_max)
    assert opt.feasible
    assert opt.total_energy_j <= uni.total_energy_j * (1 + 1e-9)
    assert opt.bandwidth_hz.sum() <= w * (1 + 1e-9)
    assert (opt.time_s <= t * (1 + 1e-6)).all() and (opt.power_w <= p_max * (1 + 1e-9)).all()
    assert communication_cost_ratio(opt, uni) <= 1 + 1e-9


def test_mcc_ra_matches_a_grid_search_for_two_devices():
    bits, gain, w, t = np.array([4e6, 1e6]), channel_gain(np.array([400.0, 100.0])), 1e6, 1.0
    opt = solve_mcc_ra(bits, gain, w, t, p_max_w=10.0)
    grid = np.linspace(1e3, w - 1e3, 20_001)
    energies = _energy(grid, bits[0], gain[0], t) + _energy(w - grid, bits[1], gain[1], t)
    assert opt.total_energy_j <= energies.min() * 1.01
    assert opt.total_energy_j >= energies.min() * (1 - 1e-6)


def test_mcc_ra_reports_an_impossible_deadline():
    bits, gain = np.array([5e7, 5e7]), channel_gain(np.array([500.0, 500.0]))
    opt = solve_mcc_ra(bits, gain, 1e6, 1.0, 0.2)
    assert not opt.feasible and (opt.time_s > 1.0).all()


@pytest.mark.parametrize("call, field", [
    (lambda: dirichlet_partition(LABELS, 4, alpha=0.0, seed=0), "alpha"),
    (lambda: dirichlet_partition(LABELS, 0, alpha=1.0, seed=0), "n_parts"),
    (lambda: OffloadProblem(counts=np.ones((2, 3), int), reachable=np.array([[True], [False]]),
                            cap=np.ones((2, 1))), "reachable"),
    (lambda: OffloadProblem(counts=np.ones((2, 3), int), reachable=np.ones((2, 1), bool), cap=np.ones((2, 1)),
                            levels=(0.5, 2.0)), "levels"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(SpecError) as error:
        call()
    assert error.value.field == field
