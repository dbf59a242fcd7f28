"""RULER's 13 synthetic tasks (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?"), generated here to the task definitions the installed ``nvidia-long-context-eval==26.3`` publishes.

Read from that package at run time, never copied into this repository: the task list and each task's parameters
(``long_context_eval/synthetic.yaml``), the prompt templates, answer prefixes and generation budgets
(``long_context_eval/data/synthetic/constants.py``) and the haystack data (Paul Graham essays, SQuAD and HotpotQA JSON).
Word lists are ``wonderwords``' noun, adjective and verb lists, as RULER's generators use them. The generation code is
this file's own, and differs from RULER's scripts in three ways:

- sentences are split by a regular expression, not NLTK's punkt (whose data would be downloaded at run time);
- a haystack's size (essay words, noise lines, words, documents) is found by bisection, so every item of a length is
  as long as its budget allows (prompt + the task's generation budget <= the length), not the first size of a grid;
- each item is seeded by (seed, task, length, index), so items are the same whatever else a run asks for.

The metric is RULER's: ``all`` (niah, vt, cwe, fwe) = the fraction of the answers found in the output (case-insensitive
substring), ``part`` (qa) = 1 when any answer is found.
"""

from __future__ import annotations

import importlib
import json
import random
import re
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from benchmarks.data import _package_dir

# A generator: (seeded rng, haystack size) -> (context text, the template's query fields, the answers)
Maker = Callable[[random.Random, int], tuple[str, dict[str, Any], list[str]]]

TASK_NAMES = (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2",
)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's 40 insertion depths, 0..100 %
# Our own task beside RULER's: facts as documents hold them. Each name's code is written once, in a plain sentence at a
# seeded depth of real essays; the question asks for one name's code, by name (ENTITY_TASK: ``entity_<names>``).
ENTITY_NAMES = ("Maria Okafor", "Desmond Hale", "Aiko Tanaka", "Tomas Varga", "Priya Raman", "Olu Adeyemi",
                "Ingrid Berg", "Rafael Soto", "Mei Lin", "Karim Haddad", "Sofia Conti", "Lars Eriksen")
ENTITY_FACT = "The access code that {name} chose for the archive is {code}."
ENTITY_QUESTION = "What access code did {name} choose for the archive?"
ENTITY_PREFIX = "The access code that {name} chose for the archive is"
METRIC = {"entity": "all", "niah": "all", "variable_tracking": "all", "common_words_extraction": "all",
          "freq_words_extraction": "all", "qa": "part"}


@dataclass(frozen=True)
class RulerItem:
    """One prompt: ``prompt_ids`` (tokens, with the chat template or BOS) and the strings its answer is scored on."""

    task: str
    length: int
    index: int
    seed: int
    prompt_ids: list[int]
    answers: list[str]
    metric: str  # "all" | "part"
    max_new_tokens: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.task}-{self.length}-{self.index}-s{self.seed}"


def score(metric: str, prediction: str, answers: list[str]) -> float:
    """RULER's string match: ``all`` = share of answers contained in the prediction, ``part`` = any (0..1)."""
    found = [a.lower() in prediction.lower() for a in answers]
    if metric == "all":
        return sum(found) / len(found)
    if metric == "part":
        return float(any(found))
    raise ValueError(f"metric must be 'all' or 'part', got {metric!r}")


# ---- what the package publishes ------------------------------------------------------------------------------------

def _ruler_dir() -> Path:
    return _package_dir("long_context_eval", "nvidia-long-context-eval==26.3")


@lru_cache(maxsize=1)
def task_configs() -> dict[str, dict[str, Any]]:
    """RULER's 13 task configs: name -> {"task": generator, "args": parameters} (synthetic.yaml)."""
    import yaml

    configs = yaml.safe_load((_ruler_dir() / "synthetic.yaml").read_text(encoding="utf-8"))
    missing = [name for name in TASK_NAMES if name not in configs]
    if missing:
        raise ValueError(f"synthetic.yaml lacks tasks {missing}; install nvidia-long-context-eval==26.3")
    return configs


@lru_cache(maxsize=1)
def templates() -> dict[str, dict[str, Any]]:
    """Generator name -> {"template", "answer_prefix", "tokens_to_generate"} (data/synthetic/constants.py)."""
    return importlib.import_module("long_context_eval.data.synthetic.constants").TASKS


@lru_cache(maxsize=1)
def _essay_words() -> tuple[str, ...]:
    text = json.loads((_ruler_dir() / "data/synthetic/json/PaulGrahamEssays.json").read_text(encoding="utf-8"))["text"]
    return tuple(re.sub(r"\s+", " ", text).split(" "))


@cache
def _wordlist(name: str) -> tuple[str, ...]:
    folder = _package_dir("wonderwords", "wonderwords==3.0.1") / "assets"
    return tuple(w.strip() for w in (folder / name).read_text(encoding="utf-8").splitlines() if w.strip())


@lru_cache(maxsize=1)
def _key_words() -> tuple[str, ...]:
    """adjective-noun pairs: RULER's word keys and values."""
    return tuple(sorted({f"{a}-{n}" for a in _wordlist("adjectivelist.txt") for n in _wordlist("nounlist.txt")}))


@lru_cache(maxsize=1)
def _common_words() -> tuple[str, ...]:
    return tuple(sorted(set(_wordlist("nounlist.txt") + _wordlist("adjectivelist.txt") + _wordlist("verblist.txt"))))


def _sentences(text: str) -> list[str]:
    """Split after . ! ? followed by white space (punkt's common case)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


# ---- the generators: (rng, size) -> (context text, query fields, answers) -------------------------------------------

def _random_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return rng.choice(_key_words())
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    raise ValueError(f"unknown needle type {kind!r}")


def _niah(args: dict[str, Any]) -> Maker:
    num_k = max(args["num_needle_k"], args["num_needle_q"])
    kind_k, kind_v, haystack = args["type_needle_k"], args["type_needle_v"], args["type_haystack"]

    def make(rng: random.Random, size: int) -> tuple[str, dict[str, Any], list[str]]:
        keys, values, needles = [], [], []
        for _ in range(num_k):
            keys.append(_random_value(rng, kind_k))
            values.append([_random_value(rng, kind_v) for _ in range(args["num_needle_v"])])
            needles += [NEEDLE.format(type_needle_v=kind_v, key=keys[-1], value=v) for v in values[-1]]
        rng.shuffle(needles)
        if haystack == "essay":
            sents = _sentences(" ".join(_essay_words()[:size]))
            cuts = sorted(int(len(sents) * d / 100) for d in rng.sample(DEPTHS, len(needles)))
            parts, last = [], 0
            for cut, needle in zip(cuts, needles, strict=True):
                parts += [" ".join(sents[last:cut]), needle]
                last = cut
            context = " ".join(p for p in parts + [" ".join(sents[last:])] if p)
        else:
            if haystack == "repeat":
                lines = [NOISE] * size
            else:  # "needle": distractor needles with their own random keys and values
                lines = [NEEDLE.format(type_needle_v=kind_v, key=_random_value(rng, kind_k),
                                       value=_random_value(rng, kind_v)) for _ in range(size)]
            for index, needle in zip(sorted(rng.sample(range(size), len(needles)), reverse=True), needles,
                                     strict=True):
                lines.insert(index, needle)
            context = "\n".join(lines)
        asked = rng.sample(range(num_k), args["num_needle_q"])
        queries = [keys[i] for i in asked]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        return context, {"query": query, "type_needle_v": kind_v}, [v for i in asked for v in values[i]]

    return make


def _singular(text: str) -> str:
    """RULER's rewording of the niah template when one value is asked for."""
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        text = text.replace(old, new)
    return text


def _vt_chain(rng: random.Random, hops: int, letters: int) -> tuple[list[str], list[str]]:
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    chain = [f"VAR {names[0]} = {rng.randint(10000, 99999)}"]
    chain += [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]
    return names, chain


def _vt(args: dict[str, Any], letters: int = 5) -> Maker:
    hops = args["num_hops"]

    def make(rng: random.Random, size: int) -> tuple[str, dict[str, Any], list[str]]:
        names, chain = _vt_chain(rng, hops, letters)
        lines = [NOISE + "\n"] * size
        for shift, pos in enumerate(sorted(rng.sample(range(len(lines)), len(chain)))):
            lines.insert(pos + shift, chain[shift])
        context = " ".join(lines).replace(". \n", ".\n")
        value = chain[0].split("=")[-1].strip()
        return context, {"query": value, "num_v": hops + 1}, names

    return make


def _cwe_list(rng: random.Random, words: int, common: int, repeat_common: int,
              repeat_rare: int) -> tuple[str, list[str]]:
    picked = rng.sample(_common_words(), words)
    frequent, rare = picked[:common], picked[common:]
    listed = frequent * repeat_common + rare * repeat_rare
    rng.shuffle(listed)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), frequent


def _cwe_repeats(args: dict[str, Any], length: int) -> tuple[int, int]:
    """(frequent, rare) repeats: the task's below 4K tokens are RULER's short-context ones, 6 and 1."""
    return (args["freq_cw"], args["freq_ucw"]) if length >= 4096 else (6, 1)


def _cwe(args: dict[str, Any], length: int) -> Maker:
    frequent, rare = _cwe_repeats(args, length)

    def make(rng: random.Random, size: int) -> tuple[str, dict[str, Any], list[str]]:
        context, answers = _cwe_list(rng, max(size, args["num_cw"] + 1), args["num_cw"], frequent, rare)
        return context, {"query": ""}, answers

    return make


def _fwe(args: dict[str, Any], length: int) -> Maker:
    alpha, vocab_size, word_len = args["alpha"], max(4, length // 50), 6
    zeta = sum(k ** -alpha for k in range(1, 100_000)) + 100_000 ** (1 - alpha) / (alpha - 1)

    def make(rng: random.Random, size: int) -> tuple[str, dict[str, Any], list[str]]:
        vocab: set[str] = set()
        while len(vocab) < vocab_size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=word_len)))
        ranked = sorted(vocab)
        rng.shuffle(ranked)
        ranked[0] = "..."  # the most frequent is noise
        words = [w for k, w in enumerate(ranked, 1) for _ in range(int(size * k ** -alpha / zeta))]
        rng.shuffle(words)
        return " ".join(words), {"query": ""}, ranked[1:4]

    return make


@lru_cache(maxsize=2)
def _qa_pool(dataset: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(questions with their gold document indices, all documents), as RULER's qa generator reads them."""
    data = json.loads((_ruler_dir() / f"data/synthetic/json/{dataset}.json").read_text(encoding="utf-8"))
    questions: list[dict[str, Any]] = []
    if dataset == "squad":
        docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
        where = {c: i for i, c in enumerate(docs)}
        for article in data["data"]:
            for p in article["paragraphs"]:
                for qa in p["qas"]:
                    if not qa["is_impossible"]:
                        questions.append({"query": qa["question"], "answers": [a["text"] for a in qa["answers"]],
                                          "gold": [where[p["context"]]],
                                          "more": [where[o["context"]] for o in article["paragraphs"]
                                                   if o["context"] != p["context"]]})
    else:
        docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
        where = {c: i for i, c in enumerate(docs)}
        questions = [{"query": d["question"], "answers": [d["answer"]],
                      "gold": [where[f"{t}\n{''.join(p)}"] for t, p in d["context"]]} for d in data]
    return questions, docs


def _qa(args: dict[str, Any]) -> Maker:
    questions, docs = _qa_pool(args["dataset"])

    def make(rng: random.Random, size: int) -> tuple[str, dict[str, Any], list[str]]:
        q = questions[rng.randrange(len(questions))]
        gold, more = q["gold"], q.get("more", [])
        # distractors: the same article's other paragraphs first (SQuAD), then random documents, as RULER draws them
        others = more + [i for i in rng.sample(range(len(docs)), min(len(docs), size + len(gold) + len(more)))
                         if i not in gold and i not in more]
        chosen = [docs[i] for i in gold + others[: max(0, size - len(gold))]]
        rng.shuffle(chosen)
        context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(chosen))
        return context, {"query": q["query"]}, q["answers"]

    return make


# ---- prompts ------------------------------------------------------------------------------------------------------

def _render(tok: Any, text: str, prefix: str, chat: bool) -> list[int]:
    """Token ids of the task text and its answer prefix: a chat turn (the model's template) or completion-style."""
    if chat:
        head = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        return tok(head + prefix.lstrip(), add_special_tokens=False).input_ids
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return bos + tok(text + prefix, add_special_tokens=False).input_ids


def _bisect(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The largest size in [low, high] for which ``fits`` holds (``fits`` is monotone); ``low`` must fit."""
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _entity(names: int, index: int) -> Maker:
    def make(rng: random.Random, size: int) -> tuple[str, dict[str, Any], list[str]]:
        people = rng.sample(ENTITY_NAMES, names)
        codes = [str(rng.randint(10**5, 10**6 - 1)) for _ in people]
        words = _essay_words()
        start = rng.randrange(len(words) - size) if len(words) > size else 0
        sents = _sentences(" ".join(words[start:start + size]))
        facts = [ENTITY_FACT.format(name=n, code=c) for n, c in zip(people, codes, strict=True)]
        cuts = sorted(int(len(sents) * d / 100) for d in rng.sample(DEPTHS[1:-1], names))
        parts, last = [], 0
        for cut, fact in zip(cuts, facts, strict=True):
            parts += [" ".join(sents[last:cut]), fact]
            last = cut
        context = " ".join(p for p in parts + [" ".join(sents[last:])] if p)
        asked = index % names  # consecutive items of one haystack ask each name in turn
        return context, {"query": people[asked]}, [codes[asked]]

    return make


def _entity_item(tok: Any, task: str, length: int, index: int, seed: int, chat: bool) -> RulerItem:
    """``entity_<k>``: k names per haystack; items 0..k-1 share one haystack and ask each name."""
    names = int(task.split("_", 1)[1])
    make = _entity(names, index)
    haystack = index // names
    budget = 16

    def attempt(size: int) -> tuple[list[int], list[str], dict[str, Any]]:
        context, fields, answers = make(random.Random(f"{seed}-{task}-{length}-{haystack}"), size)
        name = fields["query"]
        text = f"{context}\n\nQuestion: {ENTITY_QUESTION.format(name=name)}"
        return _render(tok, text, "\nAnswer: " + ENTITY_PREFIX.format(name=name), chat), answers, fields

    size = _bisect(lambda n: len(attempt(n)[0]) <= length - budget, 50, length - budget)
    ids, answers, fields = attempt(size)
    return RulerItem(task=task, length=length, index=index, seed=seed, prompt_ids=ids, answers=answers,
                     metric="all", max_new_tokens=budget, meta={"size": size, "query": fields["query"]})


def build_item(tok: Any, task: str, length: int, index: int, seed: int = 0, chat: bool = False) -> RulerItem:
    """One RULER item of ``task`` whose prompt plus the task's generation budget fits in ``length`` tokens
    (``entity_<k>``: our entity-bound needles, k names per haystack)."""
    if re.fullmatch(r"entity_[1-9]", task):
        return _entity_item(tok, task, length, index, seed, chat)
    if task not in TASK_NAMES:
        raise ValueError(f"unknown RULER task {task!r}; choose from {', '.join(TASK_NAMES)} or entity_<k>")
    config = task_configs()[task]
    kind, args = config["task"], config["args"]
    spec = templates()[kind]
    template, prefix, budget = spec["template"], spec["answer_prefix"], int(spec["tokens_to_generate"])
    makers = {"niah": lambda: _niah(args), "variable_tracking": lambda: _vt(args),
              "common_words_extraction": lambda: _cwe(args, length),
              "freq_words_extraction": lambda: _fwe(args, length), "qa": lambda: _qa(args)}
    make = makers[kind]()
    if kind == "niah" and args["num_needle_q"] * args["num_needle_v"] == 1:
        template, prefix = _singular(template), _singular(prefix)
    lead = ""
    if kind == "variable_tracking":  # RULER's one worked example, with 3-letter names, before the task
        rng = random.Random(f"{seed}-{task}-{length}-{index}-example")
        names, chain = _vt_chain(rng, args["num_hops"], 3)
        lines = [NOISE + "\n"] * 6
        for shift, pos in enumerate(sorted(rng.sample(range(len(lines)), len(chain)))):
            lines.insert(pos + shift, chain[shift])
        example = template.format(context=" ".join(lines).replace(". \n", ".\n"), query=chain[0].split("=")[-1].strip(),
                                  num_v=len(names)) + prefix.format(query=chain[0].split("=")[-1].strip(),
                                                                    num_v=len(names))
        lead = example + " " + " ".join(names) + "\n\n"
    if kind == "common_words_extraction":  # RULER's worked example: 40 words, 10 frequent (x10), the rest x3
        rng = random.Random(f"{seed}-{task}-{length}-{index}-example")  # (below 4K: 20 words, x3 and x1)
        context, frequent = (_cwe_list(rng, 40, args["num_cw"], 10, 3) if length >= 4096
                             else _cwe_list(rng, 20, args["num_cw"], 3, 1))
        lead = template.format(context=context, query="") + prefix + " " + " ".join(
            f"{i + 1}. {w}" for i, w in enumerate(frequent)) + "\n"

    def attempt(size: int) -> tuple[list[int], list[str], dict[str, Any]]:
        context, fields, answers = make(random.Random(f"{seed}-{task}-{length}-{index}"), size)
        values = {k: v for k, v in fields.items() if k != "type_needle_v"}
        kind_v = fields.get("type_needle_v", "")
        if kind == "niah" and args["num_needle_q"] * args["num_needle_v"] == 1:
            kind_v = kind_v[:-1]
        text = lead + template.format(context=context, type_needle_v=kind_v, **values)
        answer_prefix = prefix.format(type_needle_v=kind_v, **values)
        return _render(tok, text, answer_prefix, chat), answers, fields

    room = length - budget
    # upper bounds on the size: every unit (word, line, document) costs at least one token, a document ten
    high = {"niah": min(room, len(_essay_words())) if args.get("type_haystack") == "essay" else room,
            "variable_tracking": room, "common_words_extraction": min(room, len(_common_words())),
            "freq_words_extraction": room, "qa": min(room // 10, len(_qa_pool(args.get("dataset", "squad"))[1]))}[kind]
    low = {"niah": 8, "variable_tracking": 6, "common_words_extraction": args.get("num_cw", 10) + 1,
           "freq_words_extraction": 100, "qa": 1}[kind]
    if len(attempt(low)[0]) > room:
        raise ValueError(f"{task} cannot fit {length} tokens with {budget} to generate; ask for a longer length")
    size = _bisect(lambda n: len(attempt(n)[0]) <= room, low, high)
    ids, answers, fields = attempt(size)
    return RulerItem(task=task, length=length, index=index, seed=seed, prompt_ids=ids, answers=answers,
                     metric=METRIC[kind], max_new_tokens=budget, meta={"size": size, "query": fields.get("query")})


def build_items(tok: Any, tasks: list[str], lengths: list[int], count: int, seed: int = 0,
                chat: bool = False) -> list[RulerItem]:
    """``count`` items per (task, length), tasks interleaved so a stopped run has covered every task evenly."""
    return [build_item(tok, task, length, index, seed, chat)
            for length in lengths for index in range(count) for task in tasks]
