"""One adaptation method over a stream, in one process, with every message passed as the bytes a link carries.

Each batch goes through `edge.serve`; accuracy counts the predictions made before any update from that batch;
the uploads (if any) go to `cloud.handle` as `encode_upload` bytes and the reply comes back as `encode_state`
bytes, applied with `edge.apply` before the next batch. All state lives in the Edge and Cloud objects, so the
same objects can run in two processes over a real link.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from edgepool.adapt.cloud import Cloud, CloudSettings
from edgepool.adapt.edge import EataEdge, Edge
from edgepool.adapt.messages import decode_state, decode_upload, encode_state, encode_upload
from edgepool.adapt.models import TrainedModels
from edgepool.adapt.selection import AllSelector, CemaSelector, NoneSelector, RandomSelector
from edgepool.adapt.stream import Stream
from edgepool.errors import SpecError

METHODS = ("none", "batch-norm", "cema", "upload-all", "random", "eata")


@dataclass(frozen=True)
class RunSettings:
    batch: int = 64
    cema_e_max_init: float = 0.4  # fractions of ln C, see selection.CemaSelector
    cema_e_min: float = 0.15  # chosen on the MNIST stream: 31% uploaded, above random at that rate
    cloud: CloudSettings = field(default_factory=CloudSettings)
    eata_lr: float = 5e-3
    eata_fisher_samples: int = 500  # clean train digits the Fisher regulariser is measured on
    eata_fisher_weight: float = 50.0
    seed: int = 0


@dataclass
class AdaptRun:
    """What one method did on one stream: per-sample flags [N] in stream order, and the traffic in bytes."""

    method: str
    correct: np.ndarray  # bool [N], prediction made before any update from its batch
    phase: np.ndarray  # int64 [N]
    uploaded: np.ndarray  # bool [N]
    phase_labels: list[str]
    bytes_up: int
    bytes_down: int
    requests: int  # uploads sent (batches with at least one sample picked)
    seconds: float

    @property
    def per_phase_accuracy(self) -> list[float]:
        return [float(self.correct[self.phase == k].mean()) for k in range(len(self.phase_labels))]

    @property
    def mean_accuracy(self) -> float:
        """Accuracy averaged over shifts (each phase counts once, whatever its length)."""
        return float(np.mean(self.per_phase_accuracy))

    @property
    def upload_fraction(self) -> float:
        return float(self.uploaded.mean())

    def summary(self) -> dict:
        return {"mean_accuracy_over_shifts": round(self.mean_accuracy, 4),
                "per_phase_accuracy": {label: round(a, 4) for label, a in zip(self.phase_labels,
                                                                              self.per_phase_accuracy)},
                "upload_fraction": round(self.upload_fraction, 4), "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down, "requests": self.requests, "seconds": round(self.seconds, 2)}


def build_sides(method: str, models: TrainedModels, settings: RunSettings | None = None,
                random_p: float | None = None) -> tuple[Edge | EataEdge, Cloud | None]:
    """Fresh edge and cloud objects for `method` (copies of the trained models; None: no cloud)."""
    s = settings or RunSettings()
    if method not in METHODS:
        raise SpecError(field="method", value=method, accepted=", ".join(METHODS))
    edge_model, foundation = models.copies()
    c = models.data.num_classes
    if method == "eata":
        rng = np.random.default_rng(s.seed)
        pick = rng.choice(len(models.data.train_labels), size=min(s.eata_fisher_samples,
                                                                 len(models.data.train_labels)), replace=False)
        return EataEdge(edge_model, c, lr=s.eata_lr, fisher_images=models.data.train_images[pick],
                        fisher_weight=s.eata_fisher_weight), None
    if method == "random" and random_p is None:
        raise SpecError(field="random_p", value=None, accepted="the upload probability (CEMA's upload fraction)")
    selector = {"none": NoneSelector, "batch-norm": NoneSelector, "upload-all": AllSelector,
                "cema": lambda: CemaSelector(c, e_max_init=s.cema_e_max_init, e_min=s.cema_e_min),
                "random": lambda: RandomSelector(random_p, seed=s.seed)}[method]()
    cloud = None if method in ("none", "batch-norm") else Cloud(foundation, edge_model, c, s.cloud, seed=s.seed)
    # the deployed model as it is normalizes with running statistics; every adapting edge with batch statistics
    return Edge(edge_model, selector, batch_stats=method != "none" and s.cloud.batch_stats), cloud


def run_stream(method: str, stream: Stream, models: TrainedModels, settings: RunSettings | None = None,
               random_p: float | None = None) -> AdaptRun:
    """`method` (one of `METHODS`) over `stream` in batches; "random" uploads with probability `random_p`."""
    s = settings or RunSettings()
    edge, cloud = build_sides(method, models, s, random_p)
    n = len(stream)
    correct, uploaded = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    bytes_up = bytes_down = requests = 0
    start = time.perf_counter()
    for lo, hi in stream.batches(s.batch):
        served = edge.serve(stream.images[lo:hi])
        correct[lo:hi] = served.predictions == stream.labels[lo:hi]
        uploaded[lo:hi] = served.uploaded
        if cloud is not None and len(served.upload):
            up = encode_upload(served.upload)
            down = encode_state(cloud.handle(decode_upload(up)))
            edge.apply(decode_state(down))
            bytes_up, bytes_down, requests = bytes_up + len(up), bytes_down + len(down), requests + 1
    return AdaptRun(method, correct, stream.phase.copy(), uploaded, [p.label for p in stream.phases],
                    bytes_up, bytes_down, requests, time.perf_counter() - start)
