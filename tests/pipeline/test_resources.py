"""pipeline.resources: the worker count (one per GPU, else every CPU, within the nodes' memory) and the estimate of
the model's weights it uses."""

from __future__ import annotations

import pytest
import torch

from pipeline import PipelineConfig


def test_plan_workers_one_per_gpu_else_every_cpu():
    from pipeline.resources import DEFAULT_THREADS_PER_CPU_WORKER as K
    from pipeline.resources import WorkerPlan, plan_workers

    assert plan_workers("auto", 4.0, [16.0], None, None) == WorkerPlan(4, True, 1)
    assert plan_workers("auto", 4.0, [16.0], 2, None) == WorkerPlan(2, True, 1)
    assert plan_workers("cuda", 0.0, [2.0], 3, None) == WorkerPlan(3, True, 1)  # autoscaling: GPUs come when asked
    # without GPUs the workers together take every CPU: a worker per K CPUs on every node
    assert plan_workers("auto", 0.0, [2.0], None, None) == WorkerPlan(2 // K, False, K)
    assert plan_workers("cpu", 4.0, [2.0], None, None) == WorkerPlan(2 // K, False, K)
    assert plan_workers("auto", 0.0, [64.0, 8.0], None, None) == WorkerPlan(72 // K, False, K)
    assert plan_workers("auto", 0.0, [], None, None) == WorkerPlan(1, False, 1)  # no CPU reported: one worker
    # ... as many as the node's memory holds model copies (half of it, 2 bytes per weight byte), the CPUs split
    gib = float(1 << 30)
    assert plan_workers("auto", 0.0, [64.0], None, None, [256 * gib], 14 * gib) == WorkerPlan(4, False, 16)
    assert plan_workers("auto", 0.0, [64.0], None, None, [256 * gib], 0.27 * gib) == WorkerPlan(64 // K, False, K)
    assert plan_workers("auto", 0.0, [8.0], None, None, [16 * gib], 14 * gib) == WorkerPlan(1, False, 8)  # at least 1
    # a node without CPUs (a head node started with --num-cpus 0) is skipped with its memory
    assert plan_workers("auto", 0.0, [0.0, 64.0], None, None, [1e15, 256 * gib], 14 * gib) == WorkerPlan(4, False, 16)
    # explicit settings win: threads alone fill the nodes, workers alone split the CPUs, both are taken as given
    assert plan_workers("auto", 0.0, [8.0, 8.0], None, 2) == WorkerPlan(8, False, 2)
    assert plan_workers("auto", 0.0, [8.0], 2, None) == WorkerPlan(2, False, 4)
    assert plan_workers("auto", 0.0, [4.0, 4.0], 1, None) == WorkerPlan(1, False, 4)  # one worker lives on one node
    assert plan_workers("auto", 0.0, [2.0], 3, 1) == WorkerPlan(3, False, 1)


def test_model_weight_bytes_from_the_config(tiny_model_dir):
    """The memory rule's estimate of the weights, from the config alone, against the model's real parameters."""
    from transformers import AutoModelForCausalLM

    from lazy_core import load_model
    from lazy_core.quantize import QuantizedLinear
    from pipeline.resources import model_weight_bytes

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    for dtype, size in (("float32", 4), ("bfloat16", 2)):
        cfg = PipelineConfig(input="i", output="o", model=str(tiny_model_dir), dtype=dtype, quantize="none")
        assert model_weight_bytes(cfg) == pytest.approx(params * size, rel=0.05)  # norms are not counted
    # int8: the quantized weights beside the dense ones (the dense kept for prefill), one byte per weight
    quantized, _ = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu", quantize="int8")
    held = sum(t.numel() * t.element_size() for t in [*quantized.parameters(), *quantized.buffers()]
               if t.dtype != torch.float32)  # the rotary embedding's fp32 buffers are not weights
    assert any(isinstance(m, QuantizedLinear) for m in quantized.modules())
    for quantize in ("int8", "auto"):  # auto: counted as quantized (an upper bound where it resolves to none)
        cfg = PipelineConfig(input="i", output="o", model=str(tiny_model_dir), dtype="bfloat16", quantize=quantize)
        assert model_weight_bytes(cfg) == pytest.approx(held, rel=0.05)
