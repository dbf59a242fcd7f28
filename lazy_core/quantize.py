"""Weight-only quantization of a loaded model's linear layers: decoding at the bytes it must move.

A decoding step multiplies a few rows (one per item) by every weight of the model, so it is bound by the bytes of
weights it reads. PyTorch's own weight-only CPU kernels read fewer: ``aten._weight_int8pack_mm`` (int8, one scale per
output channel) and ``aten._weight_int4pack_mm_for_cpu`` (4-bit, a scale and a zero per group of 32 inputs), both
with bf16 activations. Their cost grows with every row while a bf16 product's stays flat up to ~16 rows, so a
:class:`QuantizedLinear` runs products of at most ``max_rows`` rows (the decoding steps of a small batch) through its
quantized weights and larger ones (prefill, reviving steps) through the dense weight, which it keeps: the model holds
1.5x (int8) or 1.25x (int4) its dense bytes. Measured in BENCHMARKS ("Weight-only quantization").

Schemes, per linear layer (the decoder layers' projections and the ``lm_head``; embeddings and norms stay dense):

- ``"int8"``: symmetric int8 per output channel (~1 % relative error on a weight).
- ``"int4"``: 4-bit groups of 32 (asymmetric) where they hold the weight within ``int4_max_error`` (relative Frobenius
  error), int8 elsewhere. A model shipped as a 4-bit GGUF (Q4_0 / Q4_1 / Q4_K) was 4-bit in groups of 32 to begin
  with: its layers are held exactly up to the bf16 rounding of the group's scale and zero (0.2 % on SmolLM2, about
  what bf16 itself costs), while its 8-bit tensors (the embedding / lm_head) and any bf16 model's layers would lose
  ~8 % in 4 bits and take int8. The summary says how many layers took which.

Why not a library: torchao 0.18 (the maintained weight-only library) installs against torch 2.13, but in eager mode its
int8 weight-only linear converts the whole weight to the activation dtype on every call, 0.37x a bf16 product at one
row here (its speed needs ``torch.compile``). PyTorch's kernels need no packing code of ours but their own packing
call; this module chooses per layer and per product which weights to read. Kernel limits found here (torch 2.13): the
int8 kernel needs ``in_features % 16 == 0`` (other shapes crashed the process or returned garbage), the int4 packing
``out_features % 16 == 0`` and ``in_features % 32 == 0``; a layer neither takes stays dense. On a device without these
kernels (they are CPU kernels; GPUs have other ones, not measured by this project) the quantized products dequantize
the weight first: correct, never faster; the summary names the kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from lazy_core.precision import cpu_has_native_bf16

QuantizeScheme = Literal["none", "int8", "int4"]
QUANTIZE_CHOICES = ("auto", "none", "int8", "int4")
# Products of at most this many rows read the quantized weights: on the AMX CPU int8 beats bf16 at 1-4 rows on every
# SmolLM2 shape (2.1-4x at one row, 1.3-1.9x at four) and loses at 8 on most (BENCHMARKS "Weight-only quantization").
DEFAULT_MAX_ROWS = 4
INT4_GROUP = 32
# int4 takes a layer whose relative error it keeps under this (int8's own is ~1 %; a 4-bit GGUF's layers: 0.2 %)
DEFAULT_INT4_MAX_ERROR = 0.005
_INT8_K_MULTIPLE = 16  # the int8 CPU kernel reads the inputs in blocks of 16 (see the module docstring)
_INT4_N_MULTIPLE = 16  # the int4 CPU packing takes outputs in blocks of 16


@dataclass(frozen=True)
class QuantSummary:
    """What :func:`quantize_weights` did to a model."""

    scheme: str  # "none", "int8" or "int4" (as asked)
    int8_layers: int
    int4_layers: int
    dense_layers: int  # linear layers left dense: a shape no kernel takes
    kernels: tuple[str, ...]  # the kernels the quantized products run: int8pack, int4pack, dequantize
    max_rows: int
    quantized_bytes: int  # the quantized weights with their scales
    dense_bytes: int  # the dense weights of the same layers (kept beside them)

    def describe(self) -> str:
        """One line for logs, the run report and the CLI: ``none`` or ``int4 (int4pack+int8pack: 210 int4, 1 int8
        ...)``."""
        if self.int8_layers + self.int4_layers == 0:
            return "none"
        parts = [f"{n} {name}" for n, name in ((self.int4_layers, "int4"), (self.int8_layers, "int8"),
                                               (self.dense_layers, "dense")) if n]
        return (f"{self.scheme} ({'+'.join(self.kernels)}: {', '.join(parts)} layers; products of <= {self.max_rows} "
                f"rows; {self.quantized_bytes / 2**20:.0f} MiB beside {self.dense_bytes / 2**20:.0f} MiB dense)")


# ---- the weights -----------------------------------------------------------------------------------------------------


def int8_weight(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of ``weight`` [out, in] -> (q [out, in] int8, scale [out] in
    ``scale_dtype``). The scale is rounded to its dtype before q is chosen, so ``q * scale`` is exactly the weight the
    kernel multiplies by."""
    w = weight.detach().float()
    amax = w.abs().amax(1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(scale_dtype)
    q = torch.round(w / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def int4_weight(weight: torch.Tensor, scale_dtype: torch.dtype,
                group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit groups of ``group`` inputs -> (q [out, in] int8 holding 0..15, scales_and_zeros
    [in / group, out, 2] in ``scale_dtype``), in the layout of the int4 kernel: w = (q - 8) * scale + zero. Scale and
    zero are rounded to their dtype before q is chosen."""
    w = weight.detach().float()
    out_f, in_f = w.shape
    grouped = w.reshape(out_f, in_f // group, group)
    low, high = grouped.amin(-1), grouped.amax(-1)
    scale = torch.where(high > low, (high - low) / 15.0, torch.ones_like(low)).to(scale_dtype).float()
    zero = (low + 8 * scale).to(scale_dtype).float()
    q = torch.round((grouped - zero[..., None]) / scale[..., None] + 8).clamp_(0, 15)
    scales_and_zeros = torch.stack([scale.t(), zero.t()], -1).to(scale_dtype).contiguous()
    return q.reshape(out_f, in_f).to(torch.int8), scales_and_zeros


def int4_dequantized(q: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """The weight [out, in] (float32) that q [out, in] and scales_and_zeros [in / group, out, 2] stand for."""
    out_f, in_f = q.shape
    groups = scales_and_zeros.shape[0]
    scale, zero = scales_and_zeros[..., 0].t().float(), scales_and_zeros[..., 1].t().float()  # [out, groups]
    grouped = q.float().reshape(out_f, groups, in_f // groups)
    return ((grouped - 8) * scale[..., None] + zero[..., None]).reshape(out_f, in_f)


def relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """||approx - weight|| / ||weight|| (Frobenius, float32)."""
    w = weight.detach().float()
    norm = w.norm()
    return 0.0 if norm == 0 else float((approx.float() - w).norm() / norm)


# ---- the kernels -----------------------------------------------------------------------------------------------------


@functools.cache
def _cpu_kernels_run(device_type: str, dtype: torch.dtype) -> bool:
    """True when PyTorch's int8 and int4 CPU kernels run on this device type with activations of ``dtype`` and give
    the right products (checked on shapes they support)."""
    if device_type != "cpu":
        return False
    try:
        x = torch.ones(2, 64, dtype=dtype)
        int8 = torch.ops.aten._weight_int8pack_mm(x, torch.ones(16, 64, dtype=torch.int8),
                                                  torch.full((16,), 0.5, dtype=dtype))
        q, sz = int4_weight(torch.ones(16, 64), dtype)
        packed = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        int4 = torch._weight_int4pack_mm_for_cpu(x, packed, INT4_GROUP, sz)
    except (RuntimeError, NotImplementedError, AttributeError):
        return False
    return bool((int8 == 32).all()) and bool((int4 == 64).all())


class QuantizedLinear(nn.Module):
    """An ``nn.Linear`` whose products of at most ``max_rows`` rows read quantized weights (the module docstring)."""

    def __init__(self, linear: nn.Linear, scheme: str, kernel: str, max_rows: int) -> None:
        super().__init__()
        if scheme not in ("int8", "int4") or kernel not in ("int8pack", "int4pack", "dequantize"):
            raise ValueError(f"unknown scheme / kernel {scheme!r} / {kernel!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.scheme, self.kernel, self.max_rows = scheme, kernel, max_rows
        dtype, device = linear.weight.dtype, linear.weight.device
        q, scale = (int8_weight if scheme == "int8" else int4_weight)(linear.weight, dtype)
        if kernel == "int4pack":  # [out, in / 2] uint8, the CPU kernel's layout
            q = torch._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        self.register_buffer("qweight", q.to(device))
        self.register_buffer("scale", scale.to(device))  # int8: [out]; int4: [in / 32, out, 2] scales and zeros
        self.weight = linear.weight  # the dense weight, for large products (a weight tied to the embedding stays tied)
        self.bias = linear.bias

    def dequantized(self) -> torch.Tensor:
        """[out, in] the weight the quantized products multiply by, in the activation dtype (from unpacked weights:
        the dequantize kernel's, and what the tests compare the others with)."""
        if self.kernel == "int4pack":
            raise ValueError("the int4pack layout is the kernel's own; compare through forward() instead")
        if self.scheme == "int8":
            return self.qweight.to(self.scale.dtype) * self.scale[:, None]
        return int4_dequantized(self.qweight, self.scale).to(self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out]. The row count is a shape, known without a host sync."""
        rows = x.numel() // self.in_features
        if rows > self.max_rows or rows == 0:
            return F.linear(x, self.weight, self.bias)
        if self.kernel == "dequantize":
            return F.linear(x, self.dequantized(), self.bias)
        flat = x.reshape(rows, self.in_features).contiguous()
        if self.kernel == "int8pack":
            out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scale)
        else:
            out = torch._weight_int4pack_mm_for_cpu(flat, self.qweight, INT4_GROUP, self.scale)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.scheme}, "
                f"kernel={self.kernel}, max_rows={self.max_rows}")


# ---- choosing -----------------------------------------------------------------------------------------------------


def resolve_quantize(quantize: str, device: str | torch.device, dtype: torch.dtype) -> QuantizeScheme:
    """The scheme ``quantize`` stands for on ``device`` with activations of ``dtype``. ``"auto"``: int4 (int8 where
    4 bits would not hold a layer) on a CPU with native bf16 products running bf16, where it was measured faster at
    the same quality (BENCHMARKS "Weight-only quantization"); none elsewhere: with fp32 activations the kernels are
    4-10x slower than fp32 products here, and no GPU has measured them."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {list(QUANTIZE_CHOICES)}, got {quantize!r}")
    if quantize != "auto":
        return quantize  # type: ignore[return-value]
    cpu = torch.device(device).type == "cpu"
    return "int4" if cpu and dtype == torch.bfloat16 and cpu_has_native_bf16() else "none"


def _layer_scheme(linear: nn.Linear, scheme: str, cpu_kernels: bool, int4_max_error: float) -> tuple[str, str] | None:
    """(scheme, kernel) for one layer, or None to leave it dense."""
    out_f, in_f = linear.out_features, linear.in_features
    if scheme == "int4" and in_f % INT4_GROUP == 0 and (out_f % _INT4_N_MULTIPLE == 0 or not cpu_kernels):
        q, sz = int4_weight(linear.weight, linear.weight.dtype)
        if relative_error(linear.weight, int4_dequantized(q, sz)) <= int4_max_error:
            return "int4", "int4pack" if cpu_kernels else "dequantize"
    if not cpu_kernels:
        return "int8", "dequantize"
    return ("int8", "int8pack") if in_f % _INT8_K_MULTIPLE == 0 else None


def quantize_weights(model: nn.Module, scheme: QuantizeScheme = "int8", max_rows: int = DEFAULT_MAX_ROWS,
                     int4_max_error: float = DEFAULT_INT4_MAX_ERROR, kernels: str = "auto") -> QuantSummary:
    """Replace the decoder layers' ``nn.Linear`` modules and the ``lm_head`` of ``model`` (a *ForCausalLM) by
    :class:`QuantizedLinear`, in place; ``scheme="none"`` changes nothing. ``kernels="dequantize"`` forces the path a
    device without the CPU kernels takes (tests). Returns what was done, also kept as ``model.lazyllm_quantization``
    (:func:`quantization_of`)."""
    if scheme not in ("none", "int8", "int4"):
        raise ValueError(f"scheme must be 'none', 'int8' or 'int4', got {scheme!r}")
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0:
        raise ValueError(f"max_rows must be an int >= 0 (0: every product reads the dense weights), got {max_rows!r}")
    if kernels not in ("auto", "dequantize"):
        raise ValueError(f"kernels must be 'auto' or 'dequantize', got {kernels!r}")
    inner, lm_head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if isinstance(lm_head, QuantizedLinear):
        raise ValueError("this model's weights are already quantized (load it again to change the scheme)")
    if inner is None or not hasattr(inner, "layers") or not isinstance(lm_head, nn.Linear):
        raise ValueError(f"{type(model).__name__} is not a *ForCausalLM with .model.layers and an nn.Linear lm_head; "
                         "load it with lazy_core.load_model")
    counts = {"int8": 0, "int4": 0, "dense": 0}
    used, quantized, dense = set(), 0, 0
    if scheme != "none":
        cpu_kernels = kernels == "auto" and _cpu_kernels_run(lm_head.weight.device.type, lm_head.weight.dtype)
        targets = [(inner.layers, name, m) for name, m in inner.layers.named_modules() if isinstance(m, nn.Linear)]
        for parent, name, linear in [*targets, (model, "lm_head", lm_head)]:
            chosen = _layer_scheme(linear, scheme, cpu_kernels, int4_max_error)
            if chosen is None:
                counts["dense"] += 1
                continue
            replacement = QuantizedLinear(linear, *chosen, max_rows)
            holder_name, _, attr = name.rpartition(".")
            setattr(parent.get_submodule(holder_name) if holder_name else parent, attr, replacement)
            counts[chosen[0]] += 1
            used.add(chosen[1])
            quantized += sum(b.numel() * b.element_size() for b in (replacement.qweight, replacement.scale))
            dense += linear.weight.numel() * linear.weight.element_size()
    summary = QuantSummary(scheme, counts["int8"], counts["int4"], counts["dense"], tuple(sorted(used)), max_rows,
                           quantized, dense)
    model.lazyllm_quantization = summary
    return summary


def quantization_of(model: nn.Module) -> QuantSummary | None:
    """What :func:`quantize_weights` did to ``model``, or None when it was never called on it."""
    return getattr(model, "lazyllm_quantization", None)
