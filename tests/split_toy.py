"""A toy split-computing pipeline for the latency harness: checkable answers, a payload of a chosen size.

`toy_pipeline(option, payload_bytes, work)`: the device side sends `payload_bytes` bytes whose first byte is
the image's class (`toy_class`), the server reads it back; a local option returns the class itself. Each side
first burns `work` units of pure-Python CPU (the same on both), so their compute times show the CPU quotas.
Nothing is learned: the test checks that the harness delivers what was sent and times each part.
"""
from __future__ import annotations

import numpy as np


def toy_class(image: np.ndarray) -> int:
    """The class the toy predicts: the image's pixel sum modulo 10."""
    return int(np.asarray(image, dtype=np.int64).sum() % 10)


def burn(work: int) -> int:
    """`work` units of single-threaded CPU (about 1 ms each on one core of a current x86 host)."""
    return sum(sum(range(20_000)) for _ in range(work))


def toy_pipeline(option, payload_bytes: int = 1000, work: int = 0):
    def device_side(image: np.ndarray):
        burn(work)
        label = toy_class(image)
        if option.location == "device":
            return label
        return bytes([label]) + bytes(max(0, payload_bytes - 1))

    def server_side(payload: bytes) -> int:
        if len(payload) != payload_bytes:
            raise ValueError(f"payload of {len(payload)} bytes, expected {payload_bytes}")
        burn(work)
        return payload[0]

    return device_side, server_side
