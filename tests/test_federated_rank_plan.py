"""FedPipe's per-device rank/batch/bits program (against brute force), its baseline, the cost measurement and
the importance ranking's module names."""
import random

import pytest

from edgepool.errors import SpecError
from edgepool.federated.importance import encoder_linears, lora_model, rank_matrices, task_batches, top_modules
from edgepool.federated.rank_plan import (BATCHES, BITS, MB, RANKS, CostRow, DeviceBudget, LoraCost,
                                          homogeneous_plan, measure_lora_cost, option_value, plan_device,
                                          plan_devices)
from edgepool.finetune.adapters import ClassifierHead
from edgepool.finetune.backbone import load_backbone
from edgepool.finetune.data import EncodedSplit


def table() -> LoraCost:
    """Hand-made, MiniLM-like: 90 MiB fp32 weights, activations linear in batch, slower with rank."""
    weights = {32: 90 * MB, 8: 30 * MB, 4: 20 * MB}
    rows = [CostRow(r, b, bits, weights[bits], r * 200_000, b * 3 * MB + r * b * 20_000,
                    0.01 * (1 + r / 8) * (1 + 1 / b))
            for r in RANKS for b in BATCHES for bits in BITS]
    return LoraCost("hand-made", ["query", "value"], 48, rows)


def brute_force(cost: LoraCost, budget: DeviceBudget, min_steps: int = 1) -> float:
    best = -1.0
    for row in cost.rows:
        if row.memory_bytes > budget.memory_bytes or row.batch > budget.samples:
            continue
        fit = int(budget.deadline_s * budget.cores / (row.batch * row.sec_per_sample))
        steps = min(budget.samples // row.batch, fit)
        if steps >= min_steps:
            best = max(best, option_value(row, steps))
    return best


def test_ip_matches_brute_force_on_random_budgets():
    cost, rng = table(), random.Random(1)
    for i in range(25):
        budget = DeviceBudget(f"d{i}", cores=rng.uniform(0.1, 2.0), memory_bytes=int(rng.uniform(15, 250) * MB),
                              deadline_s=rng.uniform(0.01, 30), samples=rng.randint(3, 400))
        choice, best = plan_device(cost, budget), brute_force(cost, budget)
        if best < 0:
            assert not choice.feasible and choice.reason
            continue
        row = cost.row(choice.rank, choice.batch, choice.bits)
        assert option_value(row, choice.steps) == pytest.approx(best)
        assert choice.est_memory_bytes <= budget.memory_bytes
        assert choice.est_time_s <= budget.deadline_s + 1e-9


def test_too_small_device_sits_out_with_reason():
    choice = plan_device(table(), DeviceBudget("pi", 1.0, 10 * MB, 60, 200))
    assert not choice.feasible and "memory" in choice.reason and choice.steps == 0
    slow = plan_device(table(), DeviceBudget("slow", 0.01, 500 * MB, 0.01, 200))
    assert not slow.feasible and "deadline" in slow.reason


def test_tight_memory_forces_quantized_base():
    roomy = plan_device(table(), DeviceBudget("big", 1.0, 400 * MB, 30, 400))
    tight = plan_device(table(), DeviceBudget("small", 1.0, 60 * MB, 30, 400))
    assert roomy.bits == 32
    assert tight.feasible and tight.bits in (8, 4)


def test_tight_deadline_lowers_batch_and_steps():
    budget = dict(cores=1.0, memory_bytes=400 * MB, samples=400)
    loose = plan_device(table(), DeviceBudget("loose", deadline_s=60, **budget))
    tight = plan_device(table(), DeviceBudget("tight", deadline_s=0.1, **budget))
    assert tight.feasible
    assert tight.samples < loose.samples
    assert tight.batch < loose.batch or tight.steps < loose.steps


def test_homogeneous_plan_drops_device_that_cannot_fit():
    budgets = [DeviceBudget("a", 1.0, 400 * MB, 5, 160), DeviceBudget("b", 0.25, 400 * MB, 5, 160),
               DeviceBudget("c", 1.0, 50 * MB, 5, 160)]
    plan = homogeneous_plan(table(), budgets, rank=8, batch=16, bits=32)
    assert plan.participants == ["a", "b"]
    assert plan.devices[1].est_time_s == pytest.approx(4 * plan.devices[0].est_time_s)
    assert plan.round_time_s == plan.devices[1].est_time_s
    fedpipe = plan_devices(table(), budgets)
    assert set(fedpipe.participants) == {"a", "b", "c"} and fedpipe.round_time_s <= 5
    assert fedpipe.to_dict()["kind"] == "fedpipe"


def test_cost_table_round_trips_json():
    cost = table()
    assert LoraCost.from_dict(cost.to_dict()) == cost


def test_measure_lora_cost_bert_tiny():
    backbone = load_backbone("bert-tiny").freeze()
    names = list(encoder_linears(backbone.model))
    cost = measure_lora_cost(backbone, ClassifierHead(backbone.hidden_size, 2), names[:4], seq_len=16,
                             ranks=(2, 8), batches=(2, 8), steps=1)
    assert len(cost.rows) == 2 * 2 * 3
    assert all(r.memory_bytes > 0 and r.sec_per_sample > 0 for r in cost.rows)
    for rank in (2, 8):
        for bits in BITS:
            assert cost.row(rank, 8, bits).activation_bytes > cost.row(rank, 2, bits).activation_bytes
    assert cost.row(8, 2, 32).trainable_bytes > cost.row(2, 2, 32).trainable_bytes
    assert cost.row(2, 2, 4).weights_bytes < cost.row(2, 2, 8).weights_bytes < cost.row(2, 2, 32).weights_bytes


def test_top_modules_select_exactly_those_in_peft():
    backbone = load_backbone("bert-tiny").freeze()
    split = EncodedSplit([[101, 2000 + i, 102] for i in range(8)], [i % 2 for i in range(8)])
    head = ClassifierHead(backbone.hidden_size, 2)
    scores = rank_matrices(backbone, head, task_batches(split, 0, 4, 2), "sensitivity")
    assert len(scores) == 12 and [s.score for s in scores] == sorted((s.score for s in scores), reverse=True)
    assert all(p.grad is None and not p.requires_grad for p in backbone.model.parameters())  # left as found
    # peft matches by ".name" suffix: layer 0's output.dense must not also catch layer 0's attention.output.dense
    chosen = ["encoder.layer.0.output.dense", "encoder.layer.1.attention.self.query"]
    model = lora_model(backbone.model, chosen, rank=2)
    adapted = {n.removeprefix("base_model.model.").removesuffix(".lora_A.default")
               for n, _ in model.named_modules() if n.endswith("lora_A.default")}
    assert adapted == set(chosen)
    top = top_modules(scores, k=3)
    model = lora_model(backbone.model, top, rank=2)
    assert {n.removeprefix("base_model.model.").removesuffix(".lora_A.default")
            for n, _ in model.named_modules() if n.endswith("lora_A.default")} == set(top)
    assert len(top_modules(rank_matrices(backbone, head, None, "svd", svd_top=2), fraction=0.5)) == 6


def test_bad_input_raises_spec_error():
    with pytest.raises(SpecError):
        DeviceBudget("x", cores=0, memory_bytes=MB, deadline_s=1, samples=10)
    with pytest.raises(SpecError):
        DeviceBudget("x", cores=1, memory_bytes=MB, deadline_s=-1, samples=10)
    with pytest.raises(SpecError):
        plan_device(table(), DeviceBudget("x", 1, MB, 1, 10), min_steps=0)
    with pytest.raises(SpecError):
        homogeneous_plan(table(), [], rank=3)
    with pytest.raises(SpecError):
        top_modules([], k=1)
    with pytest.raises(SpecError):
        top_modules([], k=1, fraction=0.5)
    backbone = load_backbone("bert-tiny")
    with pytest.raises(SpecError):
        rank_matrices(backbone, ClassifierHead(backbone.hidden_size, 2), None, criterion="fisher")
    with pytest.raises(SpecError):
        rank_matrices(backbone, ClassifierHead(backbone.hidden_size, 2), [], criterion="sensitivity")
    with pytest.raises(SpecError):
        LoraCost("m", [], 48, [])
    with pytest.raises(SpecError):
        measure_lora_cost(backbone, ClassifierHead(backbone.hidden_size, 2), ["query"], seq_len=0)
