"""Inference planner: picks, for a cluster, a model profile and a request shape, among one device, tensor
(+ sequence) parallelism, a layer pipeline and hybrids of both, with split ratios from the cost model.

Candidates (each scored with `simulate.simulate_inference`, the same cost model the simulator uses):
- `single`: the whole model on one device (every device that fits);
- `galaxy`: Galaxy-style hybrid tensor + sequence parallelism on the k fastest devices (k = 2..n), shares in
  proportion to each device's speed on the model's layers and capped by its memory, tiles chosen from 1, 2 and
  4, or the same uneven shares with Megatron-style all-reduce instead of the sequence split (the only choice
  for a decode step, whose one token cannot be split by rows);
- `megatron-even`: even tensor parallelism over all devices with all-reduce (Megatron-LM; the baseline);
- `layer-pipeline`: contiguous layer ranges in proportion to speed, capped by memory (EdgeShard / exo);
- `hybrid`: a pipeline of two tensor-parallel groups, cutting the devices (sorted by speed) at each point.
Plans that exceed a device's memory are reported infeasible, never chosen; when nothing fits, the returned plan
says so (`feasible=False`).
"""
from __future__ import annotations

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.errors import SpecError
from edgepool.runtime.probes.comm import CommCosts
from edgepool.inference.simulate import RequestShape, layer_time, simulate_inference
from edgepool.plan import PipelinePlan, Plan, StagePlan
from edgepool.profile import ModelProfile

STRATEGIES = ("auto", "tp", "even-tp", "pipeline", "single", "hybrid")
TILE_CHOICES = (1, 2, 4)


def _plan(name: str, profile: ModelProfile, cluster: Cluster, shape: RequestShape, stages: list[StagePlan],
          tiles: int = 1, **notes) -> Plan:
    return Plan(kind="inference", planner=name, model=profile.model, cluster=cluster.name,
                num_layers=len(profile.layers), batch=shape.batch, seq=shape.seq + shape.context, schedule="none",
                pipelines=[PipelinePlan(stages=stages)],
                notes={"tiles": tiles, "phase": shape.phase, "new_tokens": shape.seq, "context": shape.context,
                       **notes})


def layer_rates(profile: ModelProfile, cluster: Cluster, cost: CostModel, shape: RequestShape,
                names: list[str] | None = None) -> dict[str, float]:
    """1 / time of the model's transformer layers on each device for this request: bigger is faster. Not the
    device's FLOP/s (`costmodel.device_speed`): memory bandwidth and KV-cache reads count too."""
    names = names or list(cluster.devices)
    out = {}
    for n in names:
        t = sum(layer_time(cost, profile, i, cluster.devices[n], 1.0, shape) for i in range(1, len(profile.layers) - 1))
        out[n] = 1.0 / max(t, 1e-12)
    return out


def _memory_capped_shares(speeds: list[float], caps: list[float]) -> list[float] | None:
    """Shares proportional to speed, no share above its cap (fraction of the layers' weights a device can
    hold); the excess goes to the others in proportion to speed. None when the caps sum below 1."""
    if sum(caps) < 1.0 - 1e-9:
        return None
    shares = [0.0] * len(speeds)
    free = list(range(len(speeds)))
    remaining = 1.0
    while free:
        total = sum(speeds[i] for i in free)
        proposal = {i: remaining * speeds[i] / total for i in free}
        over = [i for i in free if proposal[i] > caps[i]]
        if not over:
            for i in free:
                shares[i] = proposal[i]
            break
        for i in over:
            shares[i] = caps[i]
            remaining -= caps[i]
            free.remove(i)
    s = sum(shares)
    return [x / s for x in shares]


def _weight_caps(profile: ModelProfile, cluster: Cluster, names: list[str], cost: CostModel) -> list[float]:
    """Largest share of the transformer layers' weights each device can hold after embedding and head."""
    middle = sum(l.param_bytes for l in profile.layers[1:-1]) or 1.0
    fixed = profile.layers[0].param_bytes + profile.layers[-1].param_bytes
    return [max(0.0, (cluster.devices[n].memory_bytes * 0.9 - fixed - cost.runtime_overhead_bytes) / middle)
            for n in names]


def _tensor_stage(layers: tuple[int, int], names: list[str], shares: list[float], shape: RequestShape) -> StagePlan:
    if len(names) == 1:
        return StagePlan(layers=layers, devices=names, shares=[1.0])
    parallel = "tensor+sequence" if shape.phase == "prefill" and shape.seq >= len(names) else "tensor"
    return StagePlan(layers=layers, devices=names, shares=shares, parallel=parallel)


def _contiguous_ranges(num_blocks: int, weights: list[float]) -> list[tuple[int, int]]:
    """Cut the transformer layers (blocks 1..n-2) into len(weights) non-empty ranges of sizes ~ weights; the
    embedding goes with the first range, the head with the last."""
    middle, k = num_blocks - 2, len(weights)
    if k > middle:
        raise ValueError(f"cannot cut {middle} layers into {k} non-empty stages")
    total, acc, cuts = sum(weights), 0.0, [0]
    for i, w in enumerate(weights[:-1]):
        acc += w
        cut = round(acc / total * middle)
        cuts.append(min(max(cut, cuts[-1] + 1), middle - (k - 1 - i)))
    edges = [0] + [1 + c for c in cuts[1:]] + [num_blocks]
    return list(zip(edges, edges[1:]))


def split_layers(profile: ModelProfile, cluster: Cluster, names: list[str], speeds: dict[str, float],
                 cost: CostModel) -> list[tuple[int, int]] | None:
    """Contiguous layer ranges for a pipeline over `names`, in proportion to speed and within each device's
    memory (EdgeShard-style); None when the devices cannot hold the model together."""
    n = len(profile.layers)
    per_block = [l.param_bytes for l in profile.layers]
    capacity = [cluster.devices[d].memory_bytes * 0.9 - cost.runtime_overhead_bytes for d in names]
    if sum(per_block) > sum(capacity):
        return None
    ranges = _contiguous_ranges(n, [speeds[d] for d in names])
    # repair: move boundary layers from a device over its memory to its neighbour
    for _ in range(4 * n):
        loads = [sum(per_block[a:b]) for a, b in ranges]
        over = [i for i, (load, cap) in enumerate(zip(loads, capacity)) if load > cap]
        if not over:
            return ranges
        i = over[0]
        a, b = ranges[i]
        if i + 1 < len(ranges) and b - a > 1:
            ranges[i] = (a, b - 1)
            ranges[i + 1] = (b - 1, ranges[i + 1][1])
        elif i > 0 and b - a > 1:
            ranges[i] = (a + 1, b)
            ranges[i - 1] = (ranges[i - 1][0], a + 1)
        else:
            return None
    return None


def candidates(profile: ModelProfile, cluster: Cluster, shape: RequestShape, cost: CostModel,
               devices: list[str] | None = None) -> dict[str, Plan]:
    """Every candidate plan, by a descriptive key."""
    names = devices or list(cluster.devices)
    speeds = layer_rates(profile, cluster, cost, shape, names)
    fastest = sorted(names, key=lambda d: -speeds[d])
    n_blocks = len(profile.layers)
    whole = (0, n_blocks)
    out: dict[str, Plan] = {}
    for d in names:
        out[f"single:{d}"] = _plan("single", profile, cluster, shape, [StagePlan(layers=whole, devices=[d], shares=[1.0])])
    for k in range(2, len(fastest) + 1):
        group = fastest[:k]
        shares = _memory_capped_shares([speeds[d] for d in group], _weight_caps(profile, cluster, group, cost))
        if shares is None:
            continue
        stage = _tensor_stage(whole, group, shares, shape)
        for tiles in (TILE_CHOICES if stage.parallel == "tensor+sequence" else (1,)):
            out[f"galaxy:{k}:tiles{tiles}"] = _plan("galaxy", profile, cluster, shape, [stage], tiles=tiles)
        if stage.parallel == "tensor+sequence":  # the same uneven shares with all-reduce, no sequence split
            out[f"galaxy:{k}:allreduce"] = _plan("galaxy", profile, cluster, shape, [stage.model_copy(
                update={"parallel": "tensor"})])
    if len(names) > 1:
        out["megatron-even"] = _plan("megatron-even", profile, cluster, shape, [StagePlan(
            layers=whole, devices=list(names), shares=[1.0 / len(names)] * len(names), parallel="tensor")])
        if n_blocks - 2 >= len(names):
            ranges = split_layers(profile, cluster, fastest, speeds, cost)
            if ranges is not None:
                out["layer-pipeline"] = _plan("layer-pipeline", profile, cluster, shape, [
                    StagePlan(layers=r, devices=[d], shares=[1.0]) for r, d in zip(ranges, fastest)])
        for cut in range(1, len(fastest)):
            groups = [fastest[:cut], fastest[cut:]]
            group_speed = [sum(speeds[d] for d in g) for g in groups]
            try:
                ranges = _contiguous_ranges(n_blocks, group_speed)
            except ValueError:
                continue
            stages = []
            for g, r in zip(groups, ranges):
                shares = [speeds[d] / sum(speeds[x] for x in g) for d in g]
                stages.append(_tensor_stage(r, g, shares, shape))
            out[f"hybrid:{cut}"] = _plan("hybrid", profile, cluster, shape, stages,
                                         tiles=4 if any(s.parallel == "tensor+sequence" for s in stages) else 1)
    return out


def plan_inference(profile: ModelProfile, cluster: Cluster, shape: RequestShape | None = None,
                   cost: CostModel | None = None, strategy: str = "auto", devices: list[str] | None = None,
                   comm: CommCosts | None = None) -> Plan:
    """The fastest feasible plan of `strategy` (auto: of all), with its predicted latency and the candidates'.

    `comm`: the collectives' costs where the plan will run (`runtime.probes.comm.probe_comm`); default `CommCosts()`.
    Every strategy scores its candidates with the same simulator, and `auto` ranges over all of them (even
    tensor parallelism included), so its predicted latency is never above any other strategy's."""
    if strategy not in STRATEGIES:
        raise SpecError(field="plan", value=strategy, accepted=", ".join(STRATEGIES))
    cost = cost or CostModel()
    shape = shape or RequestShape(seq=profile.seq or 1)
    if devices:
        unknown = [d for d in devices if d not in cluster.devices]
        if unknown:
            raise SpecError(field="devices", value=unknown, accepted=", ".join(cluster.devices))
    pool = candidates(profile, cluster, shape, cost, devices)
    prefix = {"auto": "", "tp": "galaxy", "even-tp": "megatron-even", "pipeline": "layer-pipeline",
              "single": "single", "hybrid": "hybrid"}[strategy]
    scored = {}
    for key, plan in pool.items():
        if not key.startswith(prefix):
            continue
        report = simulate_inference(plan, profile, cluster, cost, shape, comm=comm)
        scored[key] = (report, plan)
    feasible = {k: v for k, v in scored.items() if v[0].feasible}
    summary = {k: {"latency_s": r.latency_s, "feasible": r.feasible, "reason": r.infeasible_reason}
               for k, (r, _) in scored.items()}
    if not feasible:
        if not scored:
            raise SpecError(field="plan", value=strategy, accepted="a strategy with candidates for this cluster",
                            hint=f"{len(devices or cluster.devices)} device(s) cannot form a '{strategy}' plan")
        key, (report, plan) = next(iter(scored.items()))
        reasons = "; ".join(f"{k}: {r.infeasible_reason}" for k, (r, _) in scored.items())
        return plan.model_copy(update={"feasible": False, "infeasible_reason": f"no candidate fits in memory ({reasons})",
                                       "notes": {**plan.notes, "candidates": summary}})
    key, (report, plan) = min(feasible.items(), key=lambda kv: kv[1][0].latency_s)
    return plan.model_copy(update={"predicted": {"latency_s": report.latency_s},
                                   "notes": {**plan.notes, "candidate": key, "candidates": summary}})
