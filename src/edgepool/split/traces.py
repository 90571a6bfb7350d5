"""Synthetic mobile-network bandwidth traces (bits/s per 1-s step) shaped like published drive/commute logs.

The adaptive-offloading environment needs many traces with the fades, outages and slow drifts of a real
mobile link, and train/held-out sets that do not overlap; recorded logs are few and not shipped, so we
generate traces with the shape of two public measurement sets:

- "3g": the Norwegian HSDPA commute logs (Riiser et al., "Commute path bandwidth traces from 3G networks",
  MMSys 2013; bus, tram, metro, ferry, train around Oslo, 1-s samples). Throughput is mostly 0.5-6 Mbit/s
  (mean about 1.5-2.5 Mbit/s, capped near 8 Mbit/s by HSDPA), with deep fades and outages of a few to tens
  of seconds in tunnels and cuttings.
- "4g": the Ghent LTE logs (van der Hooft et al., "HTTP/2-based adaptive streaming of HEVC video over 4G/LTE
  networks", IEEE Comm. Letters 2016; by foot, bicycle, bus, tram, train and car, 1-s samples). Throughput
  spans roughly 0-100 Mbit/s with a mean of tens of Mbit/s and long stretches above 20 Mbit/s, dropping to a
  few Mbit/s at cell edges and briefly to almost nothing.

Model (a Markov-modulated log-normal AR(1) process): a hidden network state (e.g. good/fair/poor/outage)
changes each second by a fixed transition matrix (mean dwell tens of seconds, outages short); within a state
log-throughput follows AR(1) around the state's log-median: `x_t = m_s + rho (x_{t-1} - m_s) + sigma_s
sqrt(1 - rho^2) e_t`, so throughput is log-normal in a state and correlated over seconds. Values are clipped
to [0.05 Mbit/s, cap]; an outage sits near 0.1 Mbit/s (a stalled link still trickles). Deterministic per seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MBIT = 1e6
FLOOR_BPS = 0.05 * MBIT


@dataclass(frozen=True)
class _Kind:
    medians_mbit: tuple[float, ...]  # per state, best first; the last state is the outage
    sigmas: tuple[float, ...]  # log-space standard deviation within a state
    transitions: tuple[tuple[float, ...], ...]  # per-second Markov matrix, rows sum to 1
    cap_mbit: float
    rho: float = 0.8


# Rows: good, fair, poor, outage. Dwell (1 / (1 - stay)): ~30 s, ~25 s, ~15 s, ~7 s.
KINDS: dict[str, _Kind] = {
    "3g": _Kind(medians_mbit=(3.2, 1.4, 0.5, 0.1), sigmas=(0.3, 0.35, 0.45, 0.3), cap_mbit=8.0,
                transitions=((0.967, 0.030, 0.002, 0.001),
                             (0.025, 0.960, 0.012, 0.003),
                             (0.005, 0.045, 0.935, 0.015),
                             (0.020, 0.050, 0.070, 0.860))),
    # Rows: excellent, good, fair, poor, outage.
    "4g": _Kind(medians_mbit=(45.0, 20.0, 7.0, 2.0, 0.1), sigmas=(0.25, 0.3, 0.4, 0.5, 0.3), cap_mbit=100.0,
                transitions=((0.960, 0.035, 0.004, 0.0005, 0.0005),
                             (0.030, 0.950, 0.017, 0.002, 0.001),
                             (0.005, 0.040, 0.935, 0.018, 0.002),
                             (0.002, 0.010, 0.060, 0.918, 0.010),
                             (0.010, 0.040, 0.080, 0.070, 0.800))),
}
TRACE_KINDS = ("mixed", "3g", "4g")


@dataclass
class BandwidthTrace:
    """One link's throughput over time: `bps[i]` bits/s holds for [i*step_s, (i+1)*step_s)."""

    name: str
    step_s: float
    bps: np.ndarray

    @property
    def duration_s(self) -> float:
        return len(self.bps) * self.step_s

    def summary(self) -> dict:
        mbit = self.bps / MBIT
        return {"name": self.name, "seconds": self.duration_s, "mean_mbit": float(mbit.mean()),
                "median_mbit": float(np.median(mbit)), "p5_mbit": float(np.percentile(mbit, 5)),
                "p95_mbit": float(np.percentile(mbit, 95)), "outage_fraction": float((mbit < 0.2).mean())}


def _one(kind: _Kind, seconds: int, rng: np.random.Generator) -> np.ndarray:
    p = np.asarray(kind.transitions)
    medians = np.log(np.asarray(kind.medians_mbit) * MBIT)
    sigmas = np.asarray(kind.sigmas)
    # start in the stationary distribution so a trace's first seconds look like any others
    w, v = np.linalg.eig(p.T)
    stationary = np.abs(np.real(v[:, np.argmin(np.abs(w - 1))]))
    state = int(rng.choice(len(medians), p=stationary / stationary.sum()))
    x = medians[state] + sigmas[state] * rng.standard_normal()
    out = np.empty(seconds)
    noise = rng.standard_normal(seconds)
    jump = rng.random(seconds)
    scale = np.sqrt(1 - kind.rho ** 2)
    for t in range(seconds):
        state = int(np.searchsorted(np.cumsum(p[state]), jump[t] * p[state].sum(), side="right"))
        state = min(state, len(medians) - 1)
        x = medians[state] + kind.rho * (x - medians[state]) + sigmas[state] * scale * noise[t]
        out[t] = x
    return np.clip(np.exp(out), FLOOR_BPS, kind.cap_mbit * MBIT)


def generate_traces(n: int, seconds: int = 300, seed: int = 0, kind: str = "mixed") -> list[BandwidthTrace]:
    """`n` traces of `seconds` 1-s steps; "mixed" draws each trace's kind (3g or 4g) at random.

    Train and held-out sets come from different seeds; the same (n, seconds, seed, kind) gives the same traces.
    """
    if kind not in TRACE_KINDS:
        raise ValueError(f"kind must be one of {TRACE_KINDS}, not {kind!r}")
    if n < 0 or seconds < 1:
        raise ValueError("need n >= 0 and seconds >= 1")
    rng = np.random.default_rng(seed)
    traces = []
    for i in range(n):
        k = kind if kind != "mixed" else ("3g", "4g")[int(rng.integers(2))]
        child = np.random.default_rng([seed, i, 0 if k == "3g" else 1])
        traces.append(BandwidthTrace(name=f"{k}-s{seed}-{i}", step_s=1.0, bps=_one(KINDS[k], seconds, child)))
    return traces


def describe_traces(traces: list[BandwidthTrace]) -> str:
    """One line on what a set of traces holds (for a result's caption)."""
    if not traces:
        return "no traces"
    kinds = sorted({t.name.split("-")[0] for t in traces})
    allbps = np.concatenate([t.bps for t in traces]) / MBIT
    return (f"{len(traces)} synthetic {'/'.join(kinds)} traces x {traces[0].duration_s:.0f} s "
            f"(Markov-modulated log-normal; mean {allbps.mean():.1f} Mbit/s, median {np.median(allbps):.1f}, "
            f"{100 * (allbps < 0.2).mean():.1f}% of seconds below 0.2 Mbit/s)")
