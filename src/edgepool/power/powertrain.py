"""PowerTrain: predict time per minibatch and power of every mode from a few profiled ones.

A small neural network (scikit-learn's `MLPRegressor`) maps mode features to log time and log power. It is
pretrained once on a reference workload profiled in many modes, then *transferred* to a new workload from a
few profiled modes (<= 50) by refitting its output layer: a ridge regression on the pretrained network's last
hidden layer predicts the new workload's residual from the reference prediction, with the ridge strength
chosen by leave-one-out cross-validation (strong: the new workload is the reference scaled; weak: a new
output layer). Baselines: the same network from scratch on the same samples, and linear scaling of the
reference's measured times by the samples' median ratio.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import RidgeCV
from sklearn.neural_network import MLPRegressor
from threadpoolctl import threadpool_limits

from edgepool.power.modes import Mode, ModeSpace

HIDDEN = (32, 32)


def mode_inputs(space: ModeSpace, modes: list[Mode]) -> np.ndarray:
    """Features of each mode: values over the dimension's max, and their inverses (time goes as 1/f)."""
    x = space.features(modes)
    return np.hstack([x, 1.0 / x])


def mape(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Mean absolute percentage error, in percent."""
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    return float(np.mean(np.abs(predicted - actual) / actual) * 100.0)


@dataclass
class Predictor:
    """Time (s) and power (W) per mode of one workload on one mode space."""

    space: ModeSpace
    net: MLPRegressor
    y_mean: np.ndarray
    y_std: np.ndarray
    heads: list[RidgeCV] = field(default_factory=list)  # transfer: per-output residual on hidden features
    how: str = "pretrained"
    samples: int = 0

    def hidden(self, x: np.ndarray) -> np.ndarray:
        h = x
        for w, b in zip(self.net.coefs_[:-1], self.net.intercepts_[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        return h

    def _standard(self, modes: list[Mode]) -> np.ndarray:
        x = mode_inputs(self.space, modes)
        y = self.net.predict(x).reshape(len(modes), -1)
        if self.heads:
            h = self.hidden(x)
            y = y + np.column_stack([head.predict(h) for head in self.heads])
        return y

    def predict(self, modes: list[Mode]) -> tuple[np.ndarray, np.ndarray]:
        """(time_s, power_w) arrays for `modes`."""
        with threadpool_limits(1):
            y = np.exp(self._standard(modes) * self.y_std + self.y_mean)
        return y[:, 0], y[:, 1]


def _targets(times, powers) -> np.ndarray:
    return np.log(np.column_stack([np.asarray(times, float), np.asarray(powers, float)]))


def fit_predictor(space: ModeSpace, modes: list[Mode], times, powers, seed: int = 0,
                  how: str = "pretrained") -> Predictor:
    """Train the network on profiled modes (the reference workload's, or a new one's from scratch)."""
    if len(modes) < 3:
        raise ValueError(f"fit_predictor needs at least 3 profiled modes, got {len(modes)}")
    y = _targets(times, powers)
    mean, std = y.mean(axis=0), y.std(axis=0) + 1e-9
    net = MLPRegressor(hidden_layer_sizes=HIDDEN, activation="relu", solver="lbfgs", alpha=1e-3,
                       max_iter=1500, random_state=seed)
    with threadpool_limits(1), warnings.catch_warnings():  # tiny matrices: BLAS threads only contend
        warnings.simplefilter("ignore", ConvergenceWarning)
        net.fit(mode_inputs(space, modes), (y - mean) / std)
    return Predictor(space=space, net=net, y_mean=mean, y_std=std, how=how, samples=len(modes))


def transfer(pretrained: Predictor, modes: list[Mode], times, powers) -> Predictor:
    """Adapt a pretrained predictor to a new workload from a few profiled modes (refit the output layer)."""
    if len(modes) < 2:
        raise ValueError(f"transfer needs at least 2 profiled modes, got {len(modes)}")
    x = mode_inputs(pretrained.space, modes)
    base = pretrained.net.predict(x).reshape(len(modes), -1)
    target = (_targets(times, powers) - pretrained.y_mean) / pretrained.y_std
    h = pretrained.hidden(x)
    heads = []
    for j in range(target.shape[1]):  # noqa: B007
        head = RidgeCV(alphas=np.logspace(-3, 4, 15))
        head.fit(h, target[:, j] - base[:, j])
        heads.append(head)
    return Predictor(space=pretrained.space, net=pretrained.net, y_mean=pretrained.y_mean,
                     y_std=pretrained.y_std, heads=heads, how="transferred", samples=len(modes))


def linear_scaling(reference_times: np.ndarray, sample_index: np.ndarray, sample_times) -> np.ndarray:
    """Baseline: the reference workload's time in every mode times the samples' median time ratio."""
    ratio = np.median(np.asarray(sample_times, float) / reference_times[sample_index])
    return reference_times * ratio


# ------------------------------------------------------------------------------------------- decisions
def pareto_front(times, powers) -> list[int]:
    """Indices of the modes no other mode beats on both time and power, fastest first."""
    times, powers = np.asarray(times, float), np.asarray(powers, float)
    order = np.lexsort((powers, times))
    front, best_power = [], np.inf
    for i in order:
        if powers[i] < best_power:
            front.append(int(i))
            best_power = powers[i]
    return front


def best_under_budget(times, powers, budget_w: float) -> int | None:
    """Index of the fastest mode whose power is within the budget, or None if none is."""
    times, powers = np.asarray(times, float), np.asarray(powers, float)
    ok = np.flatnonzero(powers <= budget_w)
    return int(ok[np.argmin(times[ok])]) if len(ok) else None
