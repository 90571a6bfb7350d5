"""Feature compression for what fog nodes send each other: per-vertex 8-bit, 4-bit, or degree-aware.

Each vertex's feature row is quantized on its own (affine: its min and step as two float32, then the codes),
so one outlier vertex does not cost the others their resolution. Codes are packed two per byte at 4 bits.

Degree-aware (`degree`): a vertex u reaches each neighbour v through one of v's in-edges, with weight
1/sqrt(d_u d_v) in GCN and 1/d_v in mean aggregation, and the error u's codes carry is averaged with v's other
neighbours'. A high-degree vertex's error is spread thin over many targets each averaging many inputs, so
vertices of degree >= `high_degree` (default: the graph's median) go at 4 bits and the rest at 8 bits.
Sender and receiver both know every vertex's degree, so the bit width of each row is never sent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from edgepool.errors import SpecError

MODES = ("none", "int8", "int4", "degree")
HEADER_BYTES = 8  # per row: min and step, float32


@dataclass(frozen=True)
class Codec:
    mode: str = "none"
    high_degree: int = 0  # degree-aware: rows of vertices with degree >= this go at 4 bits

    def __post_init__(self):
        if self.mode not in MODES:
            raise SpecError(field="compression", value=self.mode, accepted=", ".join(MODES))

    @classmethod
    def for_graph(cls, mode: str, degrees: torch.Tensor) -> "Codec":
        """`mode` with the degree threshold set to the graph's median degree."""
        median = int(torch.median(degrees.float()).item()) if len(degrees) else 0
        return cls(mode, max(median, 1))

    def bits(self, degrees: torch.Tensor) -> torch.Tensor:
        """[r] bits per row for rows of vertices with these degrees (32 = sent as float32)."""
        if self.mode == "none":
            return torch.full_like(degrees, 32)
        if self.mode == "int8":
            return torch.full_like(degrees, 8)
        if self.mode == "int4":
            return torch.full_like(degrees, 4)
        return torch.where(degrees >= self.high_degree, 4, 8)

    def payload_bytes(self, degrees: torch.Tensor, width: int) -> int:
        """Bytes on the wire for rows of these degrees and `width` features."""
        bits = self.bits(degrees)
        if self.mode == "none":
            return int(len(degrees) * width * 4)
        n8, n4 = int((bits == 8).sum()), int((bits == 4).sum())
        return n8 * (HEADER_BYTES + width) + n4 * (HEADER_BYTES + (width + 1) // 2)

    def encode(self, rows: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
        """[r, F] float32 -> [payload_bytes] uint8."""
        if self.mode == "none":
            return rows.contiguous().view(torch.uint8).reshape(-1)
        bits = self.bits(degrees)
        parts = []
        for b in (8, 4):
            sel = rows[bits == b]
            if len(sel):
                parts.append(_quantize(sel, b))
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)

    def decode(self, payload: torch.Tensor, degrees: torch.Tensor, width: int) -> torch.Tensor:
        """[payload_bytes] uint8 -> [r, F] float32, rows in the order they were encoded."""
        if self.mode == "none":
            return payload.view(torch.float32).reshape(len(degrees), width)
        bits = self.bits(degrees)
        out = torch.empty(len(degrees), width)
        offset = 0
        for b in (8, 4):
            mask = bits == b
            count = int(mask.sum())
            if count:
                size = count * (HEADER_BYTES + (width if b == 8 else (width + 1) // 2))
                out[mask] = _dequantize(payload[offset:offset + size], count, width, b)
                offset += size
        return out


def _quantize(rows: torch.Tensor, bits: int) -> torch.Tensor:
    """[r, F] -> r x (min, step float32) then the codes (row-major; 4-bit: two codes per byte, low first)."""
    levels = (1 << bits) - 1
    low = rows.min(1).values
    step = (rows.max(1).values - low) / levels
    step = torch.where(step > 0, step, torch.ones_like(step))
    codes = torch.round((rows - low[:, None]) / step[:, None]).clamp_(0, levels).to(torch.uint8)
    if bits == 4:
        if codes.shape[1] % 2:
            codes = torch.cat([codes, torch.zeros(len(codes), 1, dtype=torch.uint8)], 1)
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    header = torch.stack([low, step], 1).contiguous().view(torch.uint8)  # [r, 8]
    return torch.cat([header.reshape(-1), codes.reshape(-1)])


def _dequantize(payload: torch.Tensor, count: int, width: int, bits: int) -> torch.Tensor:
    header = payload[:count * HEADER_BYTES].clone().view(torch.float32).reshape(count, 2)
    codes = payload[count * HEADER_BYTES:].reshape(count, -1)
    if bits == 4:
        codes = torch.stack([codes & 0x0F, codes >> 4], 2).reshape(count, -1)[:, :width]
    return header[:, :1] + codes.float() * header[:, 1:]


def compression_ratio(codec: Codec, degrees: torch.Tensor, width: int) -> float:
    """float32 bytes over encoded bytes for these rows."""
    raw = len(degrees) * width * 4
    return raw / max(codec.payload_bytes(degrees, width), 1)

