"""Whole-model estimates per device: how long one batch takes and whether it fits, alone on each device."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from edgepool.cluster import Cluster
from edgepool.costmodel import CostModel
from edgepool.profile import ModelProfile


@dataclass
class DeviceEstimate:
    device: str
    train_step_s: float
    inference_s: float
    train_memory_bytes: float
    inference_memory_bytes: float
    memory_bytes: int
    fits_training: bool
    fits_inference: bool

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_alone(profile: ModelProfile, cluster: Cluster, cost: CostModel, batch: int) -> list[DeviceEstimate]:
    n = len(profile)
    out = []
    for name, device in cluster.devices.items():
        mode = device.mode(cluster.power_modes.get(name))
        train_mem = cost.training_memory(profile, 0, n, batch)
        infer_mem = cost.inference_memory(profile, 0, n, batch)
        out.append(DeviceEstimate(
            device=name,
            train_step_s=cost.layers_time(profile, 0, n, device, batch, "fwdbwd", mode=mode),
            inference_s=cost.layers_time(profile, 0, n, device, batch, "fwd", mode=mode),
            train_memory_bytes=train_mem, inference_memory_bytes=infer_mem, memory_bytes=device.memory_bytes,
            fits_training=train_mem <= device.memory_bytes, fits_inference=infer_mem <= device.memory_bytes))
    return out
