"""RULER-style long-context tasks, generated offline and deterministically from a seed, and their scoring.

Tasks (after Hsieh et al., "RULER: What's the real context size of your long-context language models?",
2024; same templates, answer prefixes and metrics, real texts as haystacks):

* ``niah_single``     — one needle "One of the special magic numbers for KEY is: VALUE." in the haystack;
* ``niah_multikey``   — four needles with different keys, one asked (three distractors);
* ``niah_multivalue`` — four needles with the same key and different values, all asked;
* ``niah_multiquery`` — four needles with different keys, all four asked;
* ``vt``              — variable tracking: a chain VAR A = N, VAR B = VAR A, ... (four hops) spread through
                        the haystack; the answer is every variable that holds N;
* ``cwe``             — common-words extraction: a numbered list where ten words appear 30 times and
                        the rest 3 times; the answer is the ten common words.

Values are seven-digit numbers, keys adjective-noun pairs, variables five capital letters. Needle
depths cycle through ``DEPTHS`` (0 % … 100 % of the haystack) with the item index, so every depth is
covered ``items / 11`` times; a needle is placed at the first sentence end at or after its depth (so it
never splits a word), and the depth recorded is where it really starts.

Every item is built in *token ids* with the model's tokenizer (any object with ``encode(str) ->
list[int]`` and ``decode(list[int]) -> str``; :class:`HFCodec` wraps a transformers tokenizer), so that
``len(context) + len(query) + max_new == ctx`` exactly (cwe, whose list grows by a rare word's three
entries, stays within three entries of it). ``context`` is prefilled densely; ``query`` (question + answer prefix) is
decoded token by token under the mode being measured, then ``max_new`` tokens are generated greedily.

Scoring as RULER: ``string_match_all`` (fraction of the reference strings contained in the prediction,
case-insensitive) for every task here; ``string_match_part`` (any reference) is RULER's QA metric.

Example::

    >>> from vashista_app.quality.ruler import make_item, ByteCodec, string_match_all
    >>> it = make_item("niah_single", 2048, 3, ByteCodec(), "The grass is green. " * 200, seed=0)
    >>> len(it.context) + len(it.query) + it.max_new
    2048
    >>> it.answers[0] in ByteCodec().decode(it.context)
    True
    >>> string_match_all("The number is " + it.answers[0] + ".", it.answers)
    1.0
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

from vashista_core.errors import VashistaInputError

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe")
DEPTHS = tuple(i / 10 for i in range(11))
# greedy tokens generated per task: the longest expected answer plus punctuation, in tokens of a
# digit-per-token tokenizer (SmolLM2, Qwen2.5), with margin
MAX_NEW = dict(niah_single=12, niah_multikey=12, niah_multivalue=40, niah_multiquery=40, vt=30, cwe=50)

ADJECTIVES = ("ancient", "bitter", "brave", "calm", "clever", "crimson", "curious", "damp", "eager", "faint",
              "fierce", "gentle", "golden", "hollow", "humble", "icy", "jolly", "keen", "lively", "lonely",
              "loud", "mellow", "misty", "noble", "odd", "pale", "proud", "quiet", "rapid", "rough", "rusty",
              "shy", "silent", "slow", "smooth", "sour", "spare", "steady", "sturdy", "swift", "tame", "tender",
              "tidy", "vast", "vivid", "wary", "wild", "wise", "witty", "young")
NOUNS = ("anchor", "badger", "barrel", "beacon", "bishop", "blossom", "canyon", "castle", "cellar", "comet",
         "cottage", "crystal", "dagger", "desert", "dragon", "engine", "falcon", "feather", "fountain", "galaxy",
         "garden", "glacier", "hammer", "harbor", "helmet", "island", "jungle", "kettle", "ladder", "lantern",
         "lizard", "magnet", "meadow", "mirror", "monkey", "needle", "orchard", "palace", "parrot", "pebble",
         "pillow", "planet", "puzzle", "rabbit", "ribbon", "saddle", "spider", "temple", "tunnel", "violin")

TEMPLATES = dict(
    niah=("Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
          "I will quiz you about the {kind} afterwards.\n"),
    vt=("Memorize and track the chain(s) of variable assignment hidden in the following text.\n"),
    cwe=("Below is a numbered list of words. In these words, some appear more often than others. "
         "Memorize the ones that appear most often.\n"),
)


@dataclass
class Item:
    """One task instance: ``context`` ids (prefilled), ``query`` ids (decoded), ``max_new`` generated."""
    task: str
    ctx: int
    index: int
    context: list[int]
    query: list[int]
    max_new: int
    answers: list[str]
    metric: str = "all"
    depths: list[float] = field(default_factory=list)     # where each needle starts, relative to context
    needle_spans: list[tuple[int, int]] = field(default_factory=list)   # [start, end) in context
    meta: dict = field(default_factory=dict)


class ByteCodec:
    """A tokenizer stand-in: one token per UTF-8 byte (tests; sizes are then byte counts)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFCodec:
    """``encode``/``decode`` of a transformers tokenizer, without special tokens."""

    def __init__(self, tok):
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False).input_ids)

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


# ----------------------------------------------------------------------------------------- scoring

def string_match_all(pred: str, refs: list[str]) -> float:
    """RULER's metric for NIAH, VT and CWE: the fraction of references contained in the prediction."""
    if not refs:
        raise VashistaInputError("refs", "no reference answers")
    p = pred.lower()
    return sum(r.lower() in p for r in refs) / len(refs)


def string_match_part(pred: str, refs: list[str]) -> float:
    """RULER's QA metric: 1 if any reference is contained in the prediction."""
    if not refs:
        raise VashistaInputError("refs", "no reference answers")
    p = pred.lower()
    return float(any(r.lower() in p for r in refs))


def score(item: Item, prediction: str) -> float:
    return (string_match_all if item.metric == "all" else string_match_part)(prediction, item.answers)


# ----------------------------------------------------------------------------------------- generation

def item_rng(task: str, ctx: int, index: int, seed: int) -> random.Random:
    """A generator that depends only on (task, ctx, index, seed): items are reproducible one by one
    (a resumed run rebuilds exactly the items it skipped to)."""
    h = hashlib.sha256(f"{seed}:{task}:{ctx}:{index}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


class Haystack:
    """Token ids of one text; ``ends[j]``: a sentence ends just before token j (needles go there)."""

    def __init__(self, codec, text: str, name: str = "text"):
        self.codec, self.name = codec, name
        self.ids = codec.encode(text)
        if len(self.ids) < 64:
            raise VashistaInputError("haystack", f"{name} has only {len(self.ids)} tokens")
        # a sentence ends between tokens j-1 and j when j-1 ends a line, or ends with . ! ? and token j
        # starts with white space ("collections.abc" has no sentence end)
        last, first = {}, {}
        for t in set(self.ids):
            s = codec.decode([t])
            last[t], first[t] = s[-1:], s[:1]
        self.ends = [False] + [last[a] == "\n" or (last[a] in ".!?" and first[b] in (" ", "\n"))
                               for a, b in zip(self.ids, self.ids[1:])]
        self._words: list[str] | None = None

    def words(self) -> list[str]:
        """Distinct lowercase alphabetic words (4-10 letters) of the text, in first-seen order (cwe)."""
        if self._words is None:
            text = self.codec.decode(self.ids)
            self._words = list(dict.fromkeys(re.findall(r"\b[a-z]{4,10}\b", text)))
        return self._words

    def window(self, rng: random.Random, n: int) -> tuple[list[int], list[bool]]:
        """n consecutive tokens from a random start (the text repeats if it is shorter than n)."""
        N = len(self.ids)
        start = rng.randrange(N)
        reps = (start + n) // N + 1
        ids, ends = self.ids * reps, self.ends * reps
        return ids[start:start + n], ends[start:start + n]


def _splice(codec, hay: list[int], ends: list[bool], needles: list[tuple[float, str]]):
    """Insert needle sentences at relative depths, each after the first sentence end at or past its
    depth; returns (ids, spans [start, end) of each needle in the output, in the needles' order)."""
    enc = [codec.encode(" " + s) for _, s in needles]
    L = len(hay)
    cuts = []
    for d, _ in needles:
        c = min(L, int(round(d * L)))
        # first sentence end at or after the cut, within 80 tokens; else the cut itself
        for j in range(c, min(L, c + 80)):
            if j == 0 or ends[j]:
                c = j
                break
        cuts.append(c)
    order = sorted(range(len(needles)), key=lambda i: (cuts[i], i))
    out, spans, last = [], [None] * len(needles), 0
    for i in order:
        out += hay[last:cuts[i]]
        spans[i] = (len(out), len(out) + len(enc[i]))
        out += enc[i]
        last = cuts[i]
    out += hay[last:]
    return out, spans


def _key(rng) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def _number(rng) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _niah(task, ctx, index, codec, hay: Haystack, rng) -> Item:
    n_needles = 1 if task == "niah_single" else 4
    if task == "niah_multivalue":
        keys = [_key(rng)] * 4
    else:
        keys = []
        while len(keys) < n_needles:
            k = _key(rng)
            if k not in keys:
                keys.append(k)
    values = []
    while len(values) < n_needles:
        v = _number(rng)
        if v not in values:
            values.append(v)
    base = DEPTHS[index % len(DEPTHS)]
    # the asked needle sits at the item's depth; the others at random depths
    depths = [base] + [rng.random() for _ in range(n_needles - 1)]
    needles = [(d, f"One of the special magic numbers for {k} is: {v}.") for d, k, v in zip(depths, keys, values)]
    if task in ("niah_single", "niah_multikey"):
        asked, answers = [keys[0]], [values[0]]
        question = (f"\nWhat is the special magic number for {keys[0]} mentioned in the provided text?"
                    f" The special magic number for {keys[0]} mentioned in the provided text is")
    elif task == "niah_multivalue":
        asked, answers = [keys[0]], values
        question = (f"\nWhat are all the special magic numbers for {keys[0]} mentioned in the provided text?"
                    f" The special magic numbers for {keys[0]} mentioned in the provided text are")
    else:
        asked, answers = keys, values
        ks = ", ".join(keys[:-1]) + f", and {keys[-1]}"
        question = (f"\nWhat are all the special magic numbers for {ks} mentioned in the provided text?"
                    f" The special magic numbers for {ks} mentioned in the provided text are")
    head = codec.encode(TEMPLATES["niah"].format(kind="numbers"))
    return _assemble(task, ctx, index, codec, hay, rng, head, needles, question, answers,
                     dict(keys=keys, values=values, asked=asked, target_depth=base))


def _vt(task, ctx, index, codec, hay: Haystack, rng) -> Item:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    names = []
    while len(names) < 5:
        n = "".join(rng.choice(letters) for _ in range(5))
        if n not in names:
            names.append(n)
    value = str(rng.randint(10000, 99999))
    stmts = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 5)]
    # the chain is spread in order through the haystack at random depths (as RULER inserts it)
    depths = sorted(rng.random() for _ in stmts)
    question = (f"\nQuestion: Find all variables that are assigned the value {value} in the text above."
                f" Answer: According to the chain(s) of variables assigned in the text above, 5 variables are"
                f" assigned the value {value}, they are:")
    head = codec.encode(TEMPLATES["vt"])
    return _assemble(task, ctx, index, codec, hay, rng, head, list(zip(depths, stmts)), question, names,
                     dict(value=value, names=names))


def _assemble(task, ctx, index, codec, hay, rng, head, needles, question, answers, meta) -> Item:
    query = codec.encode(question)
    max_new = MAX_NEW[task]
    need = sum(len(codec.encode(" " + s)) for _, s in needles)
    room = ctx - max_new - len(head) - len(query) - need
    if room < 32:
        raise VashistaInputError("--contexts", f"{ctx} tokens cannot hold the {task} prompt and needles")
    filler, ends = hay.window(rng, room)
    body, spans = _splice(codec, filler, ends, needles)
    context = head + body
    spans = [(s + len(head), e + len(head)) for s, e in spans]
    return Item(task=task, ctx=ctx, index=index, context=context, query=query, max_new=max_new, answers=answers,
                depths=[s / len(context) for s, _ in spans], needle_spans=spans,
                meta=dict(meta, haystack=hay.name))


def _cwe(task, ctx, index, codec, hay: Haystack, rng) -> Item:
    vocab = hay.words()
    n_common, f_common, f_rare = 10, 30, 3
    if len(vocab) < n_common + 10:
        raise VashistaInputError("haystack", f"{hay.name} has too few distinct words for cwe")
    words = rng.sample(vocab, len(vocab))
    common, rare_pool = words[:n_common], words[n_common:]
    head = codec.encode(TEMPLATES["cwe"])
    question = ("\nQuestion: What are the 10 most common words in the above list?"
                " Answer: The top 10 words that appear most often in the list are:")
    query = codec.encode(question)
    budget = ctx - MAX_NEW[task] - len(head) - len(query)
    order_seed = rng.random()        # one shuffle seed: the list measured is the list used

    def listing(n_rare: int, fc: int | None = None):
        # scale the common words' frequency down at small sizes, as RULER does, so that they stay
        # at most a third of the list while each still appears at least 4 times (rare words 3 times)
        if fc is None:
            fc = max(4, min(f_common, (n_rare * f_rare) // (2 * n_common)))
        seq = [w for w in common for _ in range(fc)] + [w for w in rare_pool[:n_rare] for _ in range(f_rare)]
        random.Random(order_seed).shuffle(seq)
        return codec.encode("".join(f"{i + 1}. {w}\n" for i, w in enumerate(seq))), fc

    def most_rare(fc: int | None) -> int:
        lo, hi = 0, len(rare_pool)
        while lo < hi:               # the most rare words whose list fits the budget
            mid = (lo + hi + 1) // 2
            if len(listing(mid, fc)[0]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    if len(listing(0)[0]) > budget:
        raise VashistaInputError("--contexts", f"{ctx} tokens cannot hold the cwe list")
    # the frequency follows the list's size; with it fixed, the list grows by one rare word (3 entries)
    # at a time, so it ends within 3 entries of the budget
    fc = listing(most_rare(None))[1]
    lo = most_rare(fc)
    body, fc = listing(lo, fc)
    return Item(task=task, ctx=ctx, index=index, context=head + body, query=query, max_new=MAX_NEW[task],
                answers=common, meta=dict(common_freq=fc, rare_words=lo, rare_freq=f_rare, haystack=hay.name))


_MAKERS = dict(niah_single=_niah, niah_multikey=_niah, niah_multivalue=_niah, niah_multiquery=_niah, vt=_vt,
               cwe=_cwe)


def make_item(task: str, ctx: int, index: int, codec, haystack, seed: int = 0) -> Item:
    """Item ``index`` of ``task`` at ``ctx`` tokens; ``haystack`` is a :class:`Haystack` or a text."""
    if task not in _MAKERS:
        raise VashistaInputError("--tasks", f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    hay = haystack if isinstance(haystack, Haystack) else Haystack(codec, haystack)
    return _MAKERS[task](task, ctx, index, codec, hay, item_rng(task, ctx, index, seed))
