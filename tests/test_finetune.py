"""PAC fine-tuning: adapters, activation cache, methods on one loop. Tiny random models keep these fast."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from edgepool.errors import SpecError
from edgepool.finetune import FinetuneConfig, Finetuner, finetune
from edgepool.finetune.data import batch_schedule, load_tweet_sentiment

TINY = FinetuneConfig(model="bert-tiny", dataset="synthetic", method="pac", n_train=48, n_test=16, epochs=2,
                      batch_size=16, threads=1)


def _grads(tuner: Finetuner) -> list[torch.Tensor]:
    return [p.grad.clone() for p in tuner.trainable]


def test_adapters_leave_backbone_weights_untouched():
    tuner = Finetuner(TINY)
    before = {k: v.clone() for k, v in tuner.backbone.model.state_dict().items()}
    adapters_before = [p.clone() for p in tuner.adapters.parameters()]
    result = tuner.run()
    after = tuner.backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in tuner.backbone.model.parameters())  # backward never entered it
    assert any(not torch.equal(a, b) for a, b in zip(adapters_before, tuner.adapters.parameters()))
    assert result.trainable_params < result.total_params


def test_training_from_cache_gives_the_same_gradients_as_a_live_backbone():
    live = Finetuner(replace(TINY, method="adapters"))  # no cache: the backbone runs every step
    cached = Finetuner(TINY)
    batch = list(range(16))
    cached.fill_cache(cached.task.train)
    assert cached.cache.stats().entries_memory == len(cached.task.train)
    forwards = cached.backbone_forward_samples
    cached.optimizer.zero_grad()
    cached.loss_and_backward(batch, len(batch))
    live.loss_and_backward(batch, len(batch))
    assert cached.backbone_forward_samples == forwards  # served from the cache alone
    for g_live, g_cached in zip(_grads(live), _grads(cached)):
        assert torch.allclose(g_live, g_cached, atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in _grads(cached))


def test_later_epochs_skip_the_backbone_and_match_the_uncached_run():
    pac = finetune(TINY)
    plain = finetune(replace(TINY, method="adapters"))
    assert pac.epochs[0].backbone_forward_samples == TINY.n_train
    assert pac.epochs[1].backbone_forward_samples == 0
    assert plain.epochs[1].backbone_forward_samples == TINY.n_train
    assert [round(e.loss, 5) for e in pac.epochs] == [round(e.loss, 5) for e in plain.epochs]


def test_over_budget_states_are_recomputed_not_dropped():
    full = Finetuner(TINY)
    full.run()
    small = Finetuner(replace(TINY, cache_memory_budget_mb=0.05))
    result = small.run()
    stats = result.cache
    assert stats["overflow_puts"] > 0 and stats["bytes_total"] <= 0.05 * (1 << 20)
    assert result.epochs[1].backbone_forward_samples > 0  # the overflow was recomputed in epoch 2
    for a, b in zip(full.adapters.parameters(), small.adapters.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_disk_tier_is_memory_mapped_and_equivalent(tmp_path):
    mem = Finetuner(TINY)
    mem.run()
    disk = Finetuner(replace(TINY, cache_memory_budget_mb=0, cache_disk_budget_mb=64, cache_dir=str(tmp_path)))
    result = disk.run()
    assert result.cache["entries_disk"] == TINY.n_train + TINY.n_test and result.cache["entries_memory"] == 0
    assert (tmp_path / "manifest.json").exists()
    for a, b in zip(mem.adapters.parameters(), disk.adapters.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_stale_or_corrupt_cache_is_rebuilt(tmp_path):
    cfg = replace(TINY, cache_memory_budget_mb=0, cache_disk_budget_mb=64, cache_dir=str(tmp_path))
    first = finetune(cfg)
    assert first.cache["rebuilt_reason"] is None and first.cache["reused_entries"] == 0
    again = finetune(cfg)  # same model, tokenizer and data: reused, no backbone forward at all
    assert again.cache["reused_entries"] == TINY.n_train + TINY.n_test
    assert again.epochs[0].backbone_forward_samples == 0

    other_weights = finetune(replace(cfg, seed=1))  # other backbone weights (and data order)
    assert "fingerprint" in other_weights.cache["rebuilt_reason"]
    assert other_weights.epochs[0].backbone_forward_samples == TINY.n_train

    other_data = finetune(replace(cfg, n_train=32))
    assert "fingerprint" in other_data.cache["rebuilt_reason"]

    data_file = tmp_path / "entries.bin"
    raw = bytearray(data_file.read_bytes())
    raw[100] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    corrupted = finetune(replace(cfg, n_train=32))
    assert "checksum" in corrupted.cache["rebuilt_reason"]
    assert corrupted.epochs[0].backbone_forward_samples == 32

    (tmp_path / "manifest.json").write_text(json.dumps({"fingerprint": "x"})[:-3])
    assert "unreadable" in finetune(replace(cfg, n_train=32)).cache["rebuilt_reason"]


@pytest.mark.parametrize("model", ["gpt2-tiny", "llama-tiny"])
def test_decoders_work_with_every_method(model):
    results = {m: finetune(replace(TINY, model=model, method=m, epochs=1, n_train=16, n_test=8))
               for m in ("pac", "lora", "full")}
    assert results["lora"].trainable_params < results["pac"].trainable_params < results["full"].trainable_params
    assert all(0.0 <= r.final_accuracy <= 100.0 for r in results.values())
    # LoRA keeps activations of the whole backbone for backward; PAC only the side network's.
    assert results["pac"].saved_tensor_peak_bytes < results["lora"].saved_tensor_peak_bytes


def test_shares_reproduce_global_batches():
    shares = [list(range(0, 30)), list(range(30, 48))]
    steps = batch_schedule(48, 16, epoch=1, seed=0, shares=shares)
    assert len(steps) == 3
    assert sorted(i for step in steps for part in step for i in part) == list(range(48))
    assert all(set(step[0]) <= set(shares[0]) and set(step[1]) <= set(shares[1]) for step in steps)


def test_bad_input_names_the_field():
    with pytest.raises(SpecError, match="method"):
        FinetuneConfig(method="qlora").validate()
    with pytest.raises(SpecError, match="cache_dtype"):
        FinetuneConfig(cache_dtype="int8").validate()
    with pytest.raises(SpecError, match="n_train"):
        load_tweet_sentiment(3, 2)


def test_an_unknown_method_names_the_registered_ones():
    from edgepool.finetune import finetune_method

    with pytest.raises(SpecError, match="method = 'qlora'.*accepted: pac, lora, full, adapters"):
        finetune_method("qlora")


def test_a_registered_method_plugs_into_the_loop(monkeypatch):
    """A linear probe (only the head trains, on the frozen last state), added without touching the loop."""
    from edgepool.finetune import method as method_module
    from edgepool.finetune.adapters import ClassifierHead
    from edgepool.finetune.data import pad_batch

    monkeypatch.setattr(method_module, "_REGISTRY", dict(method_module._REGISTRY))  # registered for this test only
    calls = []

    @method_module.register_method
    class Probe(method_module.FinetuneMethod):
        name, default_lr = "probe", 1e-2

        def prepare(self, backbone, num_labels, config):
            head = ClassifierHead(backbone.hidden_size, num_labels)
            return method_module.TrainableParts(None, head, list(head.parameters()))

        def logits(self, tuner, split, indices):
            calls.append(len(indices))
            ids, mask = pad_batch([split.input_ids[i] for i in indices], tuner.task.pad_id)
            with torch.no_grad():
                hidden = tuner.backbone.last_hidden(ids, mask)
            return tuner.head(hidden, mask)

    tuner = Finetuner(replace(TINY, method="probe", epochs=1))
    result = tuner.run()
    assert result.method == "probe" and tuner.optimizer.param_groups[0]["lr"] == 1e-2
    assert result.trainable_params == sum(p.numel() for p in tuner.head.parameters())
    assert sum(calls) == TINY.n_train + TINY.n_test and tuner.cache is None


def test_real_tweets_ship_offline_and_are_balanced():
    task = load_tweet_sentiment(40, 20, seed=0)
    assert len(task.train_texts) == 40 and sum(task.train_labels) == 20 and sum(task.test_labels) == 10
    assert not set(task.train_texts) & set(task.test_texts)
    assert all(t.strip() for t in task.train_texts)


def test_cli_writes_a_report(tmp_path):
    from typer.testing import CliRunner

    from edgepool.cli import app

    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["finetune", "--model", "bert-tiny", "--dataset", "synthetic", "--method", "pac",
                                   "--epochs", "2", "--n-train", "32", "--n-test", "16", "--batch-size", "16",
                                   "--output", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["method"] == "pac" and len(report["epochs"]) == 2
    assert "accuracy" in res.output
    bad = CliRunner().invoke(app, ["finetune", "--method", "nope"])
    assert bad.exit_code != 0 and "method" in bad.output
