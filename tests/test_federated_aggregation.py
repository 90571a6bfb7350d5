"""Heterogeneous-rank LoRA aggregation against hand computations on tiny tensors."""
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from edgepool.errors import SpecError
from edgepool.federated.lora_aggregation import (ClientUpdate, Stacking, SvdRetruncation, ZeroPadding, factor_bytes,
                                                 factors_from_peft, factors_to_peft, fold_scaling, merge_into_base,
                                                 unfold_scaling, weighted_average)
from edgepool.finetune.backbone import load_backbone

T = torch.tensor
M = "m"  # one adapted module, in=3, out=2


def two_clients() -> list[ClientUpdate]:
    """Rank 1 (weight 1) and rank 2 (weight 3): normalised weights 1/4 and 3/4."""
    a1, b1 = T([[1., 0., 2.]]), T([[1.], [2.]])
    a2, b2 = T([[1., 1., 0.], [0., 1., 1.]]), T([[2., 0.], [0., 1.]])
    return [ClientUpdate({M: (a1, b1)}, weight=1, rank=1), ClientUpdate({M: (a2, b2)}, weight=3, rank=2)]


def random_clients(ranks, seed=0, out=5, inn=7, dtype=torch.float64) -> list[ClientUpdate]:
    g = torch.Generator().manual_seed(seed)
    return [ClientUpdate({name: (torch.randn(r, inn, generator=g, dtype=dtype),
                                 torch.randn(out, r, generator=g, dtype=dtype)) for name in ("q", "v")},
                         weight=float(i + 1), rank=r) for i, r in enumerate(ranks)]


def weighted_sum_of_products(updates, name):
    total = sum(u.weight for u in updates)
    return sum(u.weight / total * u.factors[name][1] @ u.factors[name][0] for u in updates)


def test_zero_padding_by_hand():
    agg = ZeroPadding()
    g = agg.aggregate(two_clients())
    # A1 padded [[1,0,2],[0,0,0]], B1 padded [[1,0],[2,0]]; 1/4 of client 1 plus 3/4 of client 2
    a, b = g.factors[M]
    assert g.rank == 2
    assert torch.equal(a, T([[1., 0.75, 0.5], [0., 0.75, 0.75]]))
    assert torch.equal(b, T([[1.75, 0.], [0.5, 0.75]]))
    factors, errors = agg.for_client(g, 1)
    a1, b1 = factors[M]
    assert torch.equal(a1, T([[1., 0.75, 0.5]])) and torch.equal(b1, T([[1.75], [0.5]]))
    # global product [[1.75, 1.3125, 0.875], [0.5, 0.9375, 0.8125]]; truncated drops 0.5625 from two entries
    assert errors[M] == pytest.approx(0.5625 * math.sqrt(2) / math.sqrt(7.33984375))
    factors, errors = agg.for_client(g, 3)  # above the global rank: zero-padded, nothing lost
    a3, b3 = factors[M]
    assert torch.equal(a3[2], torch.zeros(3)) and torch.equal(b3[:, 2], torch.zeros(2)) and errors[M] == 0
    assert agg.download_bytes(g, 1) == (3 + 2) * 4


def test_stacking_by_hand():
    agg = Stacking(seed=0)
    g = agg.aggregate(two_clients())
    a, b = g.factors[M]
    assert g.rank == 3
    assert torch.equal(a, T([[1., 0., 2.], [1., 1., 0.], [0., 1., 1.]]))
    assert torch.equal(b, T([[0.25, 1.5, 0.], [0.5, 0., 0.75]]))
    # 1/4 [[1,0,2],[2,0,4]] + 3/4 [[2,2,0],[0,1,1]]
    assert torch.equal(b @ a, T([[1.75, 1.5, 0.5], [0.5, 0.75, 1.75]]))
    assert torch.equal(merge_into_base(torch.ones(2, 3), a, b), T([[2.75, 2.5, 1.5], [1.5, 1.75, 2.75]]))
    merged, fresh = agg.for_client(g, 2)
    assert merged is g.factors
    fa, fb = fresh[M]
    assert fa.shape == (2, 3) and fa.abs().sum() > 0 and torch.equal(fb, torch.zeros(2, 2))
    assert torch.equal(fa, agg.for_client(g, 2)[1][M][0])  # seeded: every client starts from the same A
    assert agg.download_bytes(g, 1) == 3 * (3 + 2) * 4
    assert factor_bytes(two_clients()[1].factors) == (6 + 4) * 4


def test_svd_by_hand():
    # 1/4 [[4,0,0],[0,0,0]] + 3/4 [[4,0,0],[0,4,0]] = [[4,0,0],[0,3,0]]: singular values 4 and 3
    updates = [ClientUpdate({M: (T([[1., 0., 0.]]), T([[4.], [0.]]))}, weight=1, rank=1),
               ClientUpdate({M: (T([[1., 0., 0.], [0., 1., 0.]]), T([[4., 0.], [0., 4.]]))}, weight=3, rank=2)]
    agg = SvdRetruncation()
    g = agg.aggregate(updates)
    factors, errors = agg.for_client(g, 1)
    a, b = factors[M]
    assert torch.allclose(a.abs(), T([[1., 0., 0.]])) and torch.allclose(b.abs(), T([[4.], [0.]]))  # A = Vh_r
    assert torch.allclose(b @ a, T([[4., 0., 0.], [0., 0., 0.]]))
    assert errors[M] == pytest.approx(3 / 5)
    factors, errors = agg.for_client(g, 3)  # beyond min(out, in) = 2: exact, zero-padded
    a, b = factors[M]
    assert a.shape == (3, 3) and b.shape == (2, 3)
    assert torch.allclose(b @ a, T([[4., 0., 0.], [0., 3., 0.]]), atol=1e-6) and errors[M] == pytest.approx(0)
    assert agg.download_bytes(g, 1) == (3 + 2) * 4


def test_stacking_product_is_the_weighted_sum():
    updates = random_clients([1, 4, 2])
    g = Stacking().aggregate(updates)
    for name, (a, b) in g.factors.items():
        assert torch.allclose(b @ a, weighted_sum_of_products(updates, name), rtol=0, atol=1e-12)


def test_svd_at_full_rank_reproduces_delta():
    updates = random_clients([2, 3, 4])  # sum 9 > min(out, in) = 5
    agg = SvdRetruncation()
    g = agg.aggregate(updates)
    factors, errors = agg.for_client(g, 5)
    for name, (a, b) in factors.items():
        assert torch.allclose(b @ a, weighted_sum_of_products(updates, name), atol=1e-10)
        assert errors[name] == pytest.approx(0, abs=1e-7)
    _, errors = agg.for_client(g, 2)
    assert all(0 < e < 1 for e in errors.values())


def test_zero_padding_with_equal_ranks_is_fedavg():
    updates = random_clients([3, 3, 3])
    g = ZeroPadding().aggregate(updates)
    weights = [u.weight for u in updates]
    for name, (a, b) in g.factors.items():
        avg = weighted_average([{"a": u.factors[name][0], "b": u.factors[name][1]} for u in updates], weights)
        assert torch.allclose(a, avg["a"]) and torch.allclose(b, avg["b"])


def test_fold_unfold_matches_peft_delta_and_round_trips():
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    model = get_peft_model(load_backbone("bert-tiny").model, config)
    factors = factors_from_peft(model.state_dict())
    assert set(factors) == {f"encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")}
    a, b = factors["encoder.layer.0.attention.self.query"]
    assert a.shape == (4, 32) and b.shape == (32, 4)

    g = torch.Generator().manual_seed(1)
    new = {n: (torch.randn(a.shape, generator=g), torch.randn(b.shape, generator=g)) for n, (a, b) in factors.items()}
    result = model.load_state_dict(factors_to_peft(new), strict=False)
    assert not result.unexpected_keys
    back = factors_from_peft(model.state_dict())
    assert all(torch.equal(back[n][0], new[n][0]) and torch.equal(back[n][1], new[n][1]) for n in new)

    layer = model.base_model.model.encoder.layer[0].attention.self.query
    folded = fold_scaling(back, layer.scaling["default"])  # 8 / 4 = 2
    fa, fb = folded["encoder.layer.0.attention.self.query"]
    assert torch.allclose(fb @ fa, layer.get_delta_weight("default"), atol=1e-6)
    ua, ub = unfold_scaling(folded, 2.0)["encoder.layer.0.attention.self.query"]
    assert torch.allclose(ub, back["encoder.layer.0.attention.self.query"][1])


def test_bad_input():
    agg = ZeroPadding()
    with pytest.raises(SpecError, match="updates"):
        agg.aggregate([])
    with pytest.raises(SpecError, match="same module names"):
        Stacking().aggregate([two_clients()[0], ClientUpdate({"other": two_clients()[1].factors[M]}, 3, 2)])
    with pytest.raises(SpecError, match="rank"):
        agg.aggregate([ClientUpdate(two_clients()[0].factors, 1, 0)])
    with pytest.raises(SpecError, match="rank"):
        agg.aggregate([ClientUpdate(two_clients()[0].factors, 1, 2)])  # factors are rank 1
    with pytest.raises(SpecError, match="weights"):
        agg.aggregate([ClientUpdate(two_clients()[0].factors, 0, 1)])
    g = SvdRetruncation().aggregate(two_clients())
    for bad in (0, -1):
        with pytest.raises(SpecError, match="rank"):
            SvdRetruncation().for_client(g, bad)
    with pytest.raises(SpecError, match="weights"):
        weighted_average([{"x": torch.zeros(2)}], [1, 2])
    with pytest.raises(SpecError, match="shape"):
        weighted_average([{"x": torch.zeros(2)}, {"x": torch.zeros(3)}], [1, 2])
    with pytest.raises(SpecError, match="adapter"):
        factors_from_peft({"w": torch.zeros(1)})
    with pytest.raises(SpecError, match="A \\[R, 3\\]"):
        merge_into_base(torch.zeros(2, 3), torch.zeros(1, 4), torch.zeros(2, 1))
