"""What ``dtype="auto"`` means, written once: the fastest dtype the device multiplies natively.

- CUDA: bfloat16 where the GPU supports it, else float16.
- CPU: bfloat16 where the CPU has bf16 dot-product instructions (x86 AVX512_BF16 or AMX-BF16, detected, never
  guessed), else float32. Without them torch emulates bf16 products and fp32 is faster.
- MPS and anything else: float32.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


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
        if isinstance(found, dict):
            return any(bool(found.get(flag)) for flag in _BF16_CPU_FLAGS)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = set(cpuinfo.read_text(errors="replace").split())
        return any(flag in flags for flag in _BF16_CPU_FLAGS)
    return False


def auto_dtype(device: str | torch.device) -> torch.dtype:
    """The dtype ``"auto"`` stands for on ``device`` (see the module docstring)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32
