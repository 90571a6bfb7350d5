"""CEMA-style cloud-edge adaptation on scikit-learn's 8 x 8 digits: corruptions, selection, wire format, the
forward-only edge, the cloud's norm-only updates, and CEMA against no adaptation on a shifted stream."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgepool.adapt.cloud import Cloud, CloudSettings
from edgepool.adapt.corruptions import CORRUPTIONS, corrupt
from edgepool.adapt.edge import EataEdge, Edge
from edgepool.adapt.messages import decode_state, decode_upload, encode_state, encode_upload
from edgepool.adapt.models import load_norm_state, norm_layers, norm_state, to_input, trained_models
from edgepool.adapt.run import run_stream
from edgepool.adapt.selection import AllSelector, CemaSelector, RandomSelector, entropy
from edgepool.adapt.stream import Phase, build_stream
from edgepool.errors import SpecError


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return trained_models("digits", cache_dir=tmp_path_factory.mktemp("adapt-cache"))


@pytest.fixture(scope="module")
def shifted(digits):
    return build_stream(digits.data, [Phase("contrast", 3, 192), Phase("brightness", 5, 192)], seed=1)


def test_corruptions_are_deterministic_and_grow_with_severity(digits):
    x = digits.data.test_images[:64]  # [64,8,8]
    for name in CORRUPTIONS:
        a = corrupt(x, name, 3, np.random.default_rng(5))
        b = corrupt(x, name, 3, np.random.default_rng(5))
        assert a.dtype == np.uint8 and a.shape == x.shape
        assert np.array_equal(a, b), name
        assert not np.array_equal(a, x), name
    for name in ("gaussian_noise", "contrast", "gaussian_blur", "brightness", "impulse_noise"):
        change = [np.abs(corrupt(x, name, s, np.random.default_rng(0)).astype(float) - x).mean() for s in range(1, 6)]
        assert all(lo < hi for lo, hi in zip(change, change[1:])), (name, change)
    with pytest.raises(SpecError):
        corrupt(x, "fog", 1, np.random.default_rng(0))
    with pytest.raises(SpecError):
        corrupt(x, "contrast", 6, np.random.default_rng(0))
    with pytest.raises(SpecError):
        corrupt(x.astype(np.float32), "contrast", 1, np.random.default_rng(0))


def test_cema_selector_rejects_unreliable_and_redundant_and_moves_its_threshold():
    sel = CemaSelector(10)
    ln = math.log(10)
    e = np.array([0.001, 0.2 * ln, 0.3 * ln, 0.9 * ln, 0.99 * ln])
    varied = np.arange(5)  # five different classes: no collapse
    assert sel.select(e, varied).tolist() == [False, True, True, False, False]
    before = sel.e_max
    sel.select(np.full(64, 0.95 * ln), np.arange(64) % 10)  # a new shift: everything uncertain
    assert sel.e_max > before
    for _ in range(10):
        sel.select(np.full(64, 0.01 * ln), np.arange(64) % 10)  # the model grew sure again
    assert sel.e_max == pytest.approx(sel.e_max_low * ln)
    assert len(sel.e_max_history) == 12
    # a collapsed batch (one class, near-zero entropy) is confidently wrong, not redundant: it is uploaded
    assert sel.select(np.full(64, 0.001), np.zeros(64, dtype=int)).all()
    assert sel.collapsed[-1] and not sel.collapsed[0]
    with pytest.raises(SpecError):
        CemaSelector(10, e_min=0.5)
    with pytest.raises(SpecError):
        RandomSelector(1.5)
    assert AllSelector().select(e).all()


def test_entropy_matches_the_formula():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    e = entropy(logits)
    assert e[0].item() == pytest.approx(math.log(2))
    assert e[1].item() < 1e-6


def test_messages_round_trip_and_grow_with_uploads():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    assert np.array_equal(decode_upload(encode_upload(images)), images)
    sizes = {k: len(encode_upload(images[:k])) for k in (0, 5, 10)}
    assert sizes[10] - sizes[5] == pytest.approx(5 * 28 * 28, abs=16)
    assert sizes[5] - sizes[0] == pytest.approx(5 * 28 * 28, abs=16)
    state = {"a.weight": torch.randn(16), "a.running_var": torch.rand(16)}
    back = decode_state(encode_state(state))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(SpecError):
        decode_upload(b"not a message")
    with pytest.raises(SpecError):
        encode_upload(images.astype(np.float32))


def test_norm_state_round_trip_and_bad_keys(digits):
    edge, _ = digits.copies()
    state = norm_state(edge)
    assert len(state) == 4 * len(norm_layers(edge))
    shifted = {k: v + 1 for k, v in state.items()}
    load_norm_state(edge, shifted)
    assert all(torch.equal(norm_state(edge)[k], shifted[k]) for k in state)
    with pytest.raises(SpecError):
        load_norm_state(edge, {"0.weight_typo": torch.zeros(16)})


@pytest.mark.parametrize("batch_stats", [False, True])
def test_edge_serves_forward_only(digits, shifted, batch_stats):
    model, _ = digits.copies()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grad_modes = []
    model.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    edge = Edge(model, CemaSelector(10), batch_stats=batch_stats)
    served = edge.serve(shifted.images[:64])
    assert grad_modes == [False]
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    # nothing changes, running statistics included (batch statistics are used, never stored)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if "num_batches" not in k)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():  # and batch statistics do give other predictions than the running ones on a shift
        running = model(to_input(shifted.images[:64])).argmax(1).numpy()
    assert (running != served.predictions).any() == batch_stats
    assert served.predictions.dtype == np.int64 and served.predictions.shape == (64,)
    assert served.upload.shape == (int(served.uploaded.sum()), 8, 8) and served.upload.dtype == np.uint8
    with pytest.raises(SpecError):
        edge.serve(np.zeros((0, 8, 8), dtype=np.uint8))


@pytest.mark.parametrize("batch_stats", [True, False])
def test_cloud_changes_only_the_edge_copys_normalization(digits, shifted, batch_stats):
    edge_model, foundation = digits.copies()
    cloud = Cloud(foundation, edge_model, 10, CloudSettings(batch_stats=batch_stats))
    before = {k: v.clone() for k, v in cloud.edge.state_dict().items()}
    found_before = {k: v.clone() for k, v in cloud.foundation.state_dict().items()}
    state = cloud.handle(shifted.images[:40])
    cloud.handle(shifted.images[40:80])
    norm_keys = set(norm_state(cloud.edge))
    after = cloud.edge.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= norm_keys | {k for k in before if k.endswith("num_batches_tracked")}
    assert any(k.endswith(".weight") for k in changed)
    # running statistics: re-estimated on the uploads for an edge that uses them, untouched for one that
    # normalizes with its batches' own statistics
    assert any(k.endswith(".running_mean") for k in changed) != batch_stats
    found_changed = {k for k, v in cloud.foundation.state_dict().items() if not torch.equal(found_before[k], v)}
    assert found_changed <= set(norm_state(cloud.foundation)) | {k for k in found_before if "num_batches" in k}
    assert set(state) == norm_keys
    # the edge model the cloud was given is untouched: the cloud adapts its own copy
    assert all(torch.equal(v, digits.edge.state_dict()[k]) for k, v in edge_model.state_dict().items())


def test_cema_beats_no_adaptation_and_uploads_less_than_all(digits, shifted):
    none = run_stream("none", shifted, digits)
    cema = run_stream("cema", shifted, digits)
    assert cema.mean_accuracy > none.mean_accuracy + 0.05, (cema.summary(), none.summary())
    assert 0 < cema.upload_fraction < 1
    assert cema.bytes_up > 0 and cema.bytes_down > 0 and none.bytes_up == none.bytes_down == 0
    assert len(cema.per_phase_accuracy) == 2 and cema.correct.shape == (len(shifted),)
    with pytest.raises(SpecError):
        run_stream("random", shifted, digits)
    with pytest.raises(SpecError):
        run_stream("tent", shifted, digits)


def test_eata_edge_adapts_on_its_own_and_uploads_nothing(digits, shifted):
    model, _ = digits.copies()
    before = norm_state(model)
    edge = EataEdge(model, 10, fisher_images=digits.data.train_images[:64])
    served = edge.serve(shifted.images[:64])
    assert len(served.upload) == 0 and not served.uploaded.any()
    after = norm_state(model)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith(".weight"))


@pytest.mark.slow
def test_compare_methods_quick(tmp_path):
    from edgepool.adapt.compare import compare_methods

    plot = tmp_path / "stream.png"
    result = compare_methods(quick=True, cache_dir=tmp_path / "cache", plot_path=plot)
    assert set(result["methods"]) == {"none", "batch-norm", "cema", "upload-all", "random", "eata"}
    m = result["metrics"]
    assert 0 < m["cema_upload_fraction"] < 1
    assert m["cema_accuracy_gain_vs_no_adaptation"] > 0
    assert plot.stat().st_size > 10_000
