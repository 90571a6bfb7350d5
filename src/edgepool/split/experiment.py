"""A split-computing task end to end: prepare the data and the reference, train bottlenecks, measure the
rate-accuracy table. Each step writes into the task's artifacts folder (see `pipeline.Artifacts`), so
`edgepool split train`, `eval` and `plan` and the benchmark share one layout.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgepool.atomic import atomic_path, write_text_atomic
from edgepool.errors import SpecError
from edgepool.split.backbone import check_cut, cut_shape, head_and_tail, imagenet_mobilenet_v2, mnist_model, \
    predict, to_input
from edgepool.split.codecs import FeatureQuantizer
from edgepool.split.data import MNIST_SIDE, ImageSet, mnist_sets, photo_sets
from edgepool.split.evaluate import rate_accuracy_table
from edgepool.split.network import BottleneckSpec
from edgepool.split.options import OptionMeasure, SplitOption
from edgepool.split.pipeline import Artifacts, pipeline
from edgepool.split.training import TeacherCache, TrainConfig, finetune_classifier, train_split

TASKS = ("photos", "mnist")
Progress = Callable[[str, int, int], None]


@dataclass
class TaskSettings:
    """What a task is measured with: its input side, codec levels, resolutions, cuts."""

    side: int
    codec_levels: dict[str, list[str]]  # format -> levels ("q50", "lossless", "" for png)
    resolutions: tuple[int, ...] = (224,)  # photos: inputs may be sent smaller
    low_resolution_levels: dict[str, list[str]] = field(default_factory=dict)
    feature_cuts: tuple[int, ...] = (3, 5, 8)

    @classmethod
    def of(cls, task: str) -> "TaskSettings":
        if task == "photos":
            return cls(side=224, resolutions=(224, 160, 112), feature_cuts=(3, 5, 8, 15),
                       codec_levels={"jpeg": ["q20", "q50", "q75", "q90", "q95"],
                                     "webp": ["q20", "q50", "q75", "q90", "q95", "lossless"], "png": [""]},
                       low_resolution_levels={"jpeg": ["q50", "q90"], "webp": ["q50", "q90", "lossless"]})
        if task == "mnist":
            return cls(side=MNIST_SIDE, resolutions=(MNIST_SIDE,), feature_cuts=(3, 5, 8),
                       codec_levels={"jpeg": ["q10", "q30", "q50", "q75", "q90"],
                                     "webp": ["q10", "q30", "q50", "q75", "q90", "lossless"], "png": [""]})
        raise SpecError(field="task", value=task, accepted=", ".join(TASKS))


def load_sets(task: str, seed: int = 0, train_per_photo: int | None = None) -> tuple[ImageSet, ImageSet]:
    if task == "photos":
        return photo_sets(seed) if train_per_photo is None else photo_sets(seed, train_per_photo)
    TaskSettings.of(task)
    return mnist_sets(seed)


def prepare(task: str, folder: Path, train: ImageSet, test: ImageSet, finetune_epochs: int = 2,
            progress: Progress | None = None) -> torch.nn.Module:
    """Write task.json, the reference's weights and the labelled test set; return the reference.

    Photos: the ImageNet MobileNetV2 is the reference and labels the test crops with its top-1. MNIST: the
    ImageNet MobileNetV2 fine-tuned on the training digits is the reference; the labels are the digits.
    """
    settings = TaskSettings.of(task)
    folder.mkdir(parents=True, exist_ok=True)
    if task == "photos":
        reference = imagenet_mobilenet_v2()
        test.labels = predict(reference, to_input(test.images, settings.side)).argmax(1).numpy()
    else:
        reference = finetune_classifier(mnist_model(), train, settings.side, epochs=finetune_epochs,
                                        progress=progress)
    with atomic_path(folder / "reference.pt") as tmp:
        torch.save(reference.state_dict(), tmp)
    with atomic_path(folder / "test.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=test.images, labels=test.labels, sources=np.asarray(test.sources))
    write_text_atomic(folder / "task.json", json.dumps({"task": task, "side": settings.side}))
    return reference


def load_test(folder: Path) -> ImageSet:
    with np.load(folder / "test.npz") as saved:
        return ImageSet(saved["images"], saved["labels"], list(saved["sources"]))


def fit_quantizer(folder: Path, reference: torch.nn.Module, cache_inputs: torch.Tensor, cut: int) -> None:
    """The 8-bit feature baseline at `cut`: range and tables fitted on the training features."""
    head, _ = head_and_tail(reference, check_cut(cut))
    quantizer = FeatureQuantizer(bits=8).fit(predict(head, cache_inputs))
    path = Artifacts(folder).quantizer_path(cut)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(quantizer.state_dict(), tmp)


def train_bottleneck(folder: Path, reference: torch.nn.Module, cache: TeacherCache, method: str, cut: int,
                     size: int, beta: float = 0.0, stride: int = 2, config: TrainConfig | None = None,
                     progress: Progress | None = None, step: float = 0.1) -> BottleneckSpec:
    """Train one bottleneck at `cut` and save it; the spec names the file."""
    if method not in ("bottlefit", "entropic"):
        raise SpecError(field="method", value=method, accepted="bottlefit, entropic")
    artifacts = Artifacts(folder)
    channels = cut_shape(reference, check_cut(cut), artifacts.side)[0]
    spec = BottleneckSpec(method, cut, channels, size, stride=stride, beta=beta, step=step,
                          task=artifacts.task["task"])
    network = train_split(reference, spec, cache, config, progress)
    path = artifacts.bottleneck_path(method, spec.level, cut)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        network.save(tmp)
    return spec


def options_for(folder: Path) -> list[SplitOption]:
    """Every option a trained folder can run: local, each codec level (and resolution), each split."""
    artifacts = Artifacts(folder)
    settings = TaskSettings.of(artifacts.task["task"])
    options = []
    for resolution in settings.resolutions:
        levels = settings.codec_levels if resolution == settings.side else settings.low_resolution_levels
        options.append(SplitOption("device", "local", "", resolution))
        options += [SplitOption("server", fmt, level, resolution) for fmt, ls in levels.items() for level in ls]
    return options + artifacts.options()


def evaluate(folder: Path, options: list[SplitOption] | None = None,
             progress: Callable[[str], None] | None = None, timing_images: int = 6) -> list[OptionMeasure]:
    """The rate-accuracy table of a trained folder, written to table.json beside it."""
    artifacts = Artifacts(folder)
    options = options if options is not None else options_for(folder)
    rows = rate_accuracy_table([pipeline(o, artifacts) for o in options], load_test(folder), progress,
                               timing_images)
    write_text_atomic(folder / "table.json", json.dumps([r.to_dict() for r in rows], indent=1))
    return rows


def load_table(folder: Path) -> list[OptionMeasure]:
    path = folder / "table.json"
    if not path.is_file():
        raise SpecError(field="table", value=str(path), accepted="a folder evaluated by `edgepool split eval`")
    return [OptionMeasure.from_dict(d) for d in json.loads(path.read_text())]
