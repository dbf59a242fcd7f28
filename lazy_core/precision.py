"""What ``dtype="auto"`` means, written once: the fastest dtype the device multiplies natively.

- CUDA: bfloat16 where the GPU supports it, else float16.
- CPU: bfloat16 where the CPU has bf16 dot-product instructions (x86 AVX512_BF16 or AMX-BF16, detected, never
  guessed), else float32. Without them torch emulates bf16 products and fp32 is faster.
- MPS and anything else: float32.

The environment variable ``LAZYLLM_AUTO_DTYPE`` (``float32``, ``bfloat16`` or ``float16``) overrides that choice on
every device, in this process and in the Ray workers it starts: how the test suite runs the whole pipeline in bf16
and in fp32 on any CPU, and how a user pins the dtype of jobs that keep ``dtype="auto"``.

bf16 is not batch-invariant: a product's sum order can change with its row count (AMX tiles on Intel, other kernels
elsewhere), so one item's greedy tokens may differ between a batch and a run alone. Exact-equality invariants (a
batch == its items alone, continuous == static, pruning off == ``model.generate``) hold in float32.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import torch

AUTO_DTYPE_ENV = "LAZYLLM_AUTO_DTYPE"
_AUTO_OVERRIDES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def bf16_in_capabilities(capabilities: Mapping[str, object]) -> bool:
    """True when torch's CPU capability report (``torch.cpu.get_capabilities()``) names AVX512_BF16 or AMX-BF16."""
    return any(bool(capabilities.get(flag)) for flag in _BF16_CPU_FLAGS)


def bf16_in_cpuinfo(text: str) -> bool:
    """True when the flags of ``/proc/cpuinfo`` (its text) name avx512_bf16 or amx_bf16."""
    flags = set(text.split())
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX512_BF16 or AMX-BF16): torch's own CPU capability query,
    else the kernel's CPU flags (Linux)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        try:
            found = capabilities()
        except RuntimeError:
            found = None
        if isinstance(found, Mapping):
            return bf16_in_capabilities(found)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        return bf16_in_cpuinfo(cpuinfo.read_text(errors="replace"))
    return False


def auto_override() -> torch.dtype | None:
    """The dtype ``LAZYLLM_AUTO_DTYPE`` pins ``"auto"`` to, or None when it is unset or empty."""
    value = os.environ.get(AUTO_DTYPE_ENV, "").strip().lower()
    if not value:
        return None
    if value not in _AUTO_OVERRIDES:
        raise ValueError(f"{AUTO_DTYPE_ENV}={value!r} is not a dtype 'auto' can stand for; set it to one of "
                         f"{sorted(_AUTO_OVERRIDES)}, or unset it to let the device choose")
    return _AUTO_OVERRIDES[value]


def auto_dtype(device: str | torch.device) -> torch.dtype:
    """The dtype ``"auto"`` stands for on ``device`` (see the module docstring)."""
    pinned = auto_override()
    if pinned is not None:
        return pinned
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32
