"""`Request`: one generation request and everything the scheduler and the metrics need to know about it."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class RequestState(str, enum.Enum):
    WAITING = "waiting"      # queued: never started, or preempted by recompute (KV cache dropped)
    RUNNING = "running"      # KV cache on the device, scheduled every step
    SWAPPED = "swapped"      # KV cache moved to the bounded host pool
    FINISHED = "finished"
    FAILED = "failed"        # explicit error; `error` says why


@dataclass
class Request:
    """A request. Token counts drive the scheduler; `prompt_tokens` is only needed by the real engine.

    Each scheduled step processes the tokens `[num_computed, total_tokens)` (the whole prompt on the first
    step, the prompt plus every generated token after a recompute, one token when decoding) and yields one
    new token, so prefill, decode and recompute are the same operation.
    """

    request_id: str
    prompt_len: int
    max_new_tokens: int
    arrival_time: float = 0.0
    prompt_tokens: list[int] | None = None
    prompt_text: str = ""
    eos_token_id: int | None = None
    # Where the response ends when replaying a trace (stands in for the end-of-sequence token, which a
    # randomly initialised model would emit at random). None: run to EOS or max_new_tokens.
    stop_after: int | None = None
    temperature: float = 0.0
    seed: int | None = None
    # Length prediction (filled by the predictor when a policy uses one).
    predicted_len: float | None = None
    predicted_upper: float | None = None

    state: RequestState = RequestState.WAITING
    output_tokens: list[int] = field(default_factory=list)
    num_generated: int = 0
    num_computed: int = 0          # tokens whose K/V are in the device cache
    reserved_tokens: int = 0       # KV capacity the policy asked for at admission
    first_token_time: float | None = None
    finish_time: float | None = None
    token_times: list[float] = field(default_factory=list)
    recomputes: int = 0
    swaps: int = 0
    admitted_time: float | None = None
    error: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_len + self.num_generated

    @property
    def tokens_to_compute(self) -> int:
        return self.total_tokens - self.num_computed

    @property
    def is_done(self) -> bool:
        return self.state in (RequestState.FINISHED, RequestState.FAILED)

    @property
    def max_total_tokens(self) -> int:
        return self.prompt_len + self.max_new_tokens

    def input_ids_to_compute(self) -> list[int]:
        """Token ids of `[num_computed, total_tokens)`: prompt then generated tokens."""
        assert self.prompt_tokens is not None, "the real engine needs prompt_tokens"
        ids = self.prompt_tokens + self.output_tokens
        return ids[self.num_computed:self.total_tokens]

    def latency(self) -> float | None:
        return None if self.finish_time is None else self.finish_time - self.arrival_time

    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time
