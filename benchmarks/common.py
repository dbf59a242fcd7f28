"""Shared helpers of the benchmarks: model loading, machine description, JSON results, BENCHMARKS.md sections."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def load(name: str, threads: int, dtype: str = "float32", quantize: str = "none") -> tuple[Any, Any]:
    """(model, tokenizer) on CPU with ``threads`` torch threads, fp32 unless ``dtype`` says otherwise ("auto":
    lazy_core.precision), weights quantized as ``quantize`` says (lazy_core.quantize); the default name is the
    embedded model."""
    from lazy_core.loading import load_model

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    model, tok = load_model(name, dtype=dtype, device="cpu", quantize=quantize)
    model.eval()
    return model, tok


# ---- weight quantization as a dimension of a benchmark's methods ---------------------------------------------------

QUANT_SEP = "+"


def quant_label(method: str, quantize: str) -> str:
    """A method's name on a quantized model: ``lazy+int4``; unquantized (``none``) the name alone, as the records
    written before quantization existed."""
    return method if quantize == "none" else f"{method}{QUANT_SEP}{quantize}"


def split_quant(label: str) -> tuple[str, str]:
    """``lazy+int4`` -> ("lazy", "int4"); ``lazy`` -> ("lazy", "none")."""
    method, _, quantize = label.partition(QUANT_SEP)
    return method, quantize or "none"


class QuantizedModels:
    """The benchmark's model once per quantization scheme, loaded when first asked for (tokenizers are the same)."""

    def __init__(self, name: str, threads: int, dtype: str) -> None:
        self.name, self.threads, self.dtype = name, threads, dtype
        self._models: dict[str, Any] = {}
        self.tokenizer: Any = None

    def get(self, quantize: str) -> Any:
        if quantize not in self._models:
            self._models[quantize], self.tokenizer = load(self.name, self.threads, self.dtype, quantize)
        return self._models[quantize]


def context_limit(model: Any) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the load average shows how shared the machine was)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "git_commit": commit,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def threads_of(record: dict[str, Any]) -> int | None:
    """The torch thread count a results record was measured with (``machine()``'s, or the record's own field), None
    when it was not recorded."""
    threads = (record.get("machine") or {}).get("torch_threads", record.get("torch_threads"))
    return int(threads) if threads is not None else None


def threads_text(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """The torch thread counts of (reference, method) record pairs: "2" when each pair ran at 2 threads, "1, 2" when
    each pair ran at one count (some at 1, some at 2), "2 / 1" when every reference ran at 2 and the method at 1,
    "K of N at two counts" otherwise, "?" where the counts were not recorded. On CPUs whose bf16 matrix products
    split their rows by thread (AMX here), an output depends on the thread count, so a pair measured at two counts
    can differ where the methods do not."""
    known = [(threads_of(ref), threads_of(rec)) for ref, rec in pairs]
    known = [(a, b) for a, b in known if a is not None and b is not None]
    if not known:
        return "?"
    unknown = f" ({len(pairs) - len(known)} unrecorded)" if len(known) < len(pairs) else ""
    differing = [(a, b) for a, b in known if a != b]
    if not differing:
        return ", ".join(str(t) for t in sorted({a for a, _ in known})) + unknown
    if len(differing) == len(known) and len(set(differing)) == 1:
        return f"{differing[0][0]} / {differing[0][1]}" + unknown
    return f"{len(differing)} of {len(known)} at two counts" + unknown


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def replace_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in BENCHMARKS.md (appended at the
    end when the markers are missing), so each benchmark rewrites only its own section. ``body`` is what the
    benchmark computes from its results; the section's heading and conclusions are written by hand outside the
    markers, where a rewrite leaves them alone."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if v != v else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
