"""FedPipe's per-device configuration: LoRA rank, batch size and base-weight precision from the device's
compute, memory and the round deadline, chosen by a small integer program (scipy.optimize.milp, HiGHS).

The costs come from a table measured on this host (`measure_lora_cost`): training memory per
(rank, batch, bits) and seconds per sample at one host core with one thread. A device with `cores` = 0.5
(half a host core's speed) takes twice as long.

The program, per device, over options o = (rank, batch, bits):

    x_o in {0, 1}   the option is chosen          s_o in {0..S_o}   local steps under option o
    sum_o x_o = 1
    sum_o mem_o x_o <= memory                     min_steps x_o <= s_o <= S_o x_o
    sum_o step_time_o s_o <= deadline             (step_time_o = batch_o * sec_per_sample_o / cores)
    maximise sum_o quality(rank_o) * bits_penalty(bits_o) * batch_o * s_o

The samples processed, steps * batch, would be bilinear with one shared steps variable; giving every option
its own steps variable s_o, forced to 0 unless x_o = 1, keeps it linear and exact (the usual disaggregated
formulation), with the deadline and memory still explicit rows. S_o = floor(samples / batch_o): at most one
local epoch, whole batches only (an option whose batch exceeds the local data is unavailable).

Assumptions, all arguments: quality(rank) = log2(rank) + 1 (more rank, more capacity, diminishing); 8-bit
and 4-bit bases weigh 0.98 and 0.95 (an accuracy cost of quantizing the base, not measured here).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from edgepool.errors import SpecError
from edgepool.federated.importance import encoder_linears, lora_model
from edgepool.finetune.backbone import Backbone
from edgepool.finetune.methods import SavedTensorMeter
from edgepool.local_device import torch_threads

RANKS = (2, 4, 8, 16)
BATCHES = (4, 8, 16, 32)
BITS = (32, 8, 4)
SCALE_BYTES = 4  # one fp32 scale per output row of a quantized weight
DEFAULT_BITS_PENALTY = {32: 1.0, 8: 0.98, 4: 0.95}
MB = 1 << 20


def default_quality(rank: int) -> float:
    return math.log2(rank) + 1.0


# ---------------------------------------------------------------------------------------------- cost table
@dataclass
class CostRow:
    rank: int
    batch: int
    bits: int
    weights_bytes: int  # frozen base at `bits` (+ per-row scales), the rest of the model fp32
    trainable_bytes: int  # LoRA + head: parameters, gradients and AdamW's two moments (fp32)
    activation_bytes: int  # saved for backward in one step (measured, fp32 activations)
    sec_per_sample: float  # one training step / batch, one host core, one thread

    @property
    def memory_bytes(self) -> int:
        return self.weights_bytes + self.trainable_bytes + self.activation_bytes


@dataclass
class LoraCost:
    """Measured costs of LoRA training for one model, target modules and sequence length."""
    model: str
    target_modules: list[str]
    seq_len: int
    rows: list[CostRow]
    notes: str = ""

    def __post_init__(self):
        if not self.rows:
            raise SpecError(field="rows", value=[], accepted="at least one (rank, batch, bits) cost row")

    def row(self, rank: int, batch: int, bits: int) -> CostRow:
        for r in self.rows:
            if (r.rank, r.batch, r.bits) == (rank, batch, bits):
                return r
        options = sorted({(r.rank, r.batch, r.bits) for r in self.rows})
        raise SpecError(field="(rank, batch, bits)", value=(rank, batch, bits), accepted=f"one of {options}")

    def to_dict(self) -> dict:
        return {"model": self.model, "target_modules": list(self.target_modules), "seq_len": self.seq_len,
                "notes": self.notes, "rows": [asdict(r) | {"memory_bytes": r.memory_bytes} for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> "LoraCost":
        fields = CostRow.__dataclass_fields__
        rows = [CostRow(**{k: v for k, v in r.items() if k in fields}) for r in d["rows"]]
        return cls(d["model"], list(d["target_modules"]), d["seq_len"], rows, d.get("notes", ""))


def weights_bytes(model: nn.Module, bits: int) -> int:
    """Bytes of the frozen base: the encoder's linear weights at `bits` (numel * bits / 8 + one fp32 scale
    per output row when quantized), every other tensor (embeddings, norms, biases) at fp32."""
    if bits not in BITS:
        raise SpecError(field="bits", value=bits, accepted=", ".join(map(str, BITS)))
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if bits == 32:
        return total
    for m in encoder_linears(model).values():
        w = m.weight
        total += -w.numel() * w.element_size() + math.ceil(w.numel() * bits / 8) + w.shape[0] * SCALE_BYTES
    return total


def measure_lora_cost(backbone: Backbone, head: nn.Module, target_modules: list[str], seq_len: int = 48, *,
                      ranks=RANKS, batches=BATCHES, bits=BITS, steps: int = 3,
                      bits_time_factor: dict[int, float] | None = None, seed: int = 0) -> LoraCost:
    """Measure every (rank, batch) at fp32 on batches of random token ids of exactly `seq_len` (saved
    activations and time depend on the shape, not the text): saved tensors of one step, parameter + gradient
    + AdamW bytes after a step, and the fastest of `steps` timed steps (after a warm-up) at one thread.
    8- and 4-bit rows reuse the fp32 activations and times (times scaled by `bits_time_factor`, default 1.0:
    dequantisation cost is not measured here; edgepool.federated.quantize measures it)."""
    if seq_len < 1 or steps < 1:
        raise SpecError(field="seq_len/steps", value=(seq_len, steps), accepted="integers >= 1")
    factor = bits_time_factor or {b: 1.0 for b in bits}
    gen = torch.Generator().manual_seed(seed)
    vocab = backbone.model.config.vocab_size
    rows = []
    with torch_threads(1):
        for rank in ranks:
            model = lora_model(backbone.model, target_modules, rank, seed)
            model.train(False)
            top = copy.deepcopy(head)
            trainable = [p for p in model.parameters() if p.requires_grad] + list(top.parameters())
            meter = SavedTensorMeter([model, top])
            for batch in batches:
                ids = torch.randint(1000, vocab, (batch, seq_len), generator=gen)
                mask = torch.ones_like(ids)
                labels = torch.randint(0, top.linear.out_features, (batch,), generator=gen)
                optimizer = torch.optim.AdamW(trainable, lr=1e-4)

                def step():
                    with meter.step():
                        loss = nn.functional.cross_entropy(top(model(input_ids=ids, attention_mask=mask)
                                                               .last_hidden_state, mask), labels)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()

                meter.peak = 0
                step()  # warm-up; AdamW's state exists from here on
                times = []
                for _ in range(steps):
                    start = time.perf_counter()
                    step()
                    times.append(time.perf_counter() - start)
                state = sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
                train_bytes = sum(p.nbytes + p.grad.nbytes for p in trainable) + state
                for b in bits:
                    rows.append(CostRow(rank, batch, b, weights_bytes(backbone.model, b), train_bytes, meter.peak,
                                        min(times) / batch * factor[b]))
    notes = (f"measured at seq_len {seq_len}, 1 thread, {torch.__version__}; 8/4-bit: computed weight bytes, "
             f"fp32 activations, time x {factor}")
    return LoraCost(backbone.name, list(target_modules), seq_len, rows, notes)


# ---------------------------------------------------------------------------------------------- the plan
@dataclass
class DeviceBudget:
    name: str
    cores: float  # compute speed as a share of one host core (1.0 = one full core)
    memory_bytes: int  # what training may use
    deadline_s: float  # the round deadline
    samples: int  # local data size

    def __post_init__(self):
        for f, ok, accepted in (("cores", self.cores > 0, "a positive share of a host core"),
                                ("memory_bytes", self.memory_bytes > 0, "a positive number of bytes"),
                                ("deadline_s", self.deadline_s > 0, "a positive number of seconds"),
                                ("samples", isinstance(self.samples, int) and self.samples >= 1, "an integer >= 1")):
            if not ok:
                raise SpecError(field=f, value=getattr(self, f), accepted=accepted, source=f"device {self.name}")


@dataclass
class DeviceChoice:
    name: str
    feasible: bool
    rank: int | None = None
    batch: int | None = None
    bits: int | None = None
    steps: int = 0
    est_time_s: float = 0.0
    est_memory_bytes: int = 0
    reason: str = ""

    @property
    def samples(self) -> int:
        return self.steps * (self.batch or 0)

    def to_dict(self) -> dict:
        return asdict(self) | {"samples": self.samples}


@dataclass
class FedPipePlan:
    kind: str  # "fedpipe" | "homogeneous"
    devices: list[DeviceChoice] = field(default_factory=list)

    @property
    def participants(self) -> list[str]:
        return [d.name for d in self.devices if d.feasible]

    @property
    def round_time_s(self) -> float:
        """The slowest participant's local training time."""
        return max((d.est_time_s for d in self.devices if d.feasible), default=0.0)

    @property
    def samples(self) -> int:
        return sum(d.samples for d in self.devices if d.feasible)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "devices": [d.to_dict() for d in self.devices], "participants": self.participants,
                "round_time_s": self.round_time_s, "samples": self.samples}


def _step_time(row: CostRow, budget: DeviceBudget) -> float:
    return row.batch * row.sec_per_sample / budget.cores


def option_value(row: CostRow, steps: int, quality: dict[int, float] | None = None,
                 bits_penalty: dict[int, float] | None = None) -> float:
    """The objective of one option run for `steps` steps: weighted samples processed."""
    q = quality[row.rank] if quality else default_quality(row.rank)
    return q * (bits_penalty or DEFAULT_BITS_PENALTY)[row.bits] * row.batch * steps


def _sit_out(cost: LoraCost, budget: DeviceBudget, min_steps: int) -> DeviceChoice:
    """Why no option works, most basic cause first."""
    rows = [r for r in cost.rows if r.batch <= budget.samples]
    if not rows:
        reason = f"{budget.samples} local samples are fewer than the smallest batch"
    elif not (rows := [r for r in rows if r.memory_bytes <= budget.memory_bytes]):
        least = min(r.memory_bytes for r in cost.rows)
        reason = f"memory {budget.memory_bytes / MB:.1f} MiB < the smallest option's {least / MB:.1f} MiB"
    else:
        fastest = min(min_steps * _step_time(r, budget) for r in rows)
        reason = f"deadline {budget.deadline_s:g} s < {fastest:.3g} s for {min_steps} step(s) of the fastest option"
    return DeviceChoice(budget.name, feasible=False, reason=reason)


def plan_device(cost: LoraCost, budget: DeviceBudget, min_steps: int = 1, quality: dict[int, float] | None = None,
                bits_penalty: dict[int, float] | None = None) -> DeviceChoice:
    """One device's (rank, batch, bits, steps) by the integer program in the module docstring; a device no
    option fits sits out (feasible=False) with the reason."""
    if min_steps < 1:
        raise SpecError(field="min_steps", value=min_steps, accepted="an integer >= 1")
    penalty = bits_penalty or DEFAULT_BITS_PENALTY
    for name, table, keys in (("quality", quality, {r.rank for r in cost.rows}),
                              ("bits_penalty", penalty, {r.bits for r in cost.rows})):
        if table is not None and not keys <= set(table):
            raise SpecError(field=name, value=table, accepted=f"a weight for each of {sorted(keys)}")
    rows = [r for r in cost.rows if r.batch <= budget.samples]
    n = len(rows)
    if n == 0:
        return _sit_out(cost, budget, min_steps)
    max_steps = np.array([budget.samples // r.batch for r in rows], dtype=float)  # one local epoch, S_o
    mem = np.array([r.memory_bytes / MB for r in rows])  # MiB keeps the row well scaled
    step_s = np.array([_step_time(r, budget) for r in rows])
    value = np.array([option_value(r, 1, quality, penalty) for r in rows])
    eye, zero = np.eye(n), np.zeros(n)
    # variables: [x_0..x_{n-1}, s_0..s_{n-1}]
    constraints = [LinearConstraint(np.concatenate([np.ones(n), zero])[None], 1, 1),
                   LinearConstraint(np.concatenate([mem, zero])[None], -np.inf, budget.memory_bytes / MB),
                   LinearConstraint(np.concatenate([zero, step_s])[None], -np.inf, budget.deadline_s),
                   LinearConstraint(np.hstack([-np.diag(max_steps), eye]), -np.inf, 0),  # s_o <= S_o x_o
                   LinearConstraint(np.hstack([-min_steps * eye, eye]), 0, np.inf)]  # s_o >= min_steps x_o
    res = milp(c=np.concatenate([zero, -value]), constraints=constraints, integrality=np.ones(2 * n),
               bounds=Bounds(np.zeros(2 * n), np.concatenate([np.ones(n), max_steps])))
    if res.status != 0:
        return _sit_out(cost, budget, min_steps)
    o = int(np.argmax(res.x[:n]))
    row, steps = rows[o], int(round(res.x[n + o]))
    return DeviceChoice(budget.name, True, row.rank, row.batch, row.bits, steps, steps * step_s[o], row.memory_bytes)


def plan_devices(cost: LoraCost, budgets: list[DeviceBudget], **kwargs) -> FedPipePlan:
    """FedPipe: one integer program per device (they share nothing but the cost table)."""
    return FedPipePlan("fedpipe", [plan_device(cost, b, **kwargs) for b in budgets])


def homogeneous_plan(cost: LoraCost, budgets: list[DeviceBudget], rank: int = 8, batch: int = 16, bits: int = 32,
                     steps: int | None = None) -> FedPipePlan:
    """The baseline: one configuration everywhere, no deadline (each device runs its steps however long they
    take; the round lasts as long as the slowest). `steps` None: one local epoch, at least one step. A device
    whose memory cannot hold the configuration sits out."""
    if steps is not None and steps < 1:
        raise SpecError(field="steps", value=steps, accepted="an integer >= 1, or None for one local epoch")
    row = cost.row(rank, batch, bits)
    devices = []
    for b in budgets:
        if row.memory_bytes > b.memory_bytes:
            reason = f"memory {b.memory_bytes / MB:.1f} MiB < {row.memory_bytes / MB:.1f} MiB for {rank}/{batch}/{bits}"
            devices.append(DeviceChoice(b.name, False, reason=reason))
            continue
        n = steps or max(1, b.samples // batch)
        devices.append(DeviceChoice(b.name, True, rank, batch, bits, n, n * _step_time(row, b), row.memory_bytes))
    return FedPipePlan("homogeneous", devices)
