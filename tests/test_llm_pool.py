"""Issue 16, items 5 and 6: the serving engine over a real checkpoint (SmolLM2-135M-Instruct), in one process and
as a pool of stage processes, answers greedily exactly as `transformers`' `generate` does, token for token:
for 1, 2 and 3 (uneven) stages, with preemption by recompute and by swap, after a stage's process is killed with
SIGKILL mid-generation (no request lost, the survivors re-planned to hold every layer), after a device joins,
and with the stages started by pool agents, one of which leaves.

The pooled tests start real worker processes (`LocalLauncher`) and are marked slow; each pool is started once per
module and shared by the tests that need its stage count (a pool start costs ~10 s on two cores). The unit tests
at the top (micro-batches, even stages, `Scheduler.restart_all`) need no model.
"""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import pytest
import torch

from edgepool.llm.pool import PooledExecutor, Stage, even_stages, microbatches
from edgepool.serving.block_manager import BlockManager
from edgepool.serving.policies import VllmPolicy
from edgepool.serving.preemption import PreemptionMode
from edgepool.serving.request import Request, RequestState
from edgepool.serving.scheduler import Scheduler

NUM_LAYERS = 30          # SmolLM2-135M
MAX_NEW = 20
QUESTIONS = [            # chat prompts of different lengths; some answers end with EOS, one runs to MAX_NEW
    "What is the capital of France?",
    "Name three colors.",
    "Why is the sky blue? Answer in one sentence.",
    "Write one sentence about the sea, the moon and the stars at night, please.",
]
FEW_BLOCKS = 12          # 12 blocks of 16 tokens: the 4 prompts (3 blocks each) start; the first to need a 4th preempts


# ---------------------------------------------------------------------------------------------------------------
# Units: no model, no processes
# ---------------------------------------------------------------------------------------------------------------
def _req(i: int, tokens: int, arrival: float = 0.0, max_new: int = 50) -> Request:
    return Request(request_id=f"r{i}", prompt_len=tokens, max_new_tokens=max_new, arrival_time=arrival,
                   prompt_tokens=[5] * tokens)


@pytest.mark.parametrize("sizes, count", [
    ([10, 10, 10, 10], 2), ([10, 10, 10, 10], 4), ([1] * 7, 3), ([100, 1, 1, 1], 3), ([3, 50, 2, 40, 7], 3),
    ([5, 5], 5), ([5, 5, 5], 1), ([8], 3), ([5, 5, 5], 0),
])
def test_microbatches_split_in_order_into_nonempty_balanced_groups(sizes, count):
    requests = [_req(i, n) for i, n in enumerate(sizes)]
    groups = microbatches(requests, count)
    assert len(groups) == max(1, min(count, len(requests)))
    assert all(groups), groups
    assert [r for g in groups for r in g] == requests          # contiguous, in the batch's order
    loads = [sum(r.tokens_to_compute for r in g) for g in groups]
    assert max(loads) - min(loads) <= max(sizes)               # balanced up to one request
    if len(set(sizes)) == 1:                                   # equal requests: group sizes differ by at most one
        assert max(map(len, groups)) - min(map(len, groups)) <= 1


def test_microbatches_balance_by_tokens_still_to_compute():
    requests = [_req(i, 40) for i in range(4)]
    requests[0].num_computed = requests[1].num_computed = 39     # two decoding (1 token), two prefilling (40)
    groups = microbatches(requests, 2)
    assert [len(g) for g in groups] == [3, 1]                 # 1 + 1 + 40 against 40


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 30])
def test_even_stages_cover_every_layer_once_in_device_order(k):
    devices = [f"d{i}" for i in range(k)]
    stages = even_stages(devices, NUM_LAYERS)
    assert [s.device for s in stages] == devices
    assert stages[0].first == 0 and stages[-1].end == NUM_LAYERS
    assert all(a.end == b.first for a, b in zip(stages, stages[1:]))
    sizes = [s.end - s.first for s in stages]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_even_stages_examples():
    assert even_stages(["a", "b", "c"], 30) == [Stage("a", 0, 10), Stage("b", 10, 20), Stage("c", 20, 30)]
    assert even_stages(["a"], 30) == [Stage("a", 0, 30)]
    assert [s.end - s.first for s in even_stages(list("abcd"), 30)] in ([8, 7, 7, 8], [7, 8, 7, 8], [8, 7, 8, 7])


class _SwapPolicy(VllmPolicy):
    """vLLM's choices, but a victim is swapped to the host pool instead of recomputed."""

    name = "swap"

    def preempt_mode(self, victim, view, costs):
        return PreemptionMode.SWAP


def test_restart_all_requeues_in_arrival_order_keeps_outputs_and_replaces_blocks():
    old = BlockManager(6, 4, 8)
    scheduler = Scheduler(_SwapPolicy(), old, max_batch_tokens=64)
    live = [_req(i, 4, arrival=0.1 * i, max_new=12) for i in range(3)]
    for r in live:
        scheduler.add(r)
    for step in range(30):                                     # decode until one request is swapped out
        plan = scheduler.schedule()
        scheduler.complete(plan, {r.request_id: 100 + step for r in plan.batch}, now=float(step))
        if scheduler.swapped:
            break
    assert scheduler.swapped and scheduler.running, "the scenario needs a running and a swapped request"
    late = _req(9, 4, arrival=5.0, max_new=12)
    scheduler.add(late)                                        # a new request, still waiting
    outputs = {r.request_id: list(r.output_tokens) for r in live}
    computed = sum(r.num_computed for r in scheduler.running + scheduler.swapped)
    recomputed_before = scheduler.stats.recomputed_tokens
    live_ids = {r.request_id for r in scheduler.running + scheduler.swapped}

    new = BlockManager(12, 4, 8)
    requeued = scheduler.restart_all(new)

    assert [r.request_id for r in requeued] == sorted(live_ids)                      # arrival order
    assert list(scheduler.waiting) == requeued + [late]                           # ahead of new requests
    assert scheduler.running == [] and scheduler.swapped == []
    assert scheduler.blocks is new and new.num_used == 0
    assert scheduler.stats.recomputed_tokens == recomputed_before + computed
    for r in requeued:
        assert r.state is RequestState.WAITING and r.num_computed == 0 and r.recomputes >= 1
        assert r.output_tokens == outputs[r.request_id] and r.num_generated == len(r.output_tokens) > 0
        assert r.input_ids_to_compute() == r.prompt_tokens + r.output_tokens     # recompute every token it has
    plan = scheduler.schedule()                                # next step: recompute on the new blocks only
    assert plan.batch[:len(requeued)] == requeued and not plan.swap_in and not plan.swap_out
    for r in requeued:
        assert r.tokens_to_compute == r.total_tokens
        assert len(new.table(r.request_id)) == new.blocks_for(r.total_tokens)


# ---------------------------------------------------------------------------------------------------------------
# The real checkpoint
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt():
    from edgepool.llm.checkpoint import resolve_checkpoint
    return resolve_checkpoint(progress=False)    # converted once per machine (~45 s), then cached


@pytest.fixture(scope="module")
def tokenizer(ckpt):
    from edgepool.llm.tokenizer import ChatTokenizer
    return ChatTokenizer.from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    ids = [tokenizer.chat([{"role": "user", "content": q}]) for q in QUESTIONS]
    assert len({len(p) for p in ids}) == len(ids), "the prompts must differ in length"
    return ids


@pytest.fixture(scope="module")
def reference(ckpt, prompts, tokenizer) -> list[list[int]]:
    """`transformers`' greedy generate, one prompt at a time, stopping at EOS (EOS included, as the engine)."""
    from edgepool.llm.checkpoint import load_full_model
    model = load_full_model(ckpt)
    with torch.inference_mode():
        out = [model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=MAX_NEW, do_sample=False)[0, len(p):].tolist() for p in prompts]
    assert any(o[-1] == tokenizer.eos_id for o in out) and any(tokenizer.eos_id not in o for o in out)
    assert tokenizer.decode(out[0]).strip() == "The capital of France is Paris."
    return out


def _engine(ckpt, tokenizer, *, pool=None, model=None, num_blocks: int = 64, policy=None):
    from edgepool.serving.engine import Engine, EngineConfig
    config = EngineConfig(model=ckpt.name, num_blocks=num_blocks, block_size=16, num_host_blocks=32,
                          max_batch_tokens=num_blocks * 16)
    if pool is not None:
        assert num_blocks <= pool.num_blocks
        return Engine(config, executor=pool, model_config=ckpt.config(), tokenizer=tokenizer, policy=policy)
    return Engine(config, model=model, tokenizer=tokenizer, policy=policy)


def _generate(engine, prompts, prefix: str, after_step=None, max_steps: int = 400) -> list[Request]:
    """All prompts admitted at once, greedy, stopping at EOS; `after_step(n, requests)` after step n."""
    requests = [engine.make_request(f"{prefix}{i}", p, MAX_NEW, stop_at_eos=True) for i, p in enumerate(prompts)]
    for r in requests:
        engine.add(r)
    steps = 0
    while engine.has_work():
        engine.step()
        steps += 1
        assert steps < max_steps, "the engine does not finish"
        if after_step is not None:
            after_step(steps, requests)
    return requests


def _assert_equal(requests: list[Request], reference: list[list[int]]) -> None:
    assert [r.state for r in requests] == [RequestState.FINISHED] * len(requests), [r.error for r in requests]
    assert [r.output_tokens for r in requests] == reference


# --- one process ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_model(ckpt):
    from transformers import LlamaForCausalLM

    from edgepool.serving.engine import ATTENTION_NAME
    model = LlamaForCausalLM.from_pretrained(ckpt.folder, dtype=torch.float32, local_files_only=True).eval()
    model.set_attn_implementation(ATTENTION_NAME)
    return model


def test_local_engine_equals_transformers_generate(ckpt, tokenizer, local_model, prompts, reference):
    _assert_equal(_generate(_engine(ckpt, tokenizer, model=local_model), prompts, "l"), reference)


def test_local_engine_from_service_equals_transformers_generate(ckpt, prompts, reference):
    from edgepool.llm.service import local_engine
    engine = local_engine(ckpt)
    _assert_equal(_generate(engine, prompts, "s"), reference)


def test_local_engine_with_recompute_preemption_equals_generate(ckpt, tokenizer, local_model, prompts, reference):
    engine = _engine(ckpt, tokenizer, model=local_model, num_blocks=FEW_BLOCKS)
    requests = _generate(engine, prompts, "p")
    assert engine.scheduler.stats.preempt_recompute > 0 and any(r.recomputes for r in requests)
    _assert_equal(requests, reference)


def test_local_engine_with_swap_preemption_equals_generate(ckpt, tokenizer, local_model, prompts, reference):
    engine = _engine(ckpt, tokenizer, model=local_model, num_blocks=FEW_BLOCKS, policy=_SwapPolicy())
    requests = _generate(engine, prompts, "w")
    assert engine.scheduler.stats.preempt_swap > 0 and any(r.swaps for r in requests)
    _assert_equal(requests, reference)


# --- pools of stage processes -----------------------------------------------------------------------------------
def _uneven(devices: list[str]) -> list[Stage]:
    """Re-plan used by the 3-stage pool: device i gets a share of the layers proportional to i + 1."""
    weights = list(range(1, len(devices) + 1))
    edges = [round(NUM_LAYERS * sum(weights[:i]) / sum(weights)) for i in range(len(devices) + 1)]
    return [Stage(d, a, b) for d, a, b in zip(devices, edges, edges[1:])]


@contextmanager
def _pool(ckpt, stages: list[Stage], replan=lambda devices: even_stages(devices, NUM_LAYERS)):
    from edgepool.testbed.launcher import LocalLauncher
    with LocalLauncher() as launcher:
        pool = PooledExecutor(ckpt.folder, stages, launcher, num_blocks=lambda st: 64, replan=replan)
        try:
            yield pool
        finally:
            pool.close()


@pytest.fixture(scope="module")
def pool1(ckpt):
    with _pool(ckpt, [Stage("a", 0, NUM_LAYERS)]) as pool:
        yield pool


@pytest.fixture(scope="module")
def pool2(ckpt):
    with _pool(ckpt, [Stage("a", 0, 7), Stage("b", 7, NUM_LAYERS)]) as pool:
        yield pool


@pytest.fixture(scope="module")
def pool3(ckpt):
    with _pool(ckpt, [Stage("a", 0, 5), Stage("b", 5, 17), Stage("c", 17, NUM_LAYERS)], replan=_uneven) as pool:
        yield pool


def _covers_all_layers(pool) -> bool:
    """The stages hold layers [0, 30) between them, each a non-empty range, each once, in order."""
    edges = [(s.first, s.end) for s in pool.stages]
    return edges[0][0] == 0 and edges[-1][1] == NUM_LAYERS and all(a < b for a, b in edges) \
        and all(x[1] == y[0] for x, y in zip(edges, edges[1:]))


def _alive(pool) -> list[str]:
    return [h.device for h in pool._handles if h.poll() is None]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["pool1", "pool2", "pool3"])
def test_pooled_engine_equals_transformers_generate(request, which, ckpt, tokenizer, prompts, reference):
    pool = request.getfixturevalue(which)
    assert len(pool.stages) == int(which[-1]) and _covers_all_layers(pool)
    engine = _engine(ckpt, tokenizer, pool=pool)
    _assert_equal(_generate(engine, prompts, f"{which}-"), reference)
    assert not pool.events and _alive(pool) == pool.devices


@pytest.mark.slow
def test_pooled_engine_with_recompute_preemption_equals_generate(pool2, ckpt, tokenizer, prompts, reference):
    engine = _engine(ckpt, tokenizer, pool=pool2, num_blocks=FEW_BLOCKS)
    requests = _generate(engine, prompts, "pp")
    assert engine.scheduler.stats.preempt_recompute > 0 and any(r.recomputes for r in requests)
    _assert_equal(requests, reference)


@pytest.mark.slow
def test_pooled_engine_with_swap_preemption_equals_generate(pool2, ckpt, tokenizer, prompts, reference):
    engine = _engine(ckpt, tokenizer, pool=pool2, num_blocks=FEW_BLOCKS, policy=_SwapPolicy())
    requests = _generate(engine, prompts, "pw")
    assert engine.scheduler.stats.preempt_swap > 0 and any(r.swaps for r in requests)
    _assert_equal(requests, reference)


@pytest.mark.slow
def test_killed_stage_loses_no_request_and_output_stays_equal(pool3, ckpt, tokenizer, prompts, reference):
    engine = _engine(ckpt, tokenizer, pool=pool3)
    before = len(pool3.events)
    middle = pool3.devices[len(pool3.devices) // 2]
    killed = {}

    def kill_middle(step: int, requests: list[Request]) -> None:
        if step == 4:
            assert not any(r.is_done for r in requests) and all(r.output_tokens for r in requests)
            victim = next(h for h in pool3._handles if h.device == middle)
            os.kill(victim.pid, signal.SIGKILL)
            killed["tokens"] = [len(r.output_tokens) for r in requests]

    requests = _generate(engine, prompts, "k", after_step=kill_middle)
    assert killed, "the stage was never killed"
    _assert_equal(requests, reference)                          # none lost or failed, none repeated or skipped
    assert all(r.recomputes >= 1 for r in requests)             # each recomputed its KV from its own tokens
    events = pool3.events[before:]
    assert [(e.kind, e.devices) for e in events] == [("left", [middle])]
    assert middle not in pool3.devices and len(pool3.devices) == 2 and _covers_all_layers(pool3)
    assert _alive(pool3) == pool3.devices
    assert events[0].stages == pool3.stages and events[0].recovery_s > 0


@pytest.mark.slow
def test_joined_device_is_used_after_the_next_step(pool3, ckpt, tokenizer, prompts, reference):
    engine = _engine(ckpt, tokenizer, pool=pool3)
    before, generation = len(pool3.events), pool3.generation

    def join(step: int, requests: list[Request]) -> None:
        if step == 3:
            assert not any(r.is_done for r in requests)
            pool3.join("d")
            assert "d" not in pool3.devices                     # not yet: at the next step

    requests = _generate(engine, prompts, "j", after_step=join)
    _assert_equal(requests, reference)
    events = pool3.events[before:]
    assert [(e.kind, e.devices) for e in events] == [("joined", ["d"])]
    assert pool3.generation == generation + 1 and pool3.devices[-1] == "d" and _covers_all_layers(pool3)
    assert pool3.stages == _uneven(pool3.devices)               # the replan that uses it
    assert _alive(pool3) == pool3.devices and pool3.stage_bytes["d"] > 0
    assert pool3._step > 0                                      # steps ran on the generation that includes d


def test_a_pool_that_shrinks_ends_what_no_longer_fits_and_caps_the_rest():
    """After a re-plan to fewer KV blocks no request waits forever: one whose tokens no longer fit ends,
    finished with every token it has; the others generate only what the smaller cache holds."""
    from edgepool.serving.engine import Engine, EngineConfig, PoolChanged

    engine = Engine(EngineConfig(model="llama-tiny", num_blocks=16, block_size=8, num_host_blocks=8,
                                 max_batch_tokens=128))
    long = engine.make_request("long", list(range(3, 60)), 40, stop_at_eos=False)
    short = engine.make_request("short", list(range(3, 10)), 40, stop_at_eos=False)
    for request in (long, short):
        engine.add(request)
    for _ in range(5):
        engine.step()
    run = engine.executor.execute

    def shrink(plan):
        engine.executor.execute = run
        raise PoolChanged("a device left", num_blocks=4)   # 32 tokens of KV cache from now on

    engine.executor.execute = shrink
    step = engine.step()
    assert step.finished == [long] and long.state is RequestState.FINISHED and long.num_generated == 5
    assert short.max_new_tokens == 4 * 8 + 1 - short.prompt_len
    while engine.has_work():
        engine.step()
    assert short.state is RequestState.FINISHED and short.num_generated == short.max_new_tokens


@pytest.mark.slow
def test_stages_on_pool_agents_replan_when_an_agent_leaves(ckpt, tokenizer, prompts, reference):
    """The same engine with its stages started by the pool's agents (`PoolLauncher`): an agent that leaves
    mid-generation takes its stage with it; the engine re-plans on the others and every answer stays exact."""
    from pool_local import local_pool

    with local_pool(("a", "b", "c")) as p, p.launcher() as launcher:
        pool = PooledExecutor(ckpt.folder, [Stage("a", 0, 10), Stage("b", 10, 20), Stage("c", 20, NUM_LAYERS)],
                              launcher, num_blocks=lambda st: 64, replan=lambda d: even_stages(d, NUM_LAYERS))
        try:
            engine = _engine(ckpt, tokenizer, pool=pool)
            requests = _generate(engine, prompts, "pa",
                                 after_step=lambda step, _: step == 4 and p.agents["b"].close())
            _assert_equal(requests, reference)
            assert [(e.kind, e.devices) for e in pool.events] == [("left", ["b"])]
            assert pool.devices == ["a", "c"] and _covers_all_layers(pool)
        finally:
            pool.close()
