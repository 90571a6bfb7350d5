"""The precision tasks: real models on real data, cut into units that compose back to the model."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from edgepool.errors import SpecError
from edgepool.finetune.adapters import ClassifierHead
from edgepool.finetune.backbone import load_backbone
from edgepool.finetune.data import pad_batch
from edgepool.precision.tasks import TASK_NAMES, Batch, MnistSettings, PrecisionTask, TweetSettings, load_task, \
    minilm_units, token_split, weights_path


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> PrecisionTask:
    return load_task("digits-cnn", seed=0, cache_dir=tmp_path_factory.mktemp("weights"))


def _keys(split) -> set[bytes]:
    """Each sample's content (token rows without their padding)."""
    rows = [row if b.mask is None else row[m.bool()] for b in split.batches for row, m in
            zip(b.x, b.mask if b.mask is not None else b.x)]
    return {row.numpy().tobytes() for row in rows}


def test_unknown_task_names_the_field():
    with pytest.raises(SpecError) as err:
        load_task("resnet-imagenet")
    assert err.value.field == "model"
    assert all(name in err.value.accepted for name in TASK_NAMES)
    with pytest.raises(SpecError, match="settings"):
        load_task("digits-cnn", settings=MnistSettings())


def test_digits_splits_are_disjoint_and_sized(digits):
    sizes = {name: len(digits.split(name)) for name in ("calibration", "validation", "test")}
    assert sizes == {"calibration": 200, "validation": 300, "test": 297}
    assert digits.notes["sizes"]["train"] == 1000
    cal, val, test = (_keys(digits.split(n)) for n in ("calibration", "validation", "test"))
    # load_digits holds a few duplicate images; disjoint samples can share pixels only there
    assert len(cal & val) + len(cal & test) + len(val & test) <= 3
    assert set(digits.test.labels.tolist()) == set(range(10))  # stratified: every class everywhere


def test_digits_units_compose_and_are_accurate(digits):
    assert digits.unit_names == ["conv1", "conv2", "conv3", "fc1", "head"]
    assert not digits.units.training
    x = digits.test.batches[0].x
    with torch.no_grad():
        h = x
        for unit in digits.units:
            h = unit(h)
        assert torch.equal(h, digits.units(x))
    assert digits.accuracy(digits.test) > 0.9
    assert digits.notes["fp32_test_accuracy"] == pytest.approx(digits.accuracy(digits.test), abs=1e-4)


def test_weights_are_cached_and_reused(digits):
    path = weights_path(Path(digits.notes["weights_file"]).parent, "digits-cnn", 0)
    assert path.is_file() and "digits-cnn-seed0-" in path.name
    calls = []
    again = load_task("digits-cnn", seed=0, cache_dir=path.parent, progress=lambda *a: calls.append(a))
    assert calls == [] and again.notes["trained_now"] is False
    for a, b in zip(digits.units.state_dict().values(), again.units.state_dict().values()):
        assert torch.equal(a, b)
    assert again.notes["fp32_test_accuracy"] == digits.notes["fp32_test_accuracy"]


def test_sample_takes_the_first_validation_samples(digits):
    sample = digits.sample(3)
    assert torch.equal(sample.x, digits.validation.batches[0].x[:3]) and sample.mask is None


def test_token_sample_spans_batches_and_trims_padding():
    ids = [[1] * n for n in (3, 5, 2, 7, 4)]
    split = token_split(ids, [0, 1, 0, 1, 0], pad_id=0, batch=2)
    task = PrecisionTask("t", torch.nn.Sequential(torch.nn.Identity()), ["id"], split, split, split, 2, "test")
    first = split.batches[0]
    sample = task.sample(len(first) + 1)
    assert sample.mask.shape == sample.x.shape and len(sample) == len(first) + 1
    assert sample.mask.sum(0).min() > 0  # no column that is padding everywhere
    assert torch.equal(sample.mask[:len(first), :first.mask.shape[1]], first.mask)


@pytest.fixture(scope="module")
def minilm():
    return load_backbone("all-minilm-l6-v2")


def test_minilm_units_reproduce_the_encoder_and_head(minilm):
    torch.manual_seed(0)
    head = ClassifierHead(minilm.hidden_size, 2)
    units, names, context = minilm_units(minilm, head)
    assert len(units) == 14 and names[:3] == ["embeddings", "layer1.attn", "layer1.ffn"] and names[-1] == "head"
    texts = ["what a lovely flight, thanks!", "delayed again for three hours and nobody tells us anything", "ok"]
    ids, mask = pad_batch(minilm.tokenizer(texts)["input_ids"], minilm.tokenizer.pad_token_id)  # 3 x T
    with torch.no_grad():
        expected = head(minilm.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        context.set(Batch(ids, torch.zeros(3, dtype=torch.long), mask))
        got = units(ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert copy.deepcopy(units[1]).context is context  # an emulator's copy still follows the batches
    # padding must not leak: the short text alone gives the same logits
    short = ids[2:, :int(mask[2].sum())]
    with torch.no_grad():
        context.set(Batch(short, torch.zeros(1, dtype=torch.long), torch.ones_like(short)))
        torch.testing.assert_close(units(short), got[2:], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_minilm_tweets_task(tmp_path):
    small = TweetSettings(n_train=300, n_calibration=50, n_validation=100, n_test=100)  # the real sizes take 40 s
    task = load_task("minilm-tweets", seed=0, cache_dir=tmp_path, settings=small)
    assert task.num_units == 14 and len(task.validation) == 100 and len(task.test) == 100
    texts = [_keys(task.split(n)) for n in ("calibration", "validation", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert task.accuracy(task.validation) > 0.65
    sample = task.sample(2)
    task.set_context(sample)
    with torch.no_grad():
        torch.testing.assert_close(task.units(sample.x), task.logits(task.validation)[:2], atol=1e-4, rtol=1e-4)
    again = load_task("minilm-tweets", seed=0, cache_dir=tmp_path, settings=small)
    assert not again.notes["trained_now"]
    torch.testing.assert_close(again.logits(again.validation), task.logits(task.validation))


@pytest.mark.slow
def test_mnist_mobilenetv2_task(tmp_path):
    small = MnistSettings(n_train=640, n_validation=200, epochs=2)  # the real fine-tune (3,100 digits) takes 55 s
    task = load_task("mnist-mobilenetv2", seed=0, cache_dir=tmp_path, settings=small)
    assert task.num_units == 20 and task.unit_names[0] == "stem" and task.unit_names[-1] == "head"
    assert (len(task.calibration), len(task.validation), len(task.test)) == (200, 200, 1000)
    assert task.notes["sizes"]["train"] == 640
    assert task.accuracy(task.test) > 0.5  # chance is 0.1; the real settings reach 0.98
