"""Split computing: the split itself, lossless bitstreams, clear errors on damaged ones, the planner, the
early filter, the data split, and the `edgepool split` commands end to end (slow)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgepool.cli import app
from edgepool.errors import SpecError
from edgepool.split.backbone import check_cut, cut_shape, head_and_tail, imagenet_mobilenet_v2, to_input
from edgepool.split.bitstream import BitstreamError
from edgepool.split.bottleneck import BottleFit, EntropicStudent
from edgepool.split.early_filter import evaluate_filter, train_filter
from edgepool.split.network import BottleneckSpec, SplitNetwork
from edgepool.split.options import OptionMeasure, SplitOption
from edgepool.split.planner import plan_split

runner = CliRunner()


@pytest.fixture(scope="module")
def teacher():
    return imagenet_mobilenet_v2()


@pytest.fixture(scope="module")
def photo():
    from edgepool.split.data import grid_crops, load_photo

    return to_input(np.stack(grid_crops(load_photo("chelsea"), scales=(256,))[:2]), 224)


def test_identity_bottleneck_computes_exactly_the_unsplit_model(teacher, photo):
    expected = teacher(photo[:1])
    for cut in (1, 5, 8, 15, 19):
        network = SplitNetwork(teacher, BottleneckSpec("identity", cut, cut_shape(teacher, cut, 224)[0])).eval()
        data = network.device_side(photo[:1])
        assert isinstance(data, bytes) and len(data) > 4 * np.prod(cut_shape(teacher, cut, 224))
        assert torch.equal(network.server_side(data), expected)
    assert expected.argmax().item() in range(281, 286)  # a real ImageNet teacher: chelsea is a cat


@pytest.mark.parametrize("make", [lambda: EntropicStudent(32, 8, hidden=16, stride=2),
                                  lambda: BottleFit(32, 8, hidden=16, stride=1)])
def test_decoded_bottleneck_is_the_encoders_quantized_output_exactly(make):
    torch.manual_seed(0)
    bottleneck = make().eval()
    features = torch.randn(6, 32, 14, 14) * 3
    if isinstance(bottleneck, BottleFit):
        bottleneck.fit_coder(features)
    from edgepool.split.bitstream import unpack

    for feature in features:
        data = bottleneck.encode(feature)
        symbols = bottleneck.symbols(feature)
        frame = unpack(data)
        coder = bottleneck._cached_coder() if isinstance(bottleneck, EntropicStudent) else bottleneck.quantizer.coder
        decoded = coder.decode(frame.payload, frame.shape)
        assert np.array_equal(decoded, symbols)
        assert len(np.unique(symbols)) > 1  # not a trivial all-zero code
        # and the decoder sees exactly that: decoding the bytes equals decoding the symbols
        if isinstance(bottleneck, EntropicStudent):
            direct = bottleneck.decoder(torch.from_numpy(symbols.astype(np.float32)).unsqueeze(0))[0]
        else:
            direct = bottleneck.decoder(bottleneck.quantizer.dequantize(symbols).unsqueeze(0))[0]
        assert torch.equal(bottleneck.decode(data), direct)


def test_a_damaged_bitstream_is_a_clear_error_not_a_wrong_answer(teacher, photo):
    torch.manual_seed(0)
    spec = BottleneckSpec("entropic", 8, 64, 16, stride=1)
    network = SplitNetwork(teacher, spec).eval()
    data = network.device_side(photo[:1])
    network.server_side(data)  # intact: fine
    with pytest.raises(BitstreamError, match="truncated"):
        network.server_side(data[:-7])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    with pytest.raises(BitstreamError, match="corrupted|CRC"):
        network.server_side(bytes(flipped))
    with pytest.raises(BitstreamError):
        network.server_side(b"not a bitstream at all")


def test_a_split_network_saves_and_loads_to_the_same_outputs(tmp_path, teacher, photo):
    torch.manual_seed(0)
    network = SplitNetwork(teacher, BottleneckSpec("bottlefit", 5, 32, 8, hidden=16, stride=2)).eval()
    network.bottleneck.fit_coder(head_and_tail(teacher, 5)[0](photo))
    network.save(tmp_path / "n.pt")
    loaded = SplitNetwork.load(tmp_path / "n.pt")
    data = network.device_side(photo[:1])
    assert loaded.device_side(photo[:1]) == data
    assert torch.equal(loaded.server_side(data), network.server_side(data))


def test_cut_points_are_checked():
    assert check_cut(8) == 8
    for bad in (0, 20, "3"):
        with pytest.raises(SpecError, match="cut"):
            check_cut(bad)


def _row(location, method, acc, size, device_s, server_s, level="", cut=None):
    return OptionMeasure(SplitOption(location, method, level, 224, cut), acc, size, device_s, server_s)


TABLE = [_row("device", "local", 1.0, 0, 0.06, 0),
         _row("server", "png", 1.0, 60_000, 0.01, 0.07),
         _row("server", "jpeg", 0.7, 5_000, 0.003, 0.065, "q50"),  # cheap but far less accurate: never eligible
         _row("split", "entropic", 0.995, 1_500, 0.02, 0.02, "b8", 8)]


def test_the_planner_picks_by_bandwidth_and_keeps_accuracy():
    slow_link = plan_split(TABLE, 0.1e6, device_slowdown=2, server_slowdown=1)
    assert slow_link.name == "local"
    fast_link = plan_split(TABLE, 1e9, device_slowdown=20, server_slowdown=1)
    assert fast_link.name == "offload-png"
    middle = plan_split(TABLE, 2e6, device_slowdown=2, server_slowdown=1)
    assert middle.name == "split-entropic-cut8-b8"
    assert middle.predicted_latency_s == pytest.approx(2 * 0.02 + 8 * 1500 / 2e6 + 0.02)
    strict = plan_split(TABLE, 2e6, device_slowdown=2, server_slowdown=1, max_loss=0.001)
    assert strict.name == "local"  # the bottleneck is 0.5 points off: not allowed at 0.1
    with pytest.raises(SpecError, match="bandwidth"):
        plan_split(TABLE, 0, 1, 1)


def test_the_early_filter_keeps_the_objects_and_saves_bytes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 600)
    positive = labels == 0
    features = torch.randn(600, 16, 4, 4) + torch.as_tensor(positive, dtype=torch.float32).view(-1, 1, 1, 1) * 1.5
    model = train_filter(features[:400], positive[:400], target_recall=0.99)
    sizes = np.full(200, 1000.0)
    result = evaluate_filter(model, features[400:], positive[400:], sizes, skipped_seconds=0.02,
                             bandwidth_bps=2e6, target="zero")
    assert result.recall >= 0.9
    assert 0.5 < result.bytes_saved_fraction <= 1 - positive[400:].mean() + 0.05
    assert result.seconds_saved_per_image == pytest.approx(result.rejected_fraction * (0.02 + 8 * 1000 / 2e6))


def test_photos_are_split_by_photo_and_mnist_is_real():
    from edgepool.split.data import TEST_PHOTOS, TRAIN_PHOTOS, mnist_sets, photo_sets

    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)
    train, test = photo_sets(train_per_photo=2)
    assert set(train.sources) == set(TRAIN_PHOTOS) and set(test.sources) == set(TEST_PHOTOS)
    assert train.images.shape[1:] == (224, 224, 3) and test.images.dtype == np.uint8
    digits, held_out = mnist_sets()
    assert len(digits) == 4000 and len(held_out) == 1000 and digits.images.shape[1:] == (28, 28)
    assert sorted(np.bincount(np.concatenate([digits.labels, held_out.labels]))) == [500] * 10


def test_bad_input_is_one_line():
    result = runner.invoke(app, ["split", "train", "--out", "/tmp/x-never", "--method", "zip"])
    assert result.exit_code == 2 and "--method" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["split", "train", "--out", "/tmp/x-never", "--cut", "42"])
    assert result.exit_code == 2 and "--cut" in result.output
    result = runner.invoke(app, ["split", "plan", "/tmp/no-such-split-folder"])
    assert result.exit_code == 2 and "table" in result.output


@pytest.mark.slow
def test_train_eval_plan_on_mnist(tmp_path):
    folder = tmp_path / "mnist"
    result = runner.invoke(app, ["split", "train", "--task", "mnist", "--out", str(folder), "--method", "entropic",
                                 "--cut", "5", "--size", "4", "--head-epochs", "2", "--tail-epochs", "1",
                                 "--train-images", "300", "--test-images", "100", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["bottleneck"]["method"] == "entropic"
    result = runner.invoke(app, ["split", "eval", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    names = {row["option"]["name"]: row for row in report["table"]}
    assert {"local-r64", "offload-png-r64", "split-entropic-cut5-b4-beta0.01-step0.1-r64",
            "split-feature8-cut5-r64"} <= set(names)
    assert names["offload-png-r64"]["accuracy"] == names["local-r64"]["accuracy"]  # PNG is lossless
    assert names["split-entropic-cut5-b4-beta0.01-step0.1-r64"]["bytes_per_image"] < names["offload-png-r64"][
        "bytes_per_image"]
    assert (folder / "rate-accuracy.png").stat().st_size > 10_000
    def plan(bandwidth: str) -> dict:
        result = runner.invoke(app, ["split", "plan", str(folder), "--bandwidth", bandwidth, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output.strip().splitlines()[-1])

    assert plan("1Kbps")["option"]["location"] == "device"  # a 200-byte digit takes over a second to send
    assert plan("1Gbps")["option"]["location"] != "device"  # a Pi 4 computes slower than a laptop + 1 Gbps
