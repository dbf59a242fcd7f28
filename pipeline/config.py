"""PipelineConfig: everything a pipeline run needs, validated once at the boundary (dict, YAML path or object)."""

from __future__ import annotations

import hashlib
import json
import os
import string
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from lazy_core import DecodingOptions, LazyConfig
from lazy_core.plain_step import COMPILE_MODES
from workers.schema import OUTPUT_COLUMNS

DEFAULT_MODEL = "smollm2-135m-instruct"
BUILTIN_TASKS = ("summarize", "qa")


class GenerationSettings(DecodingOptions):
    """What a row's generation depends on and how workers run it: the model, the prompt, the pruning schedule,
    decoding (the fields of :class:`lazy_core.DecodingOptions`, inherited), batching inside a worker and the workers'
    resources. Shared by :class:`PipelineConfig` (our driver) and :class:`pipeline.ray_data.RayDataConfig` (a Ray
    Data stage).

    Every field changes what an output row contains, and so the config hash, unless the class lists it in
    ``RUN_ONLY``: a new field is hashed unless it is declared run-only."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # fields that change how a run goes, not what it writes: left out of the config hash
    RUN_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"max_batch_tokens", "max_batch_size", "batching", "stream_batches", "num_workers", "cpus_per_worker",
         "device", "gpu_memory_share"}
    )

    model: str = Field(DEFAULT_MODEL, description="Model name for lazy_core.load_model: the embedded default, a local "
                       "HF directory or an HF hub id available offline.")
    task: str = Field(
        "summarize",
        description="'summarize', 'qa' (needs question_column) or a template string containing {text} "
        "(and optionally {question}); the prompt goes through the tokenizer's chat template.",
    )
    id_column: str = Field(
        "id", description="Column holding a unique id per row; the baseline sample is chosen by a hash of it."
    )
    text_column: str = Field("text", description="Column holding the document text.")
    question_column: str = Field("question", description="Column holding the question (task 'qa' or {question}).")
    lazy: LazyConfig | Literal["default", "off"] = Field(
        "default",
        description="Pruning schedule: a LazyConfig (or its dict), 'default' (LazyConfig.default_for(model)) or 'off'.",
    )
    fallback_on_empty: bool = Field(
        True,
        description="Rerun an item whose pruned output came back empty (or whitespace only) with pruning off, in the "
        "same worker, and write the full model's output instead (column fallback=true; counted in the run report).",
    )
    chat_template: bool = Field(True, description="Wrap the prompt in the tokenizer's chat template.")
    system_prompt: str | None = Field(None, description="Optional system message placed before the user prompt.")
    baseline_sample_rate: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Fraction of items (chosen by a hash of the id) that the worker also runs through the full "
        "model, for measured speedup and agreement.",
    )
    max_prompt_tokens: int = Field(
        8192, ge=16, description="Prompts longer than this (in tokens, chat template included) are over-length."
    )
    truncate: Literal["middle", "error"] = Field(
        "middle",
        description="Over-length prompts: 'middle' keeps the first and last halves (as LongBench), 'error' makes "
        "them error rows.",
    )
    max_text_chars: int = Field(
        4_000_000, ge=1, description="Rows whose text is longer than this (in characters) are error rows (huge rows)."
    )
    max_batch_tokens: int = Field(
        32768, ge=1, description="Token budget of a batch: batch size x the tokens the schedule keeps of its longest "
        "prompt (pruned K/V rows averaged over the layers, LazyConfig.held_tokens, plus max_new_tokens) at most."
    )
    max_batch_size: int = Field(
        4, ge=1, description="Items per batch (continuous: slots of a worker) at most. 4 is the measured best of a "
        "single-thread CPU worker (a step per item costs the same at 8, and prefill per item more). On GPU workers, "
        "left unset, the workers plan it (and max_batch_tokens, if unset) from the memory left after the weights "
        "(lazy_core.slots, gpu_memory_share); the run report says what they chose and why.",
    )
    batching: Literal["continuous", "static"] = Field(
        "continuous",
        description="'continuous': a worker decodes max_batch_size items at once and gives a finished item's slot to "
        "the next prompt of its task (lazy_core.continuous); 'static': a batch decodes until its longest item ends. "
        "Greedy outputs are the same either way (each item equals its run alone).",
    )
    stream_batches: int = Field(
        4, ge=1, description="Continuous batching: a worker's task carries up to max_batch_size x stream_batches "
        "prompts of similar length from one shard (and max_batch_tokens x stream_batches held tokens), so its slots "
        "stay full; max_batch_tokens still bounds what its running items hold at once.",
    )
    num_workers: int | None = Field(
        None, ge=1, description="Ray actors, each holding one model. Default: one per GPU in the cluster; without GPUs "
        "as many as fill every node's CPUs with cpus_per_worker each (set it with device='cuda' on an autoscaling "
        "cluster)."
    )
    cpus_per_worker: int | None = Field(
        None, ge=1, description="CPUs per actor when there is no GPU (its torch threads match). Default: 1 (a "
        "single-thread worker per CPU) unless the node's memory holds fewer model copies, or the cluster's CPUs split "
        "among num_workers when that is set (pipeline.resources.plan_workers).",
    )
    device: str = Field(
        "auto",
        description="'auto' (one GPU per worker when the cluster has GPUs at start, else CPUs), 'cuda' (always ask "
        "for one GPU per worker, e.g. on an autoscaling cluster whose GPU nodes start at zero) or 'cpu'.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Model dtype: 'auto' = bfloat16 on a GPU (float16 where it has no bf16) and on a CPU "
        "with native bf16 products (AVX512_BF16 or AMX), else float32 (lazy_core.precision)."
    )
    gpu_memory_share: float = Field(
        0.9, gt=0.0, le=1.0, description="GPU workers with max_batch_size unset: the share of the device's memory "
        "the model, its K/V and Aux Caches and its prefill activations may use (as vLLM's gpu_memory_utilization).",
    )
    compile_step: Literal[COMPILE_MODES] = Field(
        "off", description="Continuous batching: the decoding steps in which no item revives run as one fixed-shape "
        "step (lazy_core.plain_step); 'off' runs it eagerly, the others through torch.compile in that mode "
        "('reduce-overhead' adds CUDA graphs on a GPU). On this project's CPU the compiled step is 0.77x / 0.86x "
        "the eager one at 1 / 4 items (4K), but compiling takes 40-50 s per worker, more than a typical run's plain "
        "steps save: off by default (BENCHMARKS.md, 'A decoding step the compiler takes whole').",
    )
    quantize: Literal["auto", "none", "int8", "int4"] = Field(
        "auto", description="Weight-only quantization of the linear layers for decoding (lazy_core.quantize): 'int8' "
        "(per output channel), 'int4' (groups of 32 where 4 bits hold a layer, as in a 4-bit GGUF; int8 elsewhere), "
        "'none', or 'auto' = int4 on a CPU with native bf16 products running bf16 (measured faster there at the same "
        "quality, BENCHMARKS), none elsewhere. Products of more than 4 rows (prefill) keep the dense weights."
    )

    # fields hashed only when they differ from this value: outputs written before the field existed keep their hash
    HASHED_UNLESS: ClassVar[dict[str, Any]] = {"quantize": "none", "compile_step": "off"}

    @field_validator("task")
    @classmethod
    def _check_task(cls, task: str) -> str:
        if task in BUILTIN_TASKS:
            return task
        if "{text}" not in task:
            raise ValueError(
                f"task must be one of {BUILTIN_TASKS} or a template string containing '{{text}}', got {task!r}"
            )
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(task) if name is not None}
        except ValueError as exc:
            raise ValueError(
                f"task template {task!r} is not a valid format string ({exc}); write literal braces as {{{{ }}}}"
            ) from exc
        unknown = sorted(fields - {"text", "question"})
        if unknown:
            raise ValueError(f"task template uses unknown fields {unknown}; only {{text}} and {{question}} are filled")
        return task

    @field_validator("device")
    @classmethod
    def _check_device(cls, device: str) -> str:
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(
                f"device must be 'auto', 'cpu' or 'cuda' (each worker sees only its own GPU), got {device!r}"
            )
        return device

    @field_validator("lazy", mode="before")
    @classmethod
    def _coerce_lazy(cls, lazy: Any) -> Any:
        if isinstance(lazy, dict):
            return LazyConfig(**lazy)
        return lazy

    @property
    def needs_question(self) -> bool:
        return self.task == "qa" or "{question}" in self.task

    @property
    def decoding(self) -> DecodingOptions:
        """The decoding options of these settings, as the engine takes them."""
        return DecodingOptions(**self.model_dump(include=set(DecodingOptions.model_fields)))

    @classmethod
    def hashed_fields(cls) -> list[str]:
        """The fields that change what an output row contains: every field but the ``RUN_ONLY`` ones."""
        return [name for name in cls.model_fields if name not in cls.RUN_ONLY]

    @property
    def config_hash(self) -> str:
        """sha256 (16 hex) of every setting that changes what an output row contains (:meth:`hashed_fields`). Paths,
        parallelism, batching, retries and timeouts are left out: they change how a run goes, not what it writes."""
        return self.settings_hash()

    def settings_hash(self, **extra: Any) -> str:
        """sha256 (16 hex) of :meth:`hashed_fields` plus ``extra`` (name: value)."""
        affecting = {**self.model_dump(mode="json", include=set(self.hashed_fields())), **extra}
        for name, neutral in self.HASHED_UNLESS.items():
            if affecting.get(name) == neutral:
                del affecting[name]
        blob = json.dumps(affecting, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ---- construction --------------------------------------------------------------------------------------------

    @classmethod
    def from_any(cls, config: Self | dict[str, Any] | str | os.PathLike[str]) -> Self:
        """Accept an instance of this class, a dict of its fields, or the path of a YAML file holding that dict."""
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls(**config)
        if isinstance(config, (str, os.PathLike)):
            return cls.from_yaml(config)
        raise TypeError(f"expected a {cls.__name__}, a dict or a YAML path, got {type(config).__name__}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> Self:
        """Load a YAML mapping of fields; ``overrides`` (e.g. CLI flags) win over the file."""
        import yaml

        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"config file {str(file)!r} not found; pass a YAML file of {cls.__name__} fields")
        data = yaml.safe_load(file.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(file)!r} must hold a YAML mapping of fields, got {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


class PipelineConfig(GenerationSettings):
    """A batch run: Parquet shards in, one output shard per input shard out (see docs/pipeline.md)."""

    RUN_ONLY: ClassVar[frozenset[str]] = GenerationSettings.RUN_ONLY | {
        "input", "output", "max_in_flight", "max_retries", "max_restarts", "batch_timeout_s", "overwrite", "progress",
    }

    input: str = Field(description="Directory or glob of Parquet shards; a local path or any pyarrow filesystem URI.")
    output: str = Field(description="Output directory (local path or pyarrow filesystem URI); created if missing.")
    passthrough_columns: list[str] = Field(
        default_factory=list, description="Input columns copied unchanged into the output rows."
    )
    max_in_flight: int | None = Field(
        None, ge=1, description="Batches submitted and not finished, at most (backpressure). Default 2 per worker."
    )
    max_retries: int = Field(
        2, ge=0, le=20, description="Retries of a batch whose worker died or hung; then it is split, then failed."
    )
    max_restarts: int = Field(3, ge=0, le=100, description="Ray restarts of a dead actor before it is replaced.")
    batch_timeout_s: float = Field(
        900.0, gt=0.0, description="A batch running longer than this is treated as hung: its worker is restarted "
        "(continuous batching: a task carries stream_batches batches' worth of items and gets stream_batches times "
        "as long)."
    )
    overwrite: bool = Field(
        False, description="Allow writing into an output directory finished with a different config hash."
    )
    progress: bool = Field(True, description="Show a progress bar on the driver (stderr).")

    @property
    def task_timeout_s(self) -> float:
        """How long one worker task may run before it counts as hung (batch_timeout_s per batch's worth of items)."""
        return self.batch_timeout_s * (self.stream_batches if self.batching == "continuous" else 1)

    @model_validator(mode="after")
    def _check_columns(self) -> PipelineConfig:
        reserved = set(OUTPUT_COLUMNS) - {"id"}
        clash = sorted(set(self.passthrough_columns) & reserved)
        if clash:
            raise ValueError(f"passthrough_columns {clash} collide with output columns; rename them in the input")
        if self.id_column in self.passthrough_columns:
            raise ValueError(f"id column {self.id_column!r} is always written as 'id'; remove it from passthrough")
        if len(set(self.passthrough_columns)) != len(self.passthrough_columns):
            raise ValueError(f"passthrough_columns has duplicates: {self.passthrough_columns}")
        return self

    # ---- derived -------------------------------------------------------------------------------------------------

    @property
    def required_columns(self) -> list[str]:
        cols = [self.id_column, self.text_column]
        if self.needs_question:
            cols.append(self.question_column)
        return cols + [c for c in self.passthrough_columns if c not in cols]
