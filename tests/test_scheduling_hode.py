"""Hode: motion filter, region split, the simulated frame latency, reproducibility, and the scenario API."""
from __future__ import annotations

import numpy as np
import pytest

from edgepool.errors import SpecError
from edgepool.scheduling.hode.scenario import HodeConfig, make_env
from edgepool.scheduling.hode.env import EvenSplit, FinishBalanced, LoadConfig, ProportionalSplit
from edgepool.scheduling.hode.regions import FilterConfig, motion_masks, split_regions
from edgepool.scheduling.hode.video import VideoConfig, generate

SMALL = VideoConfig(width=480, height=320, frames=10, moving=(2, 3), static=2)


def _frames_with(square_at, blink_frame=None, T=8):
    frames = np.full((T, 320, 480), 40, np.uint8)
    for t in range(T):
        x = square_at(t)
        frames[t, 100:160, x:x + 60] = 220
        frames[t, 240:300, 20:80] = 200  # static clutter
        if t == blink_frame:
            frames[t, 0:80, 400:480] = 150  # a one-frame blink
    return frames


def test_motion_filter_marks_motion_and_rejects_static_and_one_frame_blinks():
    masks = motion_masks(_frames_with(lambda t: 100 + 12 * t, blink_frame=5), FilterConfig(dilate=0))
    b = 40
    assert masks[6, 100 // b:160 // b + 1, (100 + 72) // b].any()         # the moving square
    assert not masks[3:, 240 // b:300 // b, 20 // b:80 // b].any()        # static clutter never
    assert not masks[3:, 0:2, 400 // b:].any()                              # the blink is not persistent


def test_split_covers_every_moving_block_once_and_follows_shares():
    rng = np.random.default_rng(0)
    mask = rng.random((27, 48)) < 0.15
    split = split_regions(mask, np.array([0.5, 0.25, 0.25]), handle=False)
    assert (split.blocks.sum(0) == mask).all()                             # a partition of the moving blocks
    share = split.counts / mask.sum()
    assert np.allclose(share, [0.5, 0.25, 0.25], atol=0.08)
    with pytest.raises(SpecError):
        split_regions(mask, np.array([-1.0, 2.0]))


def test_handled_cut_keeps_a_crossing_object_whole_in_one_region():
    mask = np.zeros((6, 20), bool)
    mask[1:4, 0:20] = True                     # one wide object: no gap to snap to
    naive = split_regions(mask, np.array([0.5, 0.5]), handle=False)
    handled = split_regions(mask, np.array([0.5, 0.5]), overlap=3)
    assert naive.crossings == 1 and naive.overlap_blocks == 0
    assert handled.crossings == 1 and handled.overlap_blocks == 9
    cut = handled.cuts[0]
    assert handled.blocks[0][:, cut:cut + 3].sum() == 9
    gap = np.zeros((6, 20), bool)
    gap[1:4, 2:8] = gap[1:4, 11:18] = True     # two objects with a gap near the even cut: snapped, no overlap
    snapped = split_regions(gap, np.array([0.5, 0.5]))
    assert snapped.crossings == 0 and snapped.overlap_blocks == 0 and snapped.cuts[0] in range(8, 12)


def test_video_and_environment_are_reproducible_from_their_seed():
    a, b = generate(3, SMALL), generate(3, SMALL)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.frames, generate(4, SMALL).frames)
    cfg = HodeConfig(video=SMALL)
    env = make_env([motion_masks(a.frames)], cfg, flops_per_px=8000.0)
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=11)
        lat, done = [], False
        pol = FinishBalanced(env)
        while not done:
            obs, _, done, _, info = env.step(pol.act(obs))
            lat.append(info["latency_s"])
        runs.append(lat)
    assert runs[0] == runs[1] and len(runs[0]) == SMALL.frames - cfg.filter.window


def test_frame_latency_is_transfer_plus_compute_on_idle_nodes():
    mask = np.zeros((SMALL.frames, 8, 12), bool)
    mask[:, 2:5, 1:11] = True
    quiet = LoadConfig(bg_on_prob=0.0, sigma={}, sigma_default=0.0, rho=1.0)
    cfg = HodeConfig(video=SMALL, load=quiet)
    env = make_env([mask], cfg, flops_per_px=8000.0)
    env.reset(seed=0)
    env.bg_on[:] = False
    env.queues.free_at[:] = 0.0
    env.bw_now[:] = 1.0
    res = env.frame(np.full(env.k, 1.0 / env.k))
    f = env.fleet
    expect = [f.transfer_s(env.cam, n, c * env.block_bytes) + f.compute_s(n, c * env.block_flops)
              for n, c in zip(env.nodes, res.split.counts) if c]
    assert res.latency_s == pytest.approx(max(expect))
    assert res.queue_s.max() == 0.0


def test_baselines_act_through_the_same_action_space():
    mask = np.ones((SMALL.frames, 8, 12), bool)
    env = make_env([mask], HodeConfig(video=SMALL), flops_per_px=8000.0)
    obs, _ = env.reset(seed=1)
    assert np.allclose(env.shares(EvenSplit(env).act(obs)), 0.25, atol=1e-6)
    assert np.allclose(env.shares(ProportionalSplit(env).act(obs)), env.prop, atol=1e-6)
    assert env.action_space.contains(FinishBalanced(env).act(obs))


def test_flop_count_grows_with_area():
    from edgepool.scheduling.hode.cnn import DigitCNN, flops_per_pixel

    model = DigitCNN()
    small, large = flops_per_pixel(model, 80, 80), flops_per_pixel(model, 160, 160)
    assert small > 1000 and large * 160 * 160 > 3.5 * small * 80 * 80    # about 4x the FLOPs for 4x the area
    assert large == pytest.approx(small, rel=0.5)


@pytest.mark.slow
def test_quick_evaluate_reports_the_metrics(tmp_path):
    from edgepool.scheduling.hode import scenario as hode

    res = hode.evaluate(tmp_path, quick=True, seed=0)
    m = res["metrics"]
    for key in ("hode_latency_ratio_vs_even_split", "hode_latency_ratio_vs_proportional_split",
                "hode_accuracy_loss_points", "hode_whole_frame_latency_s_mean"):
        assert np.isfinite(m[key])
    assert not set(res["train_seeds"]) & set(res["eval_seeds"])
    assert m["hode_accuracy_loss_points"] <= m["hode_accuracy_loss_points_naive_cuts"] + 1e-9
    assert all((tmp_path / p).exists() or __import__("pathlib").Path(p).exists() for p in res["plots"].values())
    with pytest.raises(SpecError):
        hode.load_policy(tmp_path / "nothing-here")


@pytest.mark.slow
def test_real_stage_runs_the_cnn_in_node_processes_and_compares_with_the_simulation():
    from edgepool.scheduling.hode.scenario import rollout
    from edgepool.scheduling.hode.cnn import DigitCNN
    from edgepool.scheduling.hode.stage import run_real_stage

    video = generate(5, SMALL)
    masks = motion_masks(video.frames)
    env = make_env([masks], HodeConfig(video=SMALL), flops_per_px=5000.0)
    rows = {"even": {r["frame"]: r for r in rollout(env, EvenSplit(env), 5)}}
    res = run_real_stage(env, video, masks, rows, DigitCNN().eval(), [4, 6], max_gap_s=1.5)
    even = res["policies"]["even"]
    assert len(even["measured_latency_s"]) == 2 and min(even["measured_latency_s"]) > 0
    assert 0.5 < even["measured_over_simulated"] < 20
    assert res["dilation"] > 0 and res["where"]["launcher"] == "local"
