"""`LengthPredictor`: response length from the prompt, with a confidence band (quantile regression).

Two gradient-boosted quantile regressors (scikit-learn) on prompt features predict the median and an upper
quantile of log(response length). The gap between them is the predictor's uncertainty: the padding
policy reserves more KV cache when it is wide (low confidence) and less when it is narrow. Gradient-boosted
quantiles under-cover (a 0.9 bound held ~80% of held-out lengths), so the upper bound is calibrated on a
quarter of the training requests kept aside (split conformal, as in conformalized quantile regression,
Romano et al. 2019): it is shifted by the residual quantile that makes it cover `upper_quantile` of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.feature_extraction.text import HashingVectorizer

from edgepool.errors import SpecError
from edgepool.serving.request import Request
from edgepool.serving.traces import TraceRequest


@dataclass(frozen=True)
class PredictorAccuracy:
    samples: int
    mean_abs_error_tokens: float       # |median prediction - true length|
    mean_true_len: float
    within_2x: float                   # fraction with true/2 <= median <= 2*true
    upper_coverage: float              # fraction with true <= upper prediction (target: the quantile)
    mean_padding_tokens: float         # mean (upper - median)

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


class LengthPredictor:
    def __init__(self, upper_quantile: float = 0.9, n_hash_features: int = 64, seed: int = 0):
        if not 0.5 < upper_quantile < 1.0:
            raise SpecError(field="upper_quantile", value=upper_quantile, accepted="a quantile in (0.5, 1)")
        self.upper_quantile = upper_quantile
        self._words = HashingVectorizer(n_features=n_hash_features, alternate_sign=False, norm=None)
        self._median = HistGradientBoostingRegressor(loss="quantile", quantile=0.5, max_iter=150, random_state=seed)
        self._upper = HistGradientBoostingRegressor(loss="quantile", quantile=upper_quantile, max_iter=150,
                                                    random_state=seed)
        self.upper_offset = 0.0       # log-space shift of the upper bound from the calibration split
        self.fitted = False

    def features(self, prompts: list[str], prompt_lens: list[int]) -> np.ndarray:
        # The opening words carry the instruction; the rest is content.
        openings = [" ".join(p.split()[:8]) for p in prompts]
        words = self._words.transform(openings).toarray()
        lens = np.asarray(prompt_lens, dtype=float)[:, None]
        return np.hstack([np.log1p(lens), words])

    def fit(self, trace: list[TraceRequest]) -> "LengthPredictor":
        if len(trace) < 20:
            raise SpecError(field="trace", value=f"{len(trace)} requests", accepted="at least 20 training requests")
        cut = len(trace) * 3 // 4
        x = self.features([t.prompt for t in trace], [t.prompt_len for t in trace])
        y = np.log([t.response_len for t in trace])
        self._median.fit(x[:cut], y[:cut])
        self._upper.fit(x[:cut], y[:cut])
        residuals = np.sort(y[cut:] - self._upper.predict(x[cut:]))
        rank = min(int(np.ceil((len(residuals) + 1) * self.upper_quantile)) - 1, len(residuals) - 1)
        self.upper_offset = float(residuals[rank])
        self.fitted = True
        return self

    def predict_lengths(self, prompts: list[str], prompt_lens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        if not self.fitted:
            raise RuntimeError("LengthPredictor.fit() first")
        x = self.features(prompts, prompt_lens)
        median = np.exp(self._median.predict(x))
        upper = np.maximum(np.exp(self._upper.predict(x) + self.upper_offset), median)
        return median, upper

    def predict(self, requests: list[Request]) -> None:
        median, upper = self.predict_lengths([r.prompt_text for r in requests], [r.prompt_len for r in requests])
        for request, m, u in zip(requests, median, upper):
            request.predicted_len = float(min(m, request.max_new_tokens))
            request.predicted_upper = float(min(u, request.max_new_tokens))

    def evaluate(self, trace: list[TraceRequest]) -> PredictorAccuracy:
        median, upper = self.predict_lengths([t.prompt for t in trace], [t.prompt_len for t in trace])
        true = np.array([t.response_len for t in trace], dtype=float)
        return PredictorAccuracy(
            samples=len(trace),
            mean_abs_error_tokens=float(np.abs(median - true).mean()),
            mean_true_len=float(true.mean()),
            within_2x=float(((median >= true / 2) & (median <= true * 2)).mean()),
            upper_coverage=float((true <= upper).mean()),
            mean_padding_tokens=float((upper - median).mean()),
        )


def train_predictor(workload: str, length_scale: float = 1.0, n: int = 2000, seed: int = 1234,
                    upper_quantile: float = 0.9) -> tuple[LengthPredictor, PredictorAccuracy]:
    """Fit on one synthetic trace and evaluate on another (different seeds: no request is in both)."""
    from edgepool.serving.traces import generate_trace

    train = generate_trace(workload, n, 1.0, seed=seed, length_scale=length_scale)
    held_out = generate_trace(workload, max(n // 4, 50), 1.0, seed=seed + 1, length_scale=length_scale)
    predictor = LengthPredictor(upper_quantile).fit(train)
    return predictor, predictor.evaluate(held_out)


