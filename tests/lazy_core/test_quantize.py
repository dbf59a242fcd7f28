"""lazy_core.quantize: int8 / int4 weight-only layers, which products read them, which layers take which scheme, and
the engine's invariants on a quantized model (fp32 activations: exact; bf16: the tolerance stated where used)."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, make_tiny_model
from helpers import PROMPTS, encode
from torch import nn
from torch.nn import functional as F

from lazy_core import LazyConfig, LazyLLM, load_model
from lazy_core import quantize as Q
from lazy_core.quantize import QuantizedLinear, quantization_of, quantize_weights

LAZY = dict(prune_layers=[1], keep_ratios=[0.5], min_keep_tokens=4, keep_tail=2)


def _on_4bit_grid(weight: torch.Tensor) -> torch.Tensor:
    """A weight of ``weight``'s shape and scale as a 4-bit GGUF holds it: per group of 32 inputs, (q - 8) * s with q in
    0..15 (both ends used) and s a power of two, so that it is exact in bf16 as in fp32."""
    torch.manual_seed(weight.numel())
    out_f, in_f = weight.shape
    q = torch.randint(0, 16, (out_f, in_f // 32, 32))
    q[..., 0], q[..., 1] = 0, 15
    step = 2.0 ** torch.round(torch.log2(weight.detach().float().abs().mean() / 4))
    return ((q - 8).float() * step).reshape(out_f, in_f).to(weight.dtype)


def _snap_to_4bit(model: nn.Module) -> nn.Module:
    """The decoder layers' weights of ``model`` on a 4-bit grid (a stand-in for a model shipped as a 4-bit GGUF)."""
    with torch.no_grad():
        for module in model.model.layers.modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(_on_4bit_grid(module.weight))
    return model


# ---- the weights -----------------------------------------------------------------------------------------------------


def test_int8_weight_is_per_channel_symmetric_and_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(48, 64) * torch.linspace(0.01, 2.0, 48)[:, None]  # rows of very different ranges
    w[5] = 0.0  # an all-zero row gets a finite scale and zeros
    q, scale = Q.int8_weight(w, torch.float32)
    assert q.dtype == torch.int8 and scale.shape == (48,) and int(q.abs().max()) == 127 and bool((q[5] == 0).all())
    back = q.float() * scale[:, None]
    assert bool(((back - w).abs() <= scale[:, None] / 2 + 1e-7).all())
    assert Q.relative_error(w, back) < 0.01


def test_int4_weight_holds_a_4bit_grid_exactly_and_random_weights_roughly():
    torch.manual_seed(0)
    w = torch.randn(32, 96)
    q, sz = Q.int4_weight(w, torch.float32)
    assert q.shape == (32, 96) and int(q.min()) >= 0 and int(q.max()) <= 15 and sz.shape == (3, 32, 2)
    assert 0.04 < Q.relative_error(w, Q.int4_dequantized(q, sz)) < 0.12  # random weights lose ~8 % in 4 bits
    for dtype in (torch.float32, torch.bfloat16):  # a 4-bit model's weights: held as they are
        grid = _on_4bit_grid(w.to(dtype))
        q, sz = Q.int4_weight(grid, dtype)
        assert Q.relative_error(grid, Q.int4_dequantized(q, sz)) == 0.0


# ---- the layer -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_products_read_the_quantized_weights_and_large_ones_the_dense(scheme, dtype):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True).to(dtype)
    kernel = "int8pack" if scheme == "int8" else "int4pack"
    layer = QuantizedLinear(linear, scheme, kernel, max_rows=4)
    reference = QuantizedLinear(linear, scheme, "dequantize", max_rows=4).dequantized().float()
    assert layer.weight is linear.weight and layer.bias is linear.bias  # the dense weight is kept, not copied
    for rows in (1, 3, 4):
        x = torch.randn(2 if rows == 4 else 1, rows if rows != 4 else 2, 64, dtype=dtype)
        out = layer(x)
        expected = F.linear(x.float(), reference, linear.bias.float())
        assert out.shape == (*x.shape[:-1], 48) and out.dtype == dtype
        # fp32: the kernel sums in another order than the reference product; bf16: it rounds its output to bf16
        tolerance = 1e-4 if dtype == torch.float32 else 2e-2
        assert torch.allclose(out.float(), expected, atol=tolerance, rtol=tolerance)
    for x in (torch.randn(5, 64, dtype=dtype), torch.randn(2, 0, 64, dtype=dtype)):  # over max_rows, or no row:
        assert torch.equal(layer(x), F.linear(x, linear.weight, linear.bias))   # the dense product, bit for bit


def test_dequantize_kernel_equals_the_cpu_kernels_in_fp32():
    """The path a device without the CPU kernels takes (a GPU here) computes the same products."""
    torch.manual_seed(1)
    linear = nn.Linear(64, 32, bias=False)
    x = torch.randn(3, 64)
    for scheme, kernel in (("int8", "int8pack"), ("int4", "int4pack")):
        fast = QuantizedLinear(linear, scheme, kernel, max_rows=4)(x)
        slow = QuantizedLinear(linear, scheme, "dequantize", max_rows=4)(x)
        assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)


# ---- which layers take which scheme ----------------------------------------------------------------------------------


def test_int8_quantizes_every_projection_and_the_lm_head():
    model = make_tiny_model("llama").to(torch.bfloat16)
    summary = quantize_weights(model, "int8")
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 4 * 7 + 1 and summary.int8_layers == 29 and summary.int4_layers == summary.dense_layers == 0
    assert isinstance(model.lm_head, QuantizedLinear) and not isinstance(model.model.embed_tokens, QuantizedLinear)
    assert summary.kernels == ("int8pack",) and quantization_of(model) is summary
    assert summary.describe().startswith("int8 (int8pack: 29 int8 layers; products of <= 4 rows;")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_weights(model, "int8")


def test_int4_takes_only_the_layers_it_holds_and_int8_the_rest():
    """Random weights would lose ~8 % in 4 bits: they take int8. Weights on a 4-bit grid take int4, except the
    lm_head (259 outputs: the int4 packing wants multiples of 16)."""
    random = make_tiny_model("llama").to(torch.bfloat16)
    summary = quantize_weights(random, "int4")
    assert (summary.int4_layers, summary.int8_layers) == (0, 29)
    snapped = _snap_to_4bit(make_tiny_model("llama").to(torch.bfloat16))
    summary = quantize_weights(snapped, "int4")
    assert (summary.int4_layers, summary.int8_layers, summary.dense_layers) == (28, 1, 0)
    assert summary.kernels == ("int4pack", "int8pack") and snapped.lm_head.scheme == "int8"
    assert "28 int4, 1 int8 layers" in summary.describe()


def test_a_shape_the_int8_kernel_cannot_take_stays_dense():
    """The int8 CPU kernel crashes on inputs that are not a multiple of 16: such a layer is never handed to it."""
    model = make_tiny_model("llama").to(torch.bfloat16)
    model.model.layers[0].mlp.down_proj = nn.Linear(120, 64, bias=False).to(torch.bfloat16)  # in_features 120
    summary = quantize_weights(model, "int8")
    assert summary.dense_layers == 1 and isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)
    assert not isinstance(model.model.layers[0].mlp.down_proj, QuantizedLinear)


def test_bad_arguments_are_refused():
    model = make_tiny_model("llama")
    for kwargs, message in ((dict(scheme="int2"), "scheme must be"), (dict(max_rows=-1), "max_rows must be"),
                            (dict(kernels="cuda"), "kernels must be")):
        with pytest.raises(ValueError, match=message):
            quantize_weights(model, **{"scheme": "int8", **kwargs})
    with pytest.raises(ValueError, match="quantize must be one of"):
        Q.resolve_quantize("fp8", "cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="not a \\*ForCausalLM"):
        quantize_weights(nn.Linear(4, 4), "int8")


def test_auto_quantizes_bf16_on_a_cpu_with_bf16_units_only(monkeypatch):
    monkeypatch.setattr(Q, "cpu_has_native_bf16", lambda: True)
    assert Q.resolve_quantize("auto", "cpu", torch.bfloat16) == "int4"
    assert Q.resolve_quantize("auto", "cpu", torch.float32) == "none"  # fp32 activations: the kernels are slower
    assert Q.resolve_quantize("auto", "cuda", torch.bfloat16) == "none"  # not measured on a GPU
    assert Q.resolve_quantize("int8", "cuda", torch.float32) == "int8"  # asked for: done
    monkeypatch.setattr(Q, "cpu_has_native_bf16", lambda: False)
    assert Q.resolve_quantize("auto", "cpu", torch.bfloat16) == "none"


def test_load_model_quantizes_a_local_model(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu", quantize="int8")
    assert quantization_of(model).int8_layers == 29 and isinstance(model.lm_head, QuantizedLinear)
    plain, _ = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert quantization_of(plain).describe() == "none" and isinstance(plain.lm_head, nn.Linear)
    with pytest.raises(ValueError, match="quantize must be one of"):
        load_model(str(tiny_model_dir), quantize="int3")


# ---- the engine on a quantized model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [*ARCHS, "gemma3"])
def test_off_equals_model_generate_on_the_quantized_model(arch, tiny_tokenizer):
    """fp32 activations: the engine drives the quantized layers exactly as the model's own generate does (prefill
    through the dense weights, each decoding step's one row through the int8 kernel)."""
    model = make_tiny_model(arch)
    quantize_weights(model, "int8")
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    ours = LazyLLM(model, LazyConfig.off()).generate(enc.input_ids, attention_mask=enc.attention_mask,
                                                     max_new_tokens=8, eos_token_id=[])
    theirs = model.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=8, do_sample=False,
                            eos_token_id=None, pad_token_id=0)
    assert ours.sequences.tolist() == theirs.tolist()


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_batch_equals_its_items_alone_on_the_quantized_model(scheme, tiny_tokenizer):
    """fp32 activations: the quantized kernels compute each row alone, so a batch of 3 (3 rows a step) decodes each
    item as its run alone does (1 row a step), pruned and reviving."""
    model = _snap_to_4bit(make_tiny_model("llama"))
    assert quantize_weights(model, scheme).int8_layers + quantization_of(model).int4_layers == 29
    lazy = LazyLLM(model, LazyConfig(**LAZY))
    enc = encode(tiny_tokenizer)
    batch = lazy.generate(enc.input_ids, attention_mask=enc.attention_mask, max_new_tokens=10, eos_token_id=[])
    width = enc.input_ids.shape[1]
    for b, prompt in enumerate(PROMPTS):
        alone_enc = encode(tiny_tokenizer, [prompt])
        alone = lazy.generate(alone_enc.input_ids, max_new_tokens=10, eos_token_id=[])
        assert batch.sequences[b, width:].tolist() == alone.sequences[0, alone_enc.input_ids.shape[1]:].tolist()
        assert batch.stats[b].revived_tokens == alone.stats[0].revived_tokens


def test_bf16_quantized_generation_stays_close_to_bf16(tiny_tokenizer):
    """bf16: int4 on 4-bit weights holds them exactly, so the greedy tokens match the unquantized bf16 model's on
    these prompts (4-bit grid weights, int8 lm_head: the first token's logits within 0.05)."""
    base = _snap_to_4bit(make_tiny_model("llama")).to(torch.bfloat16)
    quantized = _snap_to_4bit(make_tiny_model("llama")).to(torch.bfloat16)
    quantize_weights(quantized, "int4")
    enc = encode(tiny_tokenizer, PROMPTS[:1])
    ref = LazyLLM(base, LazyConfig.off()).generate(enc.input_ids, max_new_tokens=1, eos_token_id=[])
    out = LazyLLM(quantized, LazyConfig.off()).generate(enc.input_ids, max_new_tokens=1, eos_token_id=[])
    assert out.sequences.tolist() == ref.sequences.tolist()
    logits_ref = LazyLLM(base, LazyConfig.off()).prefill_logits(enc.input_ids)
    logits = LazyLLM(quantized, LazyConfig.off()).prefill_logits(enc.input_ids)
    assert torch.allclose(logits, logits_ref, atol=0.05, rtol=0)  # prefill's lm_head row: int8 (1 row), 1 % error
