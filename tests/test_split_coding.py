"""Split computing's coding layer: exact entropy coding, a frame that fails loudly, and the baselines."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from edgepool.errors import SpecError
from edgepool.split.bitstream import (BitstreamError, Frame, SymbolCoder, decode_tensor, encode_tensor, pack,
                                      unpack)
from edgepool.split.codecs import FeatureQuantizer, InputCodec


def _skewed_coder(C: int = 4, K: int = 32, low: int = -8, seed: int = 0) -> SymbolCoder:
    rng = np.random.default_rng(seed)
    logits = -np.abs(np.arange(K) - rng.integers(0, K, size=(C, 1))) * rng.uniform(0.3, 1.5, size=(C, 1))
    p = np.exp(logits)
    return SymbolCoder(low=low, probabilities=p / p.sum(axis=1, keepdims=True))


def _sample(coder: SymbolCoder, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [rng.choice(coder.K, size=n, p=coder.probabilities[c]) for c in range(coder.channels)]
    return np.stack(rows).astype(np.int64) + coder.low


# --- SymbolCoder -------------------------------------------------------------------------------------------


def test_uniform_random_symbols_round_trip_exactly():
    rng = np.random.default_rng(0)
    coder = SymbolCoder(low=-3, probabilities=np.ones((3, 20)))
    symbols = rng.integers(-3, 17, size=(3, 17, 19))
    decoded = coder.decode(coder.encode(symbols), symbols.shape)
    assert decoded.dtype == np.int32 and decoded.shape == symbols.shape
    np.testing.assert_array_equal(decoded, symbols)


def test_skewed_symbols_round_trip_and_real_size_tracks_the_ideal():
    coder = _skewed_coder()
    symbols = _sample(coder, 5000).reshape(4, 50, 100)  # 2 * 10^4 symbols
    payload = coder.encode(symbols)
    np.testing.assert_array_equal(coder.decode(payload, symbols.shape), symbols)
    ideal = coder.bits(symbols)
    real = 8 * len(payload)
    assert 0.99 * ideal <= real <= 1.02 * ideal + 64
    # the model is really used: far below the 5 bits per symbol of a flat code over K = 32
    assert real < 0.8 * 5 * symbols.size


def test_the_model_matters_a_mismatched_table_costs_more():
    coder = _skewed_coder(seed=0)
    other = _skewed_coder(seed=7)
    symbols = _sample(coder, 5000)
    assert len(coder.encode(symbols)) < len(other.encode(symbols))
    np.testing.assert_array_equal(other.decode(other.encode(symbols), symbols.shape), symbols)


def test_out_of_range_symbol_is_a_value_error_naming_the_range():
    coder = SymbolCoder(low=0, probabilities=np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        coder.encode(np.array([[0, 1], [2, 4]]))
    with pytest.raises(ValueError, match="channels"):
        coder.encode(np.zeros((3, 2), dtype=np.int64))


def test_table_from_float32_torch_with_zeros_is_cleaned_and_every_symbol_codable():
    raw = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.1, 0.2, 0.3, 0.3]], dtype=torch.float32)
    coder = SymbolCoder(low=0, probabilities=raw)
    assert coder.probabilities.dtype == np.float64
    np.testing.assert_allclose(coder.probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (coder.probabilities > 0).all()
    symbols = np.array([[3, 2, 0, 1], [0, 1, 2, 3]])
    np.testing.assert_array_equal(coder.decode(coder.encode(symbols), symbols.shape), symbols)


def test_fit_learns_per_channel_histograms():
    coder = _skewed_coder(C=3, K=16, low=0)
    train = np.stack([_sample(coder, 400, seed=s).reshape(3, 20, 20) for s in range(10)])  # N x C x H x W
    fitted = SymbolCoder.fit(train, low=0, K=16)
    assert fitted.probabilities.shape == (3, 16) and (fitted.probabilities > 0).all()
    np.testing.assert_allclose(fitted.probabilities, coder.probabilities, atol=0.03)
    test = _sample(coder, 2000, seed=99)
    assert fitted.bits(test) < 1.02 * coder.bits(test)


def test_empty_tensor_round_trips():
    coder = SymbolCoder(low=0, probabilities=np.ones((2, 4)))
    symbols = np.zeros((2, 0, 5), dtype=np.int64)
    assert coder.decode(coder.encode(symbols), symbols.shape).shape == (2, 0, 5)


# --- framing -------------------------------------------------------------------------------------------------


def _frame() -> bytes:
    coder = _skewed_coder()
    return encode_tensor(_sample(coder, 300).reshape(4, 15, 20), coder, "entropic", meta=b"\x00\x01scale")


def test_pack_unpack_round_trip_and_small_header():
    payload = bytes(range(40))
    data = pack("bottlefit", (12, 28, 28), payload, meta=b"side")
    assert unpack(data) == Frame(kind="bottlefit", shape=(12, 28, 28), payload=payload, meta=b"side")
    assert len(data) - len(payload) - 4 <= 48


def test_encode_decode_tensor_checks_kind():
    coder = _skewed_coder()
    symbols = _sample(coder, 300).reshape(4, 15, 20)
    data = encode_tensor(symbols, coder, "entropic", meta=b"m")
    decoded, meta = decode_tensor(data, coder, "entropic")
    np.testing.assert_array_equal(decoded, symbols)
    assert meta == b"m"
    with pytest.raises(BitstreamError, match="kind 'entropic', expected 'feature8'"):
        decode_tensor(data, coder, "feature8")


def test_every_truncation_raises_a_one_line_bitstream_error():
    data = _frame()
    coder = _skewed_coder()
    for n in range(len(data)):
        with pytest.raises(BitstreamError, match="truncated") as info:
            decode_tensor(data[:n], coder, "entropic")
        assert "\n" not in str(info.value)
    with pytest.raises(BitstreamError, match=rf"header says {len(data)} bytes, got {len(data) - 100}"):
        unpack(data[:-100])


@pytest.mark.parametrize("bit", [0, 3, 7])
def test_flipped_bits_anywhere_raise(bit):
    data = _frame()
    coder = _skewed_coder()
    positions = sorted({0, 3, 4, 5, 6, 8, 9, 10, 15, 20, 30, 40, len(data) // 2, len(data) - 5, len(data) - 1})
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << bit
        with pytest.raises(BitstreamError, match="magic|version|truncated|corrupted") as info:
            decode_tensor(bytes(bad), coder, "entropic")
        assert "\n" not in str(info.value)


def test_specific_messages_for_magic_version_crc_and_trailing_data():
    data = _frame()
    with pytest.raises(BitstreamError, match="not an edgepool split bitstream: bad magic"):
        unpack(b"GIF89a" + data[6:])
    with pytest.raises(BitstreamError, match="version 9"):
        unpack(data[:4] + b"\x09" + data[5:])
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x10
    with pytest.raises(BitstreamError, match="CRC-32 mismatch"):
        unpack(bytes(bad))
    with pytest.raises(BitstreamError, match="trailing"):
        unpack(data + b"\x00")


def test_pack_rejects_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        pack("x" * 17, (1,), b"")
    with pytest.raises(ValueError, match="kind"):
        pack("", (1,), b"")


# --- FeatureQuantizer -----------------------------------------------------------------------------------------


def _relu_features(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 3.0, 6).view(1, 6, 1, 1)
    return torch.relu(torch.randn(n, 6, 14, 14, generator=g) * scale - 0.5)  # skewed: mostly exact zeros


def test_feature_quantizer_round_trip_within_half_a_step():
    fq = FeatureQuantizer(bits=8).fit(_relu_features(20, 0))
    x = _relu_features(1, 1)[0]
    x = torch.minimum(torch.maximum(x, torch.as_tensor(fq.low, dtype=torch.float32).view(-1, 1, 1)),
                      torch.as_tensor(fq.high, dtype=torch.float32).view(-1, 1, 1))  # inside the fitted range
    data = fq.encode(x)
    y = fq.decode(data)
    assert y.dtype == torch.float32 and y.shape == x.shape
    step = torch.as_tensor((fq.high - fq.low) / 255, dtype=torch.float32).view(-1, 1, 1)
    assert ((y - x).abs() <= step / 2 + 1e-5).all()
    symbols, _ = decode_tensor(data, fq.coder, "feature8")
    np.testing.assert_array_equal(symbols, fq.quantize(x))
    assert unpack(data).kind == "feature8"


def test_feature_quantizer_beats_raw_8_bit_on_skewed_features_and_clamps():
    fq = FeatureQuantizer().fit(_relu_features(20, 0))
    x = _relu_features(1, 2)[0]
    assert len(fq.encode(x)) < 0.6 * x.numel()  # raw 8-bit would be one byte per value
    far = x + 100.0
    assert fq.quantize(far).max() == 255 and fq.quantize(-far).min() == 0


def test_feature_quantizer_other_bits_constant_channel_and_state_dict(tmp_path):
    train = _relu_features(8, 3)
    train[:, 2] = 1.25  # a constant channel
    fq = FeatureQuantizer(bits=4).fit(train)
    x = train[0]
    data = fq.encode(x)
    assert unpack(data).kind == "feature4"
    assert torch.allclose(fq.decode(data)[2], torch.full((14, 14), 1.25))
    torch.save(fq.state_dict(), tmp_path / "fq.pt")
    loaded = FeatureQuantizer(bits=4).load_state_dict(torch.load(tmp_path / "fq.pt", weights_only=False))
    assert torch.equal(loaded.decode(data), fq.decode(data))
    assert loaded.encode(x) == data
    with pytest.raises(SpecError, match="bits"):
        FeatureQuantizer(bits=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        FeatureQuantizer().encode(x)


# --- InputCodec ------------------------------------------------------------------------------------------------


def _image(side: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side]
    rng = np.random.default_rng(0)
    img = np.stack([xx * 4, yy * 4, (xx + yy) * 2], axis=-1) + rng.integers(0, 20, size=(side, side, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_jpeg_and_webp_size_decreases_with_quality():
    img = _image()
    for fmt in ("jpeg", "webp"):
        sizes = [len(InputCodec(fmt, q).encode(img)) for q in (95, 75, 30, 10)]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]
    assert InputCodec("jpeg", 75).level == "q75" and InputCodec("png").level == ""


def test_png_round_trip_is_exact_and_decode_shapes():
    img = _image()
    np.testing.assert_array_equal(InputCodec("png").decode(InputCodec("png").encode(img)), img)
    gray = img[..., 0]
    np.testing.assert_array_equal(InputCodec("png").decode(InputCodec("png").encode(gray)), gray)
    for codec in (InputCodec("jpeg", 80), InputCodec("webp", 80)):
        out = codec.decode(codec.encode(img))
        assert out.dtype == np.uint8 and out.shape == img.shape
    assert InputCodec("jpeg", 80).decode(InputCodec("jpeg", 80).encode(gray)).shape == gray.shape
    assert InputCodec("webp", 80).decode(InputCodec("webp", 80).encode(gray), channels=1).shape == gray.shape
    small = InputCodec("jpeg", 80, resolution=32)
    assert small.decode(small.encode(img)).shape == (32, 32, 3)
    assert Image.open(io.BytesIO(small.encode(img))).format == "JPEG"


def test_garbage_and_truncated_images_raise_bitstream_error():
    codec = InputCodec("jpeg", 75)
    with pytest.raises(BitstreamError, match="jpeg"):
        codec.decode(b"definitely not an image")
    with pytest.raises(BitstreamError, match="jpeg"):
        codec.decode(codec.encode(_image())[:200])
    with pytest.raises(BitstreamError, match="expected a jpeg image, got PNG"):
        codec.decode(InputCodec("png").encode(_image()))


def test_bad_codec_settings_are_spec_errors():
    with pytest.raises(SpecError, match="format = 'gif'"):
        InputCodec("gif", 75)
    with pytest.raises(SpecError, match="quality"):
        InputCodec("jpeg", 0)
    with pytest.raises(SpecError, match="quality"):
        InputCodec("jpeg")
    with pytest.raises(SpecError, match="quality"):
        InputCodec("png", 90)
    with pytest.raises(SpecError, match="resolution"):
        InputCodec("png", resolution=0)
