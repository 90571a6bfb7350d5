"""Sparse fine-tuning (PockEngine style): pruned backward, contribution analysis, compiled step, memory."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from edgepool.errors import SpecError
from edgepool.finetune import FinetuneConfig, Finetuner, finetune
from edgepool.finetune.compiled import compare_compiled
from edgepool.finetune.contribution import Contribution, greedy, select_updates
from edgepool.finetune.sparse import BackwardProbe, blocks, earliest_trainable_block, parse_unit

TINY = FinetuneConfig(model="bert-tiny", dataset="synthetic", method="sparse", n_train=96, n_test=32, epochs=2,
                      batch_size=16, threads=1, lr=3e-3)


class _SavedBytes:
    """Bytes saved for backward while inside one module's forward (parameters excluded)."""

    def __init__(self, model: nn.Module, module: nn.Module):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.inside, self.bytes = False, 0
        module.register_forward_pre_hook(lambda *a: setattr(self, "inside", True))
        module.register_forward_hook(lambda *a: setattr(self, "inside", False))

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if self.inside and t.untyped_storage().data_ptr() not in self.params:
            self.bytes += t.untyped_storage().nbytes()
        return t


def _saved_in_blocks(updates: list[str]) -> list[int]:
    tuner = Finetuner(replace(TINY, sparse_updates=updates))
    model = tuner.backbone.model
    meters = [_SavedBytes(model, b) for b in blocks(model)]
    with torch.autograd.graph.saved_tensors_hooks(lambda t: [m.pack(t) for m in meters][0], lambda t: t):
        tuner.logits(tuner.task.train, list(range(16))).sum()
    return [m.bytes for m in meters]


def test_a_frozen_prefix_saves_nothing_for_backward():
    assert _saved_in_blocks(["last1"])[0] == 0  # block 0 is frozen and before every trainable one
    assert _saved_in_blocks(["last1"])[1] > 0
    assert _saved_in_blocks(["last2"])[0] > 0  # the same block saves activations once it trains


def test_a_bias_only_linear_saves_no_input_for_its_weight_gradient():
    lin = nn.Linear(8, 4)
    x = torch.randn(2, 5, 8, requires_grad=True)
    for weight_trains, expect_input_saved in ((False, False), (True, True)):
        lin.weight.requires_grad_(weight_trains)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            lin(x).sum().backward()
        input_saved = any(t.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for t in saved)
        assert input_saved == expect_input_saved
        assert lin.bias.grad is not None and x.grad is not None


@pytest.mark.parametrize("updates,earliest", [(["last1"], 1), (["ffn-last1"], 1), (["bias"], 0), (["last2"], 0)])
def test_backward_starts_at_the_earliest_trainable_block(updates, earliest):
    tuner = Finetuner(replace(TINY, sparse_updates=updates))
    model = tuner.backbone.model
    assert earliest_trainable_block(model) == earliest
    probes = [BackwardProbe(model, i) for i in range(len(blocks(model)))]
    tuner.loss_and_backward(list(range(16)), 16)
    assert probes[earliest].input_requires_grad is False  # nothing before it built a graph
    assert all(p.input_requires_grad for p in probes[earliest + 1:])
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert all(p.grad is not None for p in tuner.trainable)


def test_unit_names_are_checked():
    assert parse_unit("ffn-last2").kind == "ffn" and parse_unit("ffn-last2").last == 2
    assert parse_unit("last3").kind is None
    for bad in ("last0", "mlp", "bias-last"):
        with pytest.raises(SpecError, match="sparse_updates"):
            parse_unit(bad)
    with pytest.raises(SpecError, match="sparse_updates"):
        Finetuner(replace(TINY, sparse_updates=["last3"]))  # bert-tiny has 2 blocks
    with pytest.raises(SpecError, match="memory_budget_mb"):
        replace(TINY, method="lora", memory_budget_mb=10.0).validate()
    with pytest.raises(SpecError, match="memory_budget_mb"):
        replace(TINY, memory_budget_mb=0).validate()


def test_sparse_trains_only_its_units_and_the_loss_goes_down():
    tuner = Finetuner(replace(TINY, epochs=4, sparse_updates=["last1", "norm"]))
    frozen = {n: p.clone() for n, p in tuner.backbone.model.named_parameters() if not p.requires_grad}
    trained = {n: p.clone() for n, p in tuner.backbone.model.named_parameters() if p.requires_grad}
    result = tuner.run()
    after = dict(tuner.backbone.model.named_parameters())
    assert frozen and all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(not torch.equal(after[n], v) for n, v in trained.items())
    assert result.epochs[-1].loss < result.epochs[0].loss


def test_every_method_reports_its_backward_memory():
    results = {m: finetune(replace(TINY, method=m, epochs=1, lr=None,
                                   sparse_updates=["last1"] if m == "sparse" else None))
               for m in ("full", "lora", "pac", "adapters", "sparse")}
    for r in results.values():
        e = r.epochs[0]
        assert e.grad_bytes == 4 * r.trainable_params  # float32 gradients of what trains
        assert e.optimizer_state_bytes >= 2 * e.grad_bytes  # AdamW's two moments
        assert r.backward_memory_bytes == e.saved_tensor_peak_bytes + e.grad_bytes + e.optimizer_state_bytes
        assert r.to_dict()["backward_memory_bytes"] == r.backward_memory_bytes
    assert results["sparse"].backward_memory_bytes < results["full"].backward_memory_bytes
    assert results["sparse"].saved_tensor_peak_bytes < results["full"].saved_tensor_peak_bytes


def _c(name: str, gain: float, extra: int) -> Contribution:
    c = Contribution([name], 0, 0.0, gain, 0, 0, 0, 0.01, extra_bytes=extra)
    c.gain_per_mb = gain / (extra / (1 << 20))
    return c


def test_greedy_selection_follows_gain_per_byte_under_the_budget():
    mb = 1 << 20
    ranked = [_c("a", 2.0, 4 * mb), _c("b", 3.0, 2 * mb), _c("c", 1.0, 1 * mb), _c("d", -1.0, mb), _c("e", 5.0, 9 * mb)]
    covers = {"a": {1}, "b": {2}, "c": {3}, "d": {4}, "e": {5}}
    chosen = greedy(ranked, mb, 8 * mb, lambda c: covers[c.names[0]])
    assert [c.names[0] for c in chosen] == ["b", "c", "a"]  # gain/MB 1.5, 1.0, 0.5; d loses, e does not fit
    covers["c"] = {2}  # c adds nothing b does not already train
    assert [c.names[0] for c in greedy(ranked, mb, 8 * mb, lambda c: covers[c.names[0]])] == ["b", "a"]


def test_contribution_analysis_ranks_by_gain_per_byte_and_fits_the_budget():
    cfg = replace(TINY, n_train=128, memory_budget_mb=0.9, sparse_updates=["bias", "last1", "ffn-last1", "last2"])
    tuner = Finetuner(cfg)
    sel = tuner.method.selection
    assert sel.measured.memory_bytes <= sel.budget_bytes == int(0.9 * (1 << 20))
    assert tuner.config.sparse_updates == sel.names and tuner.config.memory_budget_mb is None
    per_mb = [c.gain_per_mb for c in sel.ranked]
    assert per_mb == sorted(per_mb, reverse=True) and len(sel.ranked) == 4
    for c in sel.ranked:
        assert c.gain == pytest.approx(c.accuracy - sel.baseline.accuracy)
        assert c.memory_bytes > sel.baseline.memory_bytes  # every unit costs more than the head alone
    json.dumps(sel.to_dict())
    assert sel.calibration["n_train"] + sel.calibration["n_held_out"] <= cfg.n_train  # train split only
    with pytest.raises(SpecError, match="memory_budget_mb"):
        select_updates(replace(cfg, memory_budget_mb=1e-4), tuner.backbone, tuner.task)


def test_compiled_step_gives_the_eager_losses():
    tuner = Finetuner(replace(TINY, sparse_updates=["last1"]))
    result = compare_compiled(tuner, steps=3, seq_len=16, backends=("no-such-backend", "aot_eager"), warmup=1)
    assert result.backend == "aot_eager" and "no-such-backend" in result.failures
    assert len(result.compiled_losses) == 3
    assert result.compiled_losses == pytest.approx(result.eager_losses, abs=1e-4)
    assert result.eager_losses[0] != result.eager_losses[1]  # different batches, so the comparison is real


def test_cli_sparse_prints_the_selection_and_bad_budgets_exit_2(tmp_path):
    from typer.testing import CliRunner

    from edgepool.cli import app

    common = ["finetune", "--model", "bert-tiny", "--dataset", "synthetic", "--n-train", "96", "--n-test", "16",
              "--batch-size", "16", "--epochs", "1"]
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, common + ["--method", "sparse", "--memory-budget-mb", "2",
                                            "--sparse-updates", "bias,last1", "--output", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["method"] == "sparse" and report["selection"]["budget_bytes"] == 2 << 20
    assert report["config"]["sparse_updates"] == report["selection"]["names"]
    assert "backward_memory_bytes" in report and out.with_suffix(".png").exists()
    assert "sparse selection" in res.output and max(len(line) for line in res.output.splitlines()) <= 80
    for bad in (["--method", "pac", "--memory-budget-mb", "10"], ["--method", "sparse", "--memory-budget-mb", "0"],
                ["--method", "sparse", "--sparse-updates", "last0"]):
        res = CliRunner().invoke(app, common + bad)
        assert res.exit_code == 2, res.output
        assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("error:")


@pytest.mark.slow
def test_quick_comparison_reports_every_method():
    from edgepool.finetune.sparse_compare import compare_sparse

    seen = []
    r = compare_sparse(quick=True, progress=seen.append)
    assert set(r["methods"]) == {"full", "lora", "pac", "sparse"} and seen
    m = r["metrics"]
    full, sparse = r["methods"]["full"], r["methods"]["sparse"]
    assert m["sparse_memory_saving_vs_full"] == pytest.approx(
        1 - sparse["backward_memory_bytes"] / full["backward_memory_bytes"])
    assert sparse["backward_memory_bytes"] <= r["selection"]["budget_bytes"] + sparse["saved_tensor_bytes"]
    assert r["decoder"]["sparse"]["backward_memory_bytes"] < r["decoder"]["full"]["backward_memory_bytes"]
    json.dumps(r, default=str)


@pytest.mark.slow
def test_smollm2_decoder_trains_sparse_on_tweets():
    cfg = FinetuneConfig(model="smollm2-135m", method="sparse", sparse_updates=["last1"], dataset="tweet-sentiment",
                         n_train=16, n_test=8, epochs=2, batch_size=8, max_length=24, threads=2, lr=1e-3)
    tuner = Finetuner(cfg)
    assert tuner.backbone.kind == "decoder" and len(blocks(tuner.backbone.model)) == 30
    assert earliest_trainable_block(tuner.backbone.model) == 29
    probe = BackwardProbe(tuner.backbone.model, 29)
    result = tuner.run()
    assert probe.input_requires_grad is False
    assert result.epochs[-1].loss < result.epochs[0].loss
    assert result.trainable_params < result.total_params // 20


@pytest.mark.slow
def test_cli_subprocess_rejects_a_budget_for_another_method():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", "from edgepool.cli import main; main()", "finetune", "--method",
                          "lora", "--memory-budget-mb", "5"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "memory_budget_mb" in res.stderr
