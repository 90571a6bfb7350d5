import json

import pytest

from edgepool.cluster import load_cluster
from edgepool.errors import SpecError
from edgepool.plan import PLAN_VERSION, load_plan, plan_from_dict
from edgepool.report import Report, TimelineEvent

GOOD = {
    "planner": "hybrid", "model": "gpt2", "cluster": "home", "num_layers": 4, "batch": 8, "microbatches": 4,
    "pipelines": [{"stages": [
        {"layers": [0, 2], "devices": ["laptop"], "shares": [1.0]},
        {"layers": [2, 4], "devices": ["jetson", "pi"], "shares": [0.75, 0.25]},
    ]}],
}


def with_stage(**change):
    stage = {**GOOD["pipelines"][0]["stages"][1], **change}
    return {**GOOD, "pipelines": [{"stages": [GOOD["pipelines"][0]["stages"][0], stage]}]}


def test_round_trip_and_save(tmp_path):
    plan = plan_from_dict(GOOD)
    path = tmp_path / "plan.json"
    plan.save(path)
    again = load_plan(path, cluster=load_cluster("home"), num_layers=4, model="gpt2")
    assert again == plan and again.devices == ["laptop", "jetson", "pi"]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("raw, field, accepted", [
    ({**GOOD, "version": 99}, "version", str(PLAN_VERSION)),
    ({**GOOD, "kind": "baking"}, "kind", "training"),
    ({**GOOD, "batch": 0}, "batch", "greater than 0"),
    ({**GOOD, "schedule": "zigzag"}, "schedule", "1f1b"),
    ({**GOOD, "precision": "fp8"}, "precision", "fp32"),
    ({**GOOD, "colour": 1}, "colour", "Extra inputs"),
    ({k: v for k, v in GOOD.items() if k != "model"}, "model = None", "the field is required"),
    ({**GOOD, "num_layers": 5}, "pipelines[0].stages[1].layers = [2, 4]", "ending at num_layers = 5"),
    (with_stage(shares=[0.5, 0.2]), "shares", "sum to 1"),
    (with_stage(shares=[1.0]), "shares", "devices has 2"),
    (with_stage(layers=[3, 4]), "pipelines[0].stages[1].layers = [3, 4]", "starting at 2"),
    (with_stage(layers=[2, 2]), "layers", "start < end"),
    (with_stage(devices=["laptop", "pi"]), "pipelines[0].stages[1].devices = 'laptop'", "no other stage"),
    (with_stage(devices=["pi", "pi"]), "stages", "twice"),
    (with_stage(parallel="magic"), "parallel", "tensor"),
    ({**GOOD, "feasible": False}, "infeasible_reason = None", "feasible is false"),
    ({**GOOD, "pipelines": []}, "pipelines", "at least 1"),
    ([1, 2], "(top level)", "JSON object"),
])
def test_malformed_plans_are_rejected_with_the_field(raw, field, accepted):
    with pytest.raises(SpecError) as info:
        plan_from_dict(raw, source="p.json")
    assert field in str(info.value) and accepted in str(info.value)
    assert "(plan)" not in str(info.value) and len(str(info.value)) < 300  # names a field, never the whole plan


def test_mismatched_plans_are_rejected(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(GOOD))
    with pytest.raises(SpecError, match="another cluster"):
        load_plan(path, cluster=load_cluster("jetson-lab"))
    lab = tmp_path / "lab.json"  # the devices exist in home, but the plan says it was made for jetson-lab
    lab.write_text(json.dumps({**GOOD, "cluster": "jetson-lab"}))
    with pytest.raises(SpecError, match="cluster = 'jetson-lab'.*accepted: 'home'.*--other-cluster"):
        load_plan(lab, cluster=load_cluster("home"))
    assert load_plan(lab, cluster=load_cluster("home"), other_cluster=True).cluster == "jetson-lab"
    for emulated in ("home (emulated here)", "home[3]"):  # plans made for the cluster as emulated here, or a part
        path.with_name("e.json").write_text(json.dumps({**GOOD, "cluster": emulated}))
        assert load_plan(path.with_name("e.json"), cluster=load_cluster("home")).cluster == emulated
    with pytest.raises(SpecError, match="another model"):
        load_plan(path, num_layers=14)
    with pytest.raises(SpecError, match="model"):
        load_plan(path, model="bert-base")
    path.write_text("{ not json")
    with pytest.raises(SpecError, match="JSON syntax.*line 1, column 3"):
        load_plan(path)
    with pytest.raises(SpecError, match="existing plan"):
        load_plan(tmp_path / "missing.json")
    with pytest.raises(SpecError, match="existing plan"):
        load_plan(tmp_path)  # a directory


def test_report_round_trip_and_relative_error(tmp_path):
    sim = Report(source="simulated", where="simulator", throughput=12.0,
                 timeline=[TimelineEvent(device="a", kind="fwd", start=0, end=1, microbatch=0, stage=0)])
    real = Report(source="measured", where="test", throughput=10.0)
    assert sim.relative_error(real) == pytest.approx(0.2)
    sim.save(tmp_path / "r.json")
    assert Report.load(tmp_path / "r.json") == sim
