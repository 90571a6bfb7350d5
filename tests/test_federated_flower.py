"""Real Flower deployments (SuperLink + SuperNodes as processes; on the testbed when root): a run completes
its rounds, and a SuperNode SIGKILLed in the middle of a round costs that round only its reply."""
import pytest

from edgepool.catalog import get_device
from edgepool.cluster import Cluster
from edgepool.federated.deployment import KillPlan, run_on_flower
from edgepool.federated.planning import raw_spec
from edgepool.federated.tasks import image_data
from edgepool.testbed.system import unavailable_reason

pytestmark = pytest.mark.slow
LAUNCHER = "testbed" if unavailable_reason() is None else "local"


def _cluster():
    devices = [get_device("rpi5").model_copy(update={"name": n}) for n in ("server", "a", "b", "c")]
    return Cluster.uniform(devices, bandwidth=5e6, name="four-pis")


@pytest.mark.timeout(400)
def test_a_supernode_killed_mid_round_loses_no_round(tmp_path):
    labels = image_data("digits", 0).train_y
    spec = raw_spec("fedavg", ["a", "b", "c"], labels, alpha=0.5, rounds=2, batch=32, steps=8, lr=3e-3,
                    task="digits", round_timeout_s=25.0)
    events = []
    report = run_on_flower(spec, _cluster(), "server", tmp_path, launcher=LAUNCHER, kill=KillPlan("c", 1, 0.5),
                           on_event=events.append, cpu_budget=1.6, max_cores_per_device=0.4, memory_scale=None)
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert report["killed"]["device"] == "c"
    assert "c" in rounds[0]["failures"] and "c" not in rounds[1]["replies"]
    assert sorted(rounds[1]["replies"]) == ["a", "b"]  # the round after the crash completes with the others
    assert rounds[1]["accuracy"] > report["initial_accuracy"]  # and the model still learns
    assert sorted(report["devices"].values()) == ["a", "b", "c"]
    assert [e["round"] for e in events if e["event"] == "round-finished"] == [1, 2]
    assert report["where"]["launcher"] == LAUNCHER
