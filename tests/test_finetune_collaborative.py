"""Collaborative PAC (real processes over gloo) equals single-process PAC on the same global batches."""
from __future__ import annotations

import pytest
import torch

from edgepool.finetune import FinetuneConfig, Finetuner
from edgepool.finetune.collaborative import CollaborativeLayout, proportional_split, run_collaborative
from edgepool.errors import SpecError

CFG = FinetuneConfig(model="bert-tiny", dataset="synthetic", method="pac", n_train=48, n_test=16, epochs=2,
                     batch_size=16, threads=1)


def test_proportional_split_is_contiguous_and_follows_speed():
    bounds = proportional_split(7, [3.0, 1.0])
    assert bounds[0][0] == 0 and bounds[-1][1] == 7 and bounds[0][1] == bounds[1][0]
    assert bounds[0][1] - bounds[0][0] > bounds[1][1] - bounds[1][0]
    assert proportional_split(3, [1.0, 1e-9, 1.0]) == [(0, 1), (1, 2), (2, 3)]  # every stage gets a state
    with pytest.raises(SpecError):
        proportional_split(2, [1.0, 1.0, 1.0])


@pytest.mark.slow
def test_collaborative_pac_equals_single_process_pac(tmp_path):
    devices, speeds = ["fast", "slow"], [2.0, 1.0]
    collab = run_collaborative(CFG, devices, speeds, out_dir=str(tmp_path))
    assert [r["cached_samples"] for r in collab["ranks"]] == collab["layout"]["shares"]
    assert collab["layout"]["stages"][0][0] == 0 and collab["layout"]["stages"][-1][1] == 3

    single = Finetuner(CFG)
    layout = CollaborativeLayout.build(devices, speeds, single.backbone.num_states, CFG.n_train)
    result = single.run(shares=layout.shares)
    remote = torch.load(collab["adapters_path"])
    for name, value in single.adapters.state_dict().items():
        assert torch.allclose(value, remote[name], atol=1e-5), name
    assert abs(result.final_accuracy - collab["final_accuracy"]) < 1e-6
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in remote.items() if k.startswith("up"))


def test_layout_from_a_planner_plan():
    from edgepool.plan import PipelinePlan, Plan, StagePlan

    stages = [StagePlan(layers=(0, 5), devices=["a"], shares=[1.0]), StagePlan(layers=(5, 7), devices=["b"], shares=[1.0])]
    plan = Plan(planner="manual", model="all-minilm-l6-v2", cluster="pair", num_layers=7, batch=32,
                pipelines=[PipelinePlan(stages=stages)])
    layout = CollaborativeLayout.from_plan(plan, num_states=7, n_train=70, speeds={"a": 3.0, "b": 1.0})
    assert layout.devices == ["a", "b"] and layout.stages == [(0, 5), (5, 7)]
    assert [len(s) for s in layout.shares] == [53, 17] or [len(s) for s in layout.shares] == [52, 18]
    with pytest.raises(SpecError, match="stages"):
        CollaborativeLayout.from_plan(plan, num_states=9, n_train=70)
