"""One option's two halves, built from a trained artifacts folder: what the device runs on a captured image
and what the server runs on the bytes it receives.

`Pipeline.device(image)` returns the bytes to send (or, for local, the class); `Pipeline.server(bytes)`
returns the class. The batch forms compute the same thing for many images at once (accuracy tables); the
single-image forms are what the testbed times. `build` is the factory the testbed's workers call.

An artifacts folder (written by `edgepool split train`) holds:
    task.json                      which task, the network's input side
    reference.pt                   the unsplit reference's weights (MNIST: fine-tuned; photos: ImageNet)
    bottlenecks/<level>-cut<c>.pt  trained split networks (`SplitNetwork.save`)
    quantizers/cut<c>.pt           8-bit feature quantizers fitted on the training features
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgepool.errors import SpecError
from edgepool.split.backbone import head_and_tail, predict, to_input
from edgepool.split.codecs import FeatureQuantizer, InputCodec
from edgepool.split.network import SplitNetwork, base_network
from edgepool.split.options import INPUT_CODECS, SplitOption


@dataclass(frozen=True)
class Artifacts:
    """A trained task's folder; loads lazily what an option needs."""

    folder: Path

    @cached_property
    def task(self) -> dict:
        path = self.folder / "task.json"
        if not path.is_file():
            raise SpecError(field="artifacts", value=str(self.folder), accepted="a folder written by "
                            "`edgepool split train` (it has task.json)")
        return json.loads(path.read_text())

    @property
    def side(self) -> int:
        return int(self.task["side"])

    @cached_property
    def reference(self) -> nn.Module:
        model = base_network(self.task["task"])
        model.load_state_dict(torch.load(self.folder / "reference.pt", map_location="cpu", weights_only=True))
        return model.eval()

    def bottleneck_path(self, method: str, level: str, cut: int) -> Path:
        return self.folder / "bottlenecks" / f"{method}-{level}-cut{cut}.pt"

    def quantizer_path(self, cut: int) -> Path:
        return self.folder / "quantizers" / f"cut{cut}.pt"

    def bottleneck(self, option: SplitOption) -> SplitNetwork:
        path = self.bottleneck_path(option.method, option.level, option.cut)
        if not path.is_file():
            trained = sorted(p.stem for p in (self.folder / "bottlenecks").glob("*.pt"))
            raise SpecError(field="option", value=option.name, accepted=", ".join(trained) or "(none trained)",
                            hint=f"no {path.name} in {self.folder}")
        return SplitNetwork.load(path)

    def quantizer(self, cut: int) -> FeatureQuantizer:
        state = torch.load(self.quantizer_path(cut), map_location="cpu", weights_only=False)
        return FeatureQuantizer(bits=state["bits"]).load_state_dict(state)

    def options(self) -> list[SplitOption]:
        """Every split option trained in this folder."""
        found = []
        for path in sorted((self.folder / "bottlenecks").glob("*.pt")):
            method, rest = path.stem.split("-", 1)
            level, cut = rest.rsplit("-cut", 1)
            found.append(SplitOption("split", method, level, self.side, int(cut)))
        for path in sorted((self.folder / "quantizers").glob("cut*.pt")):
            found.append(SplitOption("split", "feature8", "", self.side, int(path.stem[3:])))
        return found


class Pipeline:
    """The two halves of one option. Subclasses fill in `_payload` (device) and `_logits` (server)."""

    def __init__(self, option: SplitOption, side: int):
        self.option, self.side = option, side

    def inputs(self, images: np.ndarray) -> torch.Tensor:
        return to_input(images, self.side)

    # -- one image: what the testbed times
    @torch.no_grad()
    def device(self, image: np.ndarray) -> bytes | int:
        return self.device_batch(image[None])[0]

    @torch.no_grad()
    def server(self, payload: bytes) -> int:
        return int(self.server_batch([payload])[0])

    # -- many images: accuracy and bytes over a test set
    def device_batch(self, images: np.ndarray) -> list:
        raise NotImplementedError

    def server_batch(self, payloads: list[bytes]) -> np.ndarray:
        raise NotImplementedError


class LocalPipeline(Pipeline):
    def __init__(self, option: SplitOption, side: int, model: nn.Module):
        super().__init__(option, side)
        self.model = model

    @torch.no_grad()
    def device_batch(self, images: np.ndarray) -> list:
        return predict(self.model, self.inputs(images)).argmax(1).tolist()


class OffloadPipeline(Pipeline):
    """The input coded with Pillow on the device, the whole network on the server."""

    def __init__(self, option: SplitOption, side: int, model: nn.Module, codec: InputCodec):
        super().__init__(option, side)
        self.model, self.codec = model, codec

    def device_batch(self, images: np.ndarray) -> list:
        return [self.codec.encode(image) for image in images]

    @torch.no_grad()
    def server_batch(self, payloads: list[bytes]) -> np.ndarray:
        decoded = np.stack([self.codec.decode(p) for p in payloads])
        return predict(self.model, self.inputs(decoded)).argmax(1).numpy()


class SplitPipeline(Pipeline):
    """Head on the device, its features coded by `coder` (8-bit features, or a trained bottleneck's encoder and
    entropy coder), tail on the server after `coder` decodes them."""

    def __init__(self, option: SplitOption, side: int, head: nn.Module, tail: nn.Module, coder):
        super().__init__(option, side)
        self.head, self.tail, self.coder = head, tail, coder  # coder: encode(C x H x W) -> bytes, decode back

    @torch.no_grad()
    def device_batch(self, images: np.ndarray) -> list:
        return [self.coder.encode(f) for f in predict(self.head, self.inputs(images))]

    @torch.no_grad()
    def server_batch(self, payloads: list[bytes]) -> np.ndarray:
        features = torch.stack([self.coder.decode(p) for p in payloads])
        return predict(self.tail, features).argmax(1).numpy()


def pipeline(option: SplitOption, artifacts: Artifacts) -> Pipeline:
    """The pipeline for `option` from a trained folder."""
    if artifacts.task["task"] == "photos":
        side = option.resolution  # photos: the network runs at the resolution the option sends
    else:
        side = artifacts.side  # MNIST: the 28-pixel digit is always upscaled to the network's side
    if option.location == "device":
        return LocalPipeline(option, side, artifacts.reference)
    if option.location == "server":
        if option.method not in INPUT_CODECS:
            raise SpecError(field="option.method", value=option.method, accepted=", ".join(INPUT_CODECS))
        lossless = option.level == "lossless"
        quality = None if option.method == "png" or lossless else int(option.level.lstrip("q"))
        resolution = option.resolution if artifacts.task["task"] == "photos" else None
        return OffloadPipeline(option, side, artifacts.reference, InputCodec(option.method, quality, resolution,
                                                                             lossless))
    if option.method == "feature8":
        return SplitPipeline(option, side, *head_and_tail(artifacts.reference, option.cut),
                             artifacts.quantizer(option.cut))
    network = artifacts.bottleneck(option)
    return SplitPipeline(option, side, network.head, network.tail, network.bottleneck)


def build(option: SplitOption, artifacts: str) -> tuple:
    """The testbed's factory (`edgepool.split.pipeline:build`): (device half, server half) for one option."""
    pipe = pipeline(option, Artifacts(Path(artifacts)))
    return pipe.device, pipe.server
