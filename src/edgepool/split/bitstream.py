"""Real bitstreams for what crosses the link: entropy-coded integer symbols in a small, checked frame.

Sizes reported for split computing are `len()` of these bytes, header included, so a rate is what a
socket would carry, not an ideal −log2 p. The frame carries a length and a CRC-32 so that a truncated or
corrupted stream fails loudly with one line instead of decoding to a wrong tensor.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import constriction
import numpy as np

MAGIC = b"EPSB"
VERSION = 1
MAX_KIND = 16
_FIXED = struct.Struct("<4sBI")  # magic, version, total length in bytes (CRC included)
_CRC = struct.Struct("<I")


class BitstreamError(ValueError):
    """A stream that cannot be decoded (truncated, corrupted, not ours): never a silently wrong answer."""


@dataclass(eq=False)
class SymbolCoder:
    """Per-channel categorical models over the integer support [low, low + K), coded with constriction's ANS.

    `probabilities` is C x K; every entry is kept > 0 (floor 1e-9, renormalised) so every symbol in range
    stays codable, whatever table (e.g. float32 values of a learned prior) it was built from. Symbols of one
    channel are i.i.d. under that channel's row, which is what a fixed-table coder is.
    """

    low: int
    probabilities: np.ndarray
    _models: list = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        p = self.probabilities
        if hasattr(p, "detach"):  # a torch tensor
            p = p.detach().cpu().numpy()
        p = np.array(p, dtype=np.float64)
        if p.ndim == 1:
            p = p[None, :]
        if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
            raise ValueError(f"probabilities must be a C x K table with C, K >= 1, got shape {p.shape}")
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ValueError("probabilities must be finite and non-negative")
        p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        p = np.maximum(p, 1e-9)
        self.probabilities = p / p.sum(axis=1, keepdims=True)
        self.low = int(self.low)
        self._models = [constriction.stream.model.Categorical(row, perfect=False) for row in self.probabilities]

    @property
    def channels(self) -> int:
        return self.probabilities.shape[0]

    @property
    def K(self) -> int:  # noqa: N802 - the alphabet size, as in the papers
        return self.probabilities.shape[1]

    def _indices(self, symbols: np.ndarray) -> np.ndarray:
        """Symbols as C x n int32 indices into the table, after checking channels and range."""
        s = np.asarray(symbols)
        if s.ndim < 1 or s.shape[0] != self.channels:
            raise ValueError(f"symbols must be channel first with {self.channels} channels, got shape {s.shape}")
        if s.size and not np.issubdtype(s.dtype, np.integer):
            if not np.array_equal(s, np.round(s)):
                raise ValueError("symbols must be integers")
        idx = s.reshape(self.channels, -1).astype(np.int64) - self.low
        if idx.size and (idx.min() < 0 or idx.max() >= self.K):
            bad = int(s.reshape(-1)[np.argmax(((idx < 0) | (idx >= self.K)).reshape(-1))])
            raise ValueError(f"symbol {bad} is outside the coder's range [{self.low}, {self.low + self.K})")
        return idx.astype(np.int32)

    def encode(self, symbols: np.ndarray) -> bytes:
        """Entropy-code C x ... integer symbols; returns the compressed uint32 words, little-endian."""
        idx = self._indices(symbols)
        coder = constriction.stream.stack.AnsCoder()
        for c in reversed(range(self.channels)):  # a stack: push the last channel first, pop channel 0 first
            if idx.shape[1]:
                coder.encode_reverse(idx[c], self._models[c])
        return coder.get_compressed().astype("<u4").tobytes()

    def decode(self, payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
        """The exact int32 symbols `encode` was given, of `shape` (channel first)."""
        shape = tuple(int(d) for d in shape)
        if not shape or shape[0] != self.channels or any(d < 0 for d in shape):
            raise BitstreamError(f"bitstream shape {shape} does not fit a coder with {self.channels} channels")
        if len(payload) % 4:
            raise BitstreamError(f"bitstream corrupted: payload of {len(payload)} bytes is not whole 32-bit words")
        n = int(np.prod(shape[1:], dtype=np.int64))
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            out = np.empty((self.channels, n), dtype=np.int32)
            for c in range(self.channels):
                if n:
                    out[c] = coder.decode(self._models[c], n)
            empty = coder.is_empty()
        except (ValueError, RuntimeError, AssertionError) as exc:
            raise BitstreamError(f"bitstream corrupted: entropy decoding failed ({exc})") from None
        if not empty:
            raise BitstreamError("bitstream corrupted: compressed data left over after decoding all symbols")
        return (out + self.low).reshape(shape)

    def bits(self, symbols: np.ndarray) -> float:
        """Ideal information content −Σ log2 p(symbol) in bits: the size an ideal coder would reach."""
        idx = self._indices(symbols)
        rows = np.arange(self.channels)[:, None]
        return float(-np.log2(self.probabilities[rows, idx]).sum())

    @classmethod
    def fit(cls, symbols: np.ndarray, low: int, K: int, smoothing: float = 0.5) -> "SymbolCoder":  # noqa: N803
        """Per-channel histograms of training symbols (N x C x ...) plus `smoothing` counts per value."""
        s = np.asarray(symbols)
        if s.ndim < 2:
            raise ValueError(f"training symbols must be N x C x ..., got shape {s.shape}")
        if smoothing <= 0:
            raise ValueError(f"smoothing must be > 0 so every symbol stays codable, got {smoothing}")
        C = s.shape[1]
        idx = np.moveaxis(s, 1, 0).reshape(C, -1).astype(np.int64) - int(low)
        if idx.size and (idx.min() < 0 or idx.max() >= K):
            raise ValueError(f"training symbols must lie in [{low}, {low + K}), got [{s.min()}, {s.max()}]")
        flat = (np.arange(C)[:, None] * K + idx).reshape(-1)
        counts = np.bincount(flat, minlength=C * K).reshape(C, K).astype(np.float64) + smoothing
        return cls(low=int(low), probabilities=counts / counts.sum(axis=1, keepdims=True))


@dataclass(frozen=True)
class Frame:
    """One decoded frame: what was coded (`kind`), the symbol tensor's shape, side info and the payload."""

    kind: str
    shape: tuple[int, ...]
    payload: bytes
    meta: bytes = b""


def pack(kind: str, shape: tuple[int, ...], payload: bytes, meta: bytes = b"") -> bytes:
    """Frame a payload: magic, version, total length, kind, shape, meta, payload, then CRC-32 of all after magic.

    Overhead is 4+1+4 fixed + 1+len(kind) + 1+4·ndim + 2+len(meta) + 4 CRC bytes (about 35 for a C x H x W).
    """
    try:
        kind_b = kind.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"kind must be ASCII, got {kind!r}") from None
    if not 0 < len(kind_b) <= MAX_KIND:
        raise ValueError(f"kind must be 1..{MAX_KIND} ASCII characters, got {kind!r}")
    shape = tuple(int(d) for d in shape)
    if len(shape) > 255 or any(not 0 <= d < 2**32 for d in shape):
        raise ValueError(f"shape must have <= 255 dims, each in [0, 2**32), got {shape}")
    if len(meta) >= 2**16:
        raise ValueError(f"meta must be under 65536 bytes, got {len(meta)}")
    body = (bytes([len(kind_b)]) + kind_b + bytes([len(shape)]) + struct.pack(f"<{len(shape)}I", *shape)
            + struct.pack("<H", len(meta)) + bytes(meta) + bytes(payload))
    total = _FIXED.size + len(body) + _CRC.size
    if total >= 2**32:
        raise ValueError(f"frame of {total} bytes is too large")
    head = _FIXED.pack(MAGIC, VERSION, total)
    return head + body + _CRC.pack(zlib.crc32(head[len(MAGIC):] + body))


def unpack(data: bytes, expected: str | None = None) -> Frame:
    """Parse and check a frame (and that it holds the `expected` kind, if given); any truncation, flipped bit or foreign
    data raises BitstreamError."""
    data = bytes(data)
    if data[:len(MAGIC)] != MAGIC[:len(data)]:
        raise BitstreamError(f"not an edgepool split bitstream: bad magic {data[:len(MAGIC)]!r} (expected {MAGIC!r})")
    if len(data) < _FIXED.size:
        raise BitstreamError(f"bitstream truncated: {len(data)} bytes, shorter than the {_FIXED.size}-byte header")
    _, version, total = _FIXED.unpack_from(data)
    if version != VERSION:
        raise BitstreamError(f"unsupported edgepool split bitstream version {version} (this reader knows {VERSION})")
    if len(data) < total:
        raise BitstreamError(f"bitstream truncated: header says {total} bytes, got {len(data)}")
    if len(data) > total:
        raise BitstreamError(f"bitstream corrupted: header says {total} bytes, got {len(data)} (trailing data)")
    if total < _FIXED.size + _CRC.size:
        raise BitstreamError(f"bitstream corrupted: header says {total} bytes, less than a frame's minimum")
    (crc,) = _CRC.unpack_from(data, total - _CRC.size)
    actual = zlib.crc32(data[len(MAGIC):total - _CRC.size])
    if crc != actual:
        raise BitstreamError(f"bitstream corrupted: CRC-32 mismatch (stored {crc:08x}, computed {actual:08x})")
    try:  # the CRC matched, so a failure below is a writer bug or a deliberate forgery: still one line
        pos = _FIXED.size
        n_kind = data[pos]
        kind = data[pos + 1:pos + 1 + n_kind].decode("ascii")
        pos += 1 + n_kind
        ndim = data[pos]
        shape = struct.unpack_from(f"<{ndim}I", data, pos + 1)
        pos += 1 + 4 * ndim
        (n_meta,) = struct.unpack_from("<H", data, pos)
        meta = data[pos + 2:pos + 2 + n_meta]
        pos += 2 + n_meta
        if pos > total - _CRC.size or len(meta) != n_meta or len(kind) != n_kind:
            raise ValueError("header fields run past the frame")
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise BitstreamError(f"bitstream corrupted: bad header ({exc})") from None
    if expected is not None and kind != expected:
        raise BitstreamError(f"bitstream is of kind {kind!r}, expected {expected!r}")
    return Frame(kind=kind, shape=tuple(shape), payload=data[pos:total - _CRC.size], meta=meta)


def encode_tensor(symbols: np.ndarray, coder: SymbolCoder, kind: str, meta: bytes = b"") -> bytes:
    """Entropy-code `symbols` with `coder` and frame them: the bytes that cross the link."""
    symbols = np.asarray(symbols)
    return pack(kind, symbols.shape, coder.encode(symbols), meta)


def decode_tensor(data: bytes, coder: SymbolCoder, kind: str) -> tuple[np.ndarray, bytes]:
    """Check the frame and its kind, then decode: (int32 symbols, meta)."""
    frame = unpack(data, kind)
    return coder.decode(frame.payload, frame.shape), frame.meta
