"""MoE² (arXiv 2501.09410): unlike LLM experts on unlike edge servers; per query category, a gate weighs the
experts and a discrete monotonic optimization picks the subset that answers under energy and latency budgets.

The scenario: `examples/clusters/moe2-servers.yaml` (8 Jetson AGX Orins in four power modes, 4 RTX 4090s, a
gateway), 12 experts = SmolLM2-135M-Instruct in 3 numeric formats x 2 prompt styles x 2 depths (`experts`),
each on its own server; queries of four categories with real ground truth (`queries`). Each expert's answers are
measured on this CPU (cached under `out`); its energy and latency per query are simulated from the catalog.
The gate (`gate`) is trained once on the full expert set (train split) and renormalized for subsets. Selection
per (category, budget level) is run by `monotonic.dmo` against exhaustive search, greedy (quality per joule) and
random feasible subsets on the same selection objective; all are scored on the held-out test split.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgepool.errors import SpecError
from edgepool.scheduling.moe2 import gate as gating
from edgepool.scheduling.moe2.experts import PRECISIONS, ExpertTable, Variant, cached_or_measured, simulated_costs
from edgepool.scheduling.moe2.monotonic import Problem, Selection, dmo, exhaustive, greedy, random_feasible
from edgepool.scheduling.moe2.queries import CATEGORIES, PROMPT_STYLES, build_queries
from edgepool.scheduling.scenarios import Progress, tick

SCENARIO = "moe2"
CLUSTER = "moe2-servers"
GATEWAY = "gateway"
DEPTHS = (30, 24)  # all decoder layers, or an early exit after 24
VARIANTS = tuple(Variant(p, s, d) for p in PRECISIONS for s in PROMPT_STYLES for d in DEPTHS)
PLACEMENT_STRIDE = 5  # expert k sits on server (5 k) mod 12: every format and style lands on both device kinds
# budget levels per category: (energy budget as a fraction of all experts' summed energy per query,
# latency budget as a quantile of the experts' latencies per query)
LEVELS = ((0.10, 0.50), (0.20, 0.75), (0.35, 0.90))
RANDOM_DRAWS = 10
MONOTONE_PAIRS = 1000  # random (S, S + k) pairs per category for the monotonicity check



@dataclass(frozen=True)
class Budget:
    per_category: int  # queries per category (half train, half test)
    timing_repeats: int  # each search is timed this many times; the fastest counts
    gate_checks: int  # subsets on which a gate retrained from scratch is compared with the renormalized one


BUDGETS = {True: Budget(per_category=6, timing_repeats=2, gate_checks=3),
           False: Budget(per_category=64, timing_repeats=3, gate_checks=12)}



# ----------------------------------------------------------------------------- data: queries, table, features
@dataclass
class Prepared:
    table: ExpertTable
    reused: bool
    x: np.ndarray  # [Q, F] gate features (true category)
    x_predicted: np.ndarray  # [Q, F] gate features with the category the MiniLM classifier predicts
    category_accuracy: float  # of that classifier on the test split
    train: np.ndarray  # [Q] bool
    energy: np.ndarray  # [Q, K] J, simulated
    latency: np.ndarray  # [Q, K] s, simulated
    placement: list[str]  # server per expert


def _fleet():
    from edgepool.cluster import example_cluster_path, load_cluster
    from edgepool.costmodel import CostModel
    from edgepool.scheduling.fleet import Fleet

    path = example_cluster_path(CLUSTER)
    if path is None:
        raise SpecError("cluster", CLUSTER, f"examples/clusters/{CLUSTER}.yaml present in the checkout")
    return Fleet.from_cluster(load_cluster(path), CostModel())


def prepare(out: Path, quick: bool, seed: int, progress: Progress | None = None,
            trained: Path | None = None) -> Prepared:
    """Queries, the measured table (reused from `out`, or from the `trained` folder, when it matches), MiniLM
    features and simulated costs."""
    budget = BUDGETS[bool(quick)]
    queries, specs = build_queries(budget.per_category, seed=seed)
    tick(progress, "experts: measuring (or reading the cache)", 0, None)
    name = f"moe2_table_{'quick' if quick else 'full'}_seed{seed}.npz"
    also = Path(trained) / name if trained is not None and Path(trained).is_dir() else None
    table, reused = cached_or_measured(Path(out) / name, queries, specs, list(VARIANTS), progress, also=also)
    categories = np.array(table.categories)
    rng = np.random.default_rng(seed)
    train = np.zeros(len(queries), dtype=bool)
    for c in CATEGORIES:  # half of each category trains the gate, the other half is held out
        idx = np.flatnonzero(categories == c)
        train[rng.permutation(idx)[: len(idx) // 2]] = True
    tick(progress, "gate: MiniLM embeddings", 0, None)
    emb = gating.embed_queries([q.question for q in queries])
    predicted = _nearest_centroid(emb, categories, train)
    fleet = _fleet()
    servers = [i for i, n in enumerate(fleet.names) if n != GATEWAY]
    if len(servers) < len(VARIANTS):
        raise SpecError("cluster.devices", len(servers), f"at least {len(VARIANTS)} servers besides the gateway")
    placement = [servers[(PLACEMENT_STRIDE * k) % len(servers)] for k in range(len(VARIANTS))]
    energy, latency = simulated_costs(table, fleet, placement, fleet.index(GATEWAY))
    return Prepared(table=table, reused=reused, x=gating.features(emb, list(categories)),
                    x_predicted=gating.features(emb, list(predicted)),
                    category_accuracy=float((predicted == categories)[~train].mean()), train=train,
                    energy=energy, latency=latency, placement=[fleet.names[s] for s in placement])


def _nearest_centroid(emb: np.ndarray, categories: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The category whose mean train embedding is closest in cosine: MiniLM classifying requests."""
    centroids = np.stack([emb[train & (categories == c)].mean(0) for c in CATEGORIES])  # [C, 384]
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return np.array(CATEGORIES)[(emb @ centroids.T).argmax(1)]


# ----------------------------------------------------------------------------- train
def _train_gate(prep: Prepared, seed: int, subset: list[int] | None = None):
    t = prep.table
    return gating.train_gate(prep.x[prep.train], t.probs[prep.train], t.answers[prep.train], seed=seed,
                             subset=subset)


def train(out: Path, *, quick: bool = False, seed: int = 0, progress: Progress | None = None,
          _prepared: Prepared | None = None) -> dict:
    """Measure (or reuse) the expert table and train the gate on the full expert set; save both under `out`."""
    import torch

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prep = _prepared or prepare(out, quick, seed, progress)
    tick(progress, "gate: training on the full expert set", 0, 1)
    gate = _train_gate(prep, seed)
    t = prep.table
    oof = np.zeros(t.probs.shape[:2], dtype=np.float32)  # [Q, K], filled on the train split
    oof[prep.train] = gating.out_of_fold_weights(prep.x[prep.train], t.probs[prep.train], t.answers[prep.train],
                                                 seed)
    saved = out / "moe2_gate.pt"
    torch.save({"state_dict": gate.state_dict(), "features": prep.x.shape[1], "experts": len(VARIANTS),
                "table_key": prep.table.key, "seed": seed, "quick": bool(quick),
                "out_of_fold": torch.as_tensor(oof)}, saved)
    tick(progress, "gate: training on the full expert set", 1, 1)
    return {"scenario": SCENARIO, "saved": str(saved), "train_seeds": [seed], "seconds": time.perf_counter() - start,
            "table_reused": prep.reused, "table_seconds": prep.table.seconds,
            "train_queries": int(prep.train.sum())}


def _load_gate(path: Path, prep: Prepared):
    import torch

    file = path / "moe2_gate.pt" if path.is_dir() else path
    if not file.is_file():
        raise SpecError("trained", str(path), "a folder holding moe2_gate.pt from `train`")
    blob = torch.load(file, weights_only=True)
    if blob["table_key"] != prep.table.key:
        raise SpecError("trained", str(path), "a gate trained on the same queries and experts (same quick and seed)")
    gate = gating.Gate(blob["features"], blob["experts"])
    gate.load_state_dict(blob["state_dict"])
    return gate.eval(), blob["out_of_fold"].numpy()


# ----------------------------------------------------------------------------- quality of a subset
class Scorer:
    """One category's queries seen through the gate: the served accuracy of a subset, and the selection objective.

    Served answer of subset S: the argmax of the gate's mixture renormalized over S (renormalizing does not move
    the argmax). Its accuracy is not monotone in S (a weak expert that joins can flip answers), so selection
    maximises a quality that is monotone by construction, the gate-weighted best-of:
        Q(S) = mean_q max_{k in S} w_k(q) p_k(y_q | q),
    the largest gate-weighted probability of the truth among the chosen experts (0 for the empty set)."""

    def __init__(self, weights: np.ndarray, probs: np.ndarray, answers: np.ndarray):
        self.wp = weights[:, :, None] * probs  # [N, K, C]
        self.w_true = self.wp[np.arange(len(answers)), :, answers]  # [N, K]
        self.answers = answers

    def accuracy(self, subset: tuple[int, ...]) -> float:
        if not subset:
            return 0.0
        mix = self.wp[:, list(subset)].sum(1)  # [N, C]
        return float((mix.argmax(1) == self.answers).mean())

    def objective(self, subset: tuple[int, ...]) -> float:
        if not subset:
            return 0.0
        return float(self.w_true[:, list(subset)].max(1).mean())


def _timed(search: Callable[[], Selection], repeats: int) -> Selection:
    runs = [search() for _ in range(repeats)]
    best = min(runs, key=lambda s: s.seconds)
    return best


def monotone_violations(quality: Callable[[tuple[int, ...]], float], k: int, rng: np.random.Generator,
                        pairs: int) -> float:
    """Share of random (S, S + {j}) pairs whose quality drops when j joins (0 for a monotone quality)."""
    drops = 0
    for _ in range(pairs):
        subset = tuple(np.flatnonzero(rng.random(k) < 0.5).tolist())
        rest = [j for j in range(k) if j not in subset]
        if not rest:
            continue
        j = int(rng.choice(rest))
        drops += quality(tuple(sorted(subset + (j,)))) < quality(subset) - 1e-12
    return drops / pairs


# ----------------------------------------------------------------------------- evaluate
def evaluate(out: Path, *, quick: bool = False, seed: int = 0, trained: Path | None = None,
             progress: Progress | None = None) -> dict:
    """Select experts for every (category, budget level) with DMO and the baselines on the same objective, score
    each pick on the held-out split, test the gate's subset property, draw the plots. Same seed, same result
    (wall times and the speedup aside)."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget = BUDGETS[bool(quick)]
    prep = prepare(out, quick, seed, progress, trained=trained)
    if trained is None:
        trained = Path(train(out, quick=quick, seed=seed, progress=progress, _prepared=prep)["saved"])
    gate, w_train = _load_gate(Path(trained), prep)  # w_train: out-of-fold weights on the train split
    t = prep.table
    w_test = gating.gate_weights(gate, prep.x_predicted)  # held out: the category MiniLM predicts
    categories = np.array(t.categories)
    k = len(VARIANTS)
    rng = np.random.default_rng(seed + 1)  # the random baseline's and the monotonicity check's draws
    rows, violations = [], {}
    instances = [(c, lvl) for c in CATEGORIES for lvl in range(len(LEVELS))]
    for n, (c, lvl) in enumerate(instances):
        tick(progress, "selection: DMO vs exhaustive, greedy, random", n, len(instances))
        tr, te = prep.train & (categories == c), ~prep.train & (categories == c)
        select = Scorer(w_train[tr], t.probs[tr], t.answers[tr])
        held = Scorer(w_test[te], t.probs[te], t.answers[te])
        e, lat = prep.energy[tr].mean(0), prep.latency[tr].mean(0)  # per query, simulated
        e_frac, l_q = LEVELS[lvl]
        problem = Problem(energy=e, latency=lat, energy_budget=e_frac * e.sum(),
                          latency_budget=float(np.quantile(lat, l_q)), quality=select.objective)
        picks = {"exhaustive": _timed(lambda: exhaustive(problem), budget.timing_repeats),
                 "dmo": _timed(lambda: dmo(problem), budget.timing_repeats),
                 "greedy": greedy(problem)}
        served = Problem(energy=e, latency=lat, energy_budget=problem.energy_budget,
                         latency_budget=problem.latency_budget, quality=select.accuracy)
        picks["exhaustive_served"] = exhaustive(served)  # optimises the (non-monotone) served accuracy itself
        oracle = exhaustive(Problem(energy=e, latency=lat, energy_budget=problem.energy_budget,
                                    latency_budget=problem.latency_budget, quality=held.accuracy))
        singles = [(i,) for i in range(k) if problem.feasible((i,))]
        picks["best_single"] = max((Selection(s, select.objective(s), float(e[s[0]]), float(lat[s[0]]), 0, 0.0)
                                    for s in singles), key=lambda s: (s.value, -s.energy),
                                   default=Selection((), 0.0, 0.0, 0.0, 0, 0.0))
        randoms = [random_feasible(problem, rng) for _ in range(RANDOM_DRAWS)]
        row = {"category": c, "level": lvl, "energy_budget_j": problem.energy_budget,
               "latency_budget_s": problem.latency_budget, "oracle_test_accuracy": oracle.value, "picks": {}}
        for name, sel in picks.items():
            row["picks"][name] = _pick_row(sel, select, held, problem, t.variants)
        row["picks"]["random"] = {
            "test_accuracy": float(np.mean([held.accuracy(r.subset) for r in randoms])),
            "selection_objective": float(np.mean([r.value for r in randoms])),
            "energy_j": float(np.mean([r.energy for r in randoms])),
            "latency_s": float(np.mean([r.latency for r in randoms])),
            "feasible": all(problem.feasible(r.subset) for r in randoms), "draws": RANDOM_DRAWS}
        all_k = tuple(range(k))
        row["picks"]["all_experts"] = _pick_row(Selection(all_k, select.objective(all_k), float(e.sum()),
                                                          float(lat.max()), 0, 0.0), select, held, problem,
                                                t.variants)
        rows.append(row)
        if lvl == 0:
            pairs = MONOTONE_PAIRS if not quick else 200
            violations[c] = {"served_accuracy": monotone_violations(select.accuracy, k, rng, pairs),
                             "selection_objective": monotone_violations(select.objective, k, rng, pairs)}
    tick(progress, "selection: DMO vs exhaustive, greedy, random", len(instances), len(instances))
    gate_check = _gate_property(prep, gate, rows, seed, budget.gate_checks, progress)
    from edgepool.scheduling.moe2.plots import draw_plots

    plots = draw_plots(out, prep, w_test, rows, progress)
    return _result(prep, rows, violations, gate_check, plots, quick, seed, time.perf_counter() - start)


def _pick_row(sel: Selection, select: Scorer, held: Scorer, problem: Problem, variants: list[Variant]) -> dict:
    return {"subset": [variants[i].name for i in sel.subset], "size": len(sel.subset),
            "test_accuracy": held.accuracy(sel.subset), "selection_objective": select.objective(sel.subset),
            "energy_j": sel.energy, "latency_s": sel.latency, "feasible": problem.feasible(sel.subset),
            "evaluations": sel.evaluations, "seconds": sel.seconds, "indices": list(sel.subset)}


def _gate_property(prep: Prepared, gate, rows: list[dict], seed: int, checks: int, progress) -> dict:
    """MoE²'s claim, tested: the full-set gate renormalized over S against a gate retrained on S alone."""
    t, categories = prep.table, np.array(prep.table.categories)
    subsets = []
    for row in rows:
        s = tuple(row["picks"]["dmo"]["indices"])
        if len(s) >= 2 and s not in subsets:
            subsets.append(s)
    subsets = subsets[:checks]
    w_tr_full = gating.gate_weights(gate, prep.x)
    w_te_full = gating.gate_weights(gate, prep.x_predicted)
    diffs_loss, diffs_acc = [], []
    for n, s in enumerate(subsets):
        tick(progress, "gate: retraining on chosen subsets", n, len(subsets))
        retrained = _train_gate(prep, seed, subset=list(s))
        w_tr_re, w_te_re = gating.gate_weights(retrained, prep.x), gating.gate_weights(retrained, prep.x_predicted)
        tr, te = prep.train, ~prep.train
        loss_full = gating.subset_loss(w_tr_full[tr], t.probs[tr], t.answers[tr], list(s))
        loss_re = gating.subset_loss(w_tr_re[tr], t.probs[tr], t.answers[tr], list(s))
        acc = []
        for w in (w_te_full, w_te_re):
            accs = [Scorer(w[te & (categories == c)], t.probs[te & (categories == c)],
                           t.answers[te & (categories == c)]).accuracy(s) for c in CATEGORIES]
            acc.append(float(np.mean(accs)))
        diffs_loss.append(loss_full - loss_re)
        diffs_acc.append(acc[1] - acc[0])
    tick(progress, "gate: retraining on chosen subsets", len(subsets), len(subsets))
    return {"subsets": len(subsets),
            "train_loss_gap": float(np.mean(diffs_loss)) if subsets else None,
            "test_accuracy_gap": float(np.mean(diffs_acc)) if subsets else None,
            "note": "renormalized full-set gate minus retrained-on-S gate (loss, train split) and retrained minus "
                    "renormalized (accuracy over all categories, test split); 0 means the full-set gate is as good"}


def _result(prep: Prepared, rows: list[dict], violations: dict, gate_check: dict, plots: dict, quick: bool,
            seed: int, seconds: float) -> dict:
    t = prep.table

    def frac(name: str) -> float:
        r = []
        for row in rows:
            opt, got = row["picks"]["exhaustive"]["test_accuracy"], row["picks"][name]["test_accuracy"]
            r.append(got / opt if opt > 0 else 1.0)
        return float(np.mean(r))

    def total(name: str, key: str) -> float:
        return float(sum(row["picks"][name][key] for row in rows))

    names = ("dmo", "exhaustive", "exhaustive_served", "greedy", "random", "best_single", "all_experts")
    policies = {}
    for name in names:
        picks = [row["picks"][name] for row in rows]
        policies[name] = {"test_accuracy": float(np.mean([p["test_accuracy"] for p in picks])),
                          "selection_objective": float(np.mean([p["selection_objective"] for p in picks])),
                          "energy_j_per_query": float(np.mean([p["energy_j"] for p in picks])),
                          "latency_s_per_query": float(np.mean([p["latency_s"] for p in picks])),
                          "budget_violations": int(sum(not p["feasible"] for p in picks)),
                          "fraction_of_optimum": frac(name)}
        if name in ("dmo", "exhaustive", "exhaustive_served", "greedy"):
            policies[name]["evaluations"] = int(total(name, "evaluations"))
            policies[name]["search_seconds"] = total(name, "seconds")
    same = [row["picks"]["dmo"]["indices"] == row["picks"]["exhaustive"]["indices"] for row in rows]
    sel_frac = [row["picks"]["dmo"]["selection_objective"] / row["picks"]["exhaustive"]["selection_objective"]
                if row["picks"]["exhaustive"]["selection_objective"] > 0 else 1.0 for row in rows]
    correct = t.correct
    cats = np.array(t.categories)
    experts = {v.name: {"server": prep.placement[k],
                        "accuracy": {c: float(correct[cats == c, k].mean()) for c in CATEGORIES},
                        "energy_j_per_query": float(prep.energy[:, k].mean()),
                        "latency_s_per_query": float(prep.latency[:, k].mean())}
               for k, v in enumerate(t.variants)}
    metrics = {
        "moe2_fraction_of_optimum": frac("dmo"),
        "moe2_search_speedup_vs_exhaustive": total("exhaustive", "seconds") / max(total("dmo", "seconds"), 1e-12),
        "moe2_selection_fraction_of_optimum": float(np.mean(sel_frac)),
        "moe2_same_subset_as_exhaustive": float(np.mean(same)),
        "moe2_evaluation_ratio_vs_exhaustive": total("exhaustive", "evaluations") / max(total("dmo", "evaluations"), 1),
        "moe2_greedy_fraction_of_optimum": frac("greedy"),
        "moe2_random_fraction_of_optimum": frac("random"),
        "moe2_best_single_fraction_of_optimum": frac("best_single"),
        "moe2_dmo_test_accuracy": policies["dmo"]["test_accuracy"],
        "moe2_best_single_test_accuracy": policies["best_single"]["test_accuracy"],
        "moe2_fraction_of_oracle": float(np.mean([row["picks"]["dmo"]["test_accuracy"] / row["oracle_test_accuracy"]
                                                  if row["oracle_test_accuracy"] > 0 else 1.0 for row in rows])),
        "moe2_served_exhaustive_fraction_of_optimum": frac("exhaustive_served"),
        "moe2_monotone_violation_rate_served_accuracy": float(np.mean([v["served_accuracy"]
                                                                       for v in violations.values()])),
        "moe2_monotone_violation_rate_objective": float(np.mean([v["selection_objective"]
                                                                 for v in violations.values()])),
        "moe2_gate_subset_loss_gap": gate_check["train_loss_gap"],
        "moe2_gate_subset_accuracy_gap": gate_check["test_accuracy_gap"],
        "moe2_category_accuracy": prep.category_accuracy,
    }
    return {
        "scenario": SCENARIO, "metrics": metrics, "policies": policies, "plots": plots,
        "experts": experts, "instances": rows,
        "monotone_violation_rate_by_category": violations, "gate_property": gate_check,
        "simulated": ["energy and latency of every expert per query: FLOPs and weight bytes of the variant's "
                      "prefill (real token counts) on the catalog's Jetson AGX Orin / RTX 4090 in the cluster's power "
                      "modes (CostModel roofline, busy power x time) plus gateway links (Fleet.transfer_s)",
                      "the budgets (fractions of the simulated energy, quantiles of the simulated latency)"],
        "measured": [f"every expert's answer probabilities on every query: SmolLM2-135M-Instruct ({t.source}) "
                     f"run on this machine's CPU in fp32, bf16 and torch.ao dynamic int8; "
                     f"{'read from the cache in out' if prep.reused else 'measured in this call'} "
                     f"({t.seconds:.1f} s when measured)",
                     "query embeddings and the category classifier: all-minilm-l6-v2 on this CPU",
                     "search wall times (DMO, exhaustive, greedy) on this CPU, fastest of repeats",
                     "accuracy: held-out test split, human tweet labels and exact answers"],
        "config": {"cluster": CLUSTER, "experts": [v.name for v in t.variants], "placement": prep.placement,
                   "levels": [{"energy_fraction": a, "latency_quantile": b} for a, b in LEVELS],
                   "per_category": BUDGETS[bool(quick)].per_category, "categories": list(CATEGORIES),
                   "train_queries": int(prep.train.sum()), "test_queries": int((~prep.train).sum()),
                   "gate": asdict(gating.GateConfig()), "quick": bool(quick),
                   "seconds": seconds},
        "train_seeds": [seed], "eval_seeds": [seed + 1],
        "eval_note": "the gate trains on one half of each category's queries; every accuracy is on the other half; "
                     "seed + 1 draws the random baseline",
    }
