"""A checkpoint's own tokenizer and chat template, behind a small interface of plain lists of ints."""
from __future__ import annotations

import json
from typing import Any, Iterable

from edgepool.llm.checkpoint import Checkpoint

ROLES = ("system", "user", "assistant")


class ChatTokenizer:
    """Wraps the Hugging Face tokenizer of a checkpoint. `encode` matches `tokenizer(text)` (special tokens
    only where the model's tokenizer adds them by default); `decode` skips special tokens; `chat` renders
    messages with the model's chat template and a generation prompt."""

    def __init__(self, hf_tokenizer: Any, eos_ids: Iterable[int]):
        self._tok = hf_tokenizer
        eos = [int(i) for i in eos_ids]
        if not eos and hf_tokenizer.eos_token_id is not None:
            eos = [int(hf_tokenizer.eos_token_id)]
        if not eos:
            raise ValueError("the checkpoint names no end-of-sequence token")
        self.eos_id: int = eos[0]
        self.stop_ids: set[int] = set(eos)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> "ChatTokenizer":
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(ckpt.folder), local_files_only=True)
        return cls(tok, _eos_ids(ckpt))

    @property
    def hf(self) -> Any:
        """The wrapped transformers tokenizer."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Ids the tokenizer knows, added tokens included (the model's config.vocab_size is its logits width)."""
        return len(self._tok)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self._tok, "chat_template", None))

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tok(text)["input_ids"]]

    def decode(self, ids: Iterable[int]) -> str:
        # no clean-up of spaces: the text of a prefix must be a prefix of the text (streams send differences)
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def chat_text(self, messages: Any) -> str:
        """The prompt text `chat` tokenizes (for logs and debugging)."""
        msgs = validate_messages(messages)
        if not self.has_chat_template:
            return _plain_transcript(msgs)
        return self._tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)

    def chat(self, messages: Any) -> list[int]:
        """Token ids of `messages` under the model's chat template, ending with the assistant's turn opening.
        A model without a chat template gets a plain "role: content" transcript. Raises ValueError for a
        malformed message (naming its index and field)."""
        msgs = validate_messages(messages)
        if not self.has_chat_template:
            return self.encode(_plain_transcript(msgs))
        ids = self._tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        if hasattr(ids, "keys"):  # a BatchEncoding, should a transformers version ignore return_dict=False
            ids = ids["input_ids"]
        if ids and isinstance(ids[0], (list, tuple)):
            ids = ids[0]
        return [int(i) for i in ids]


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Chat messages as plain {"role", "content"} dicts. Content is a string, or OpenAI-style text parts
    ([{"type": "text", "text": ...}]) which are joined. Raises ValueError naming the index and field."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of {{role, content}} objects, not {type(messages).__name__}")
    if not messages:
        raise ValueError("messages must hold at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with role and content, not {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role = {role!r} is not valid; accepted: {', '.join(ROLES)}")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string (or a list of text parts), "
                             f"not {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


def _plain_transcript(messages: list[dict[str, str]]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _eos_ids(ckpt: Checkpoint) -> list[int]:
    """eos_token_id from generation_config.json, else config.json (a list keeps its order)."""
    for name in ("generation_config.json", "config.json"):
        path = ckpt.folder / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return []


__all__ = ["ChatTokenizer", "validate_messages", "ROLES"]
