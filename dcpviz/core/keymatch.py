"""Which checkpoint key each target key loads from: every cause at once, certain or refused.

Pure functions on key names and their facts (global size, dtype; ``size None`` for a Python
value or a bytes entry). No torch: the hints (``analysis``) and the fix planner (``engine``)
share this one answer.

The target's keys DCP cannot find (``missing``) are matched with the checkpoint's keys no target
key reads (``unexpected``) by rules, applied again and again until nothing changes (a fixpoint):

1. *wrapper segments* (``_orig_mod``, DDP's ``module``, ``_fsdp_wrapped_module``,
   ``_checkpoint_wrapped_module``) anywhere in a key: two keys equal once they are dropped, each
   the only one of its side with that name;
2. *rewrites*: a key ``X + a + R`` on the target's side that is ``X + b + R`` in the checkpoint
   (``X`` the longest shared front, ``R`` the longest shared tail, never empty: a leaf is never
   renamed, so ``momentum`` is never ``eps`` and ``momentum_buffer`` never ``exp_avg``). ``a → b``
   is a prefix (``'' → 'model.'``), a renamed module (``norm2 → ln_2``), a nesting. A rewrite with
   a numeric segment (a layer index) is never one.

A rewrite is *applied* only when it is certain: it holds for at least two keys of equal shape
(or for the one target key still unmatched), and no key it maps has another candidate — no other
rewrite or wrapper match maps that target key elsewhere or another target key onto the same
checkpoint key. Where candidates tie (``model.`` and ``ema.`` both hold the tree; ``wq`` could
be ``q_proj``, ``k_proj`` or ``v_proj``, all of one shape) nothing is applied: the tie is an
``Ambiguity`` with its candidates, and the caller chooses (``choices``). Everything is sorted:
no answer depends on hash, set or dict order.

Once matched, a key whose shape or dtype changed is *resized* (same number of dims) or *cast*
(a dtype change, which DCP's ``copy_`` does silently); a change in the number of dims cannot be
loaded (``reshaped``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

WRAPPER_SEGMENTS = {
    "_orig_mod": "torch.compile",
    "module": "DistributedDataParallel / DataParallel",
    "_fsdp_wrapped_module": "FSDP1's wrapper",
    "_checkpoint_wrapped_module": "activation checkpointing's wrapper",
}
MAX_REWRITE_SEGMENTS = 3  # a + b at most this many segments: longer differences are not one cause
MAX_ROUNDS = 16


@dataclass(frozen=True)
class KeyFacts:
    """A key's global size (None: a Python value / bytes entry) and dtype."""

    size: tuple[int, ...] | None
    dtype: str | None = None

    @property
    def is_tensor(self) -> bool:
        return self.size is not None


@dataclass(frozen=True)
class Rule:
    """One applied cause. ``kind``: 'wrapper' (``segments``: the wrapper segments the checkpoint
    has and the target lacks, or the other way round with ``target_side``), 'rewrite' (``a → b``:
    target-side text ``a`` is ``b`` in the checkpoint; '' for nothing), 'choice' (the caller's).
    ``pairs``: (target key, checkpoint key) it mapped."""

    kind: str
    a: str
    b: str
    pairs: tuple[tuple[str, str], ...]

    @property
    def spelled(self) -> str:
        """The rule as a caller writes it in ``choices``: ``{a: b}``."""
        return f"{{{self.a!r}: {self.b!r}}}"


@dataclass(frozen=True)
class Ambiguity:
    """Target keys with more than one possible source: ``a`` (target-side text) is one of
    ``candidates`` (checkpoint-side texts) and the evidence does not say which. ``pairs``: every
    (target key, checkpoint key) candidate pair."""

    a: str
    candidates: tuple[str, ...]
    keys: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Match:
    """The answer. ``mapping``: (target key, checkpoint key) for every target key loaded from
    another name. ``resized`` / ``reshaped`` / ``cast``: (target key, checkpoint key, saved, current)
    for matched keys whose size (same dims) / number of dims / dtype changed. ``missing``: target
    keys with no source; ``unexpected``: checkpoint keys no target key reads."""

    mapping: tuple[tuple[str, str], ...]
    rules: tuple[Rule, ...]
    ambiguities: tuple[Ambiguity, ...]
    resized: tuple[tuple[str, str, tuple[int, ...], tuple[int, ...]], ...]
    reshaped: tuple[tuple[str, str, tuple[int, ...], tuple[int, ...]], ...]
    cast: tuple[tuple[str, str, str, str], ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]

    @property
    def rename(self) -> dict[str, str]:
        """``{target key: checkpoint key}``."""
        return dict(self.mapping)


def _segs(key: str) -> list[str]:
    return key.split(".") if key else []


def _join(segs: Iterable[str]) -> str:
    return ".".join(segs)


def canonical(key: str) -> str:
    """``key`` without wrapper segments."""
    return _join(s for s in _segs(key) if s not in WRAPPER_SEGMENTS)


def _compatible(t: KeyFacts, s: KeyFacts) -> bool:
    """Can target value ``t`` load from checkpoint value ``s`` at all (tensor with tensor of the same
    number of dims, a Python value with a Python value)?"""
    if t.is_tensor != s.is_tensor:
        return False
    return not t.is_tensor or len(t.size) == len(s.size)  # type: ignore[arg-type]


def _same(t: KeyFacts, s: KeyFacts) -> bool:
    """Evidence for a rewrite: tensors of one shape with at least one dim. A Python value or a
    scalar (an optimizer's ``step``) has no shape to agree on: it may follow a rewrite that other
    keys establish, never establish one."""
    return t.is_tensor and bool(t.size) and t.size == s.size


def rewrite_of(t: str, s: str) -> tuple[str, str, str] | None:
    """(front X, a, b) with ``t = X + a + R`` and ``s = X + b + R`` for the longest shared front and
    tail, when that is a rewrite: a non-empty tail, something differs, no numeric segment in ``a``
    or ``b``, at most MAX_REWRITE_SEGMENTS segments changed. ``a``/``b``/``X`` end with '.' unless ''."""
    ts, ss = _segs(t), _segs(s)
    r = 0
    while r < min(len(ts), len(ss)) and ts[-1 - r] == ss[-1 - r]:
        r += 1
    if r == 0:
        return None  # the leaf differs: never a rename
    x = 0
    while x < min(len(ts), len(ss)) - r and ts[x] == ss[x]:
        x += 1
    a, b = ts[x : len(ts) - r], ss[x : len(ss) - r]
    if not a and not b:
        return None
    if len(a) + len(b) > MAX_REWRITE_SEGMENTS or any(seg.isdigit() for seg in (*a, *b)):
        return None

    def dotted(segs: list[str]) -> str:
        return _join(segs) + "." if segs else ""

    return dotted(ts[:x]), dotted(a), dotted(b)


def _rewrite_name(a: str, b: str) -> tuple[str, str]:
    """How a rewrite is spelled as a choice: a renamed segment as ``{'norm2': 'ln_2'}``, anything
    else as prefixes ``{'': 'model.'}``."""
    if a.count(".") == 1 and b.count(".") == 1:
        return a[:-1], b[:-1]
    return a, b


class _State:
    """Matching in progress, on names without wrapper segments (``canonical``)."""

    def __init__(
        self,
        target: Mapping[str, KeyFacts],
        saved: Mapping[str, KeyFacts],
        missing: Iterable[str],
        unexpected: Iterable[str],
    ) -> None:
        self.target, self.saved = target, saved
        self.cur = {m: canonical(m) for m in sorted(missing)}  # open target key -> its name so far
        self.free = set(unexpected)  # checkpoint keys no target key reads yet
        self.canon = {u: canonical(u) for u in self.free}
        self.done: dict[str, str] = {}  # target key -> checkpoint key
        self.rules: list[Rule] = []

    def open(self) -> list[str]:
        return sorted(self.cur)

    def take(self, pairs: list[tuple[str, str]], kind: str, a: str, b: str) -> None:
        pairs = sorted(pairs)
        for m, u in pairs:
            del self.cur[m]
            self.free.discard(u)
            self.done[m] = u
        self.rules.append(Rule(kind, a, b, tuple(pairs)))


def _unique_pairs(cands: Mapping[str, set[str]]) -> list[tuple[str, str]]:
    """(m, u) where m has exactly one candidate u and u is nobody else's candidate."""
    claims: dict[str, int] = defaultdict(int)
    for us in cands.values():
        for u in us:
            claims[u] += 1
    return sorted(
        (m, next(iter(us)))
        for m, us in cands.items()
        if len(us) == 1 and claims[next(iter(us))] == 1
    )


def _wrapper_name(m: str, u: str) -> tuple[str, str]:
    """(wrapper segments only the target key has, those only the checkpoint key has)."""
    extra_s = sorted({s for s in _segs(u) if s in WRAPPER_SEGMENTS} - set(_segs(m)))
    extra_t = sorted({s for s in _segs(m) if s in WRAPPER_SEGMENTS} - set(_segs(u)))
    return ", ".join(extra_t), ", ".join(extra_s)


def _equal_names(st: _State) -> bool:
    """Pair keys whose names (so far, without wrapper segments) are equal, each the only one of
    its side with that name: wrapper segments (rule 'wrapper'), or keys a rewrite has renamed."""
    by_canon: dict[str, set[str]] = defaultdict(set)
    for u in st.free:
        by_canon[st.canon[u]].add(u)
    cands = {
        m: {u for u in by_canon.get(st.cur[m], ()) if _compatible(st.target[m], st.saved[u])}
        for m in st.open()
    }
    pairs = _unique_pairs({m: us for m, us in cands.items() if us})
    groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for m, u in pairs:
        groups[_wrapper_name(m, u) if canonical(m) == canonical(u) else ("", "")].append((m, u))
    for (a, b), ps in sorted(groups.items()):
        st.take(ps, "wrapper" if (a or b) else "rewritten", a, b)
    return bool(pairs)


def _bucket(name: str) -> tuple[str, tuple[str, ...]]:
    segs = _segs(name)
    return (segs[-1] if segs else "", tuple(s for s in segs if s.isdigit()))


def _rewrite_candidates(st: _State) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
    """Every rewrite (a, b) with its (m, u, front X)."""
    # A rewrite keeps the leaf and every numeric segment (they lie in X or R), so only keys with
    # the same leaf and the same layer indices can pair: a bucket per (leaf, indices).
    by_leaf: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for u in sorted(st.free):
        by_leaf[_bucket(st.canon[u])].append(u)
    rules: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for m in st.open():
        name = st.cur[m]
        for u in by_leaf.get(_bucket(name), ()):
            rw = rewrite_of(name, st.canon[u])
            if rw is None or not _compatible(st.target[m], st.saved[u]):
                continue
            x, a, b = rw
            rules[(a, b)].append((m, u, x))
    return rules


def _rewrites(st: _State) -> tuple[bool, list[Ambiguity]]:
    """Apply every certain rewrite; where none is, the candidates that are left, as ties."""
    rules = _rewrite_candidates(st)
    # A rewrite is evidence only where it pairs values of one shape (Python values: by name).
    support = {
        rw: [(m, u) for m, u, _ in ps if _same(st.target[m], st.saved[u])]
        for rw, ps in rules.items()
    }
    # One coincidental pair is not a pattern (unless one target key is all that is left): it
    # neither applies nor competes with a rewrite that holds for many keys.
    pattern = {
        rw: len(ps) >= 2 or (len(ps) == 1 and len(st.cur) == 1) for rw, ps in support.items()
    }
    certain = _certain_rewrites(rules, pattern)
    for a, b in certain:
        _apply_rewrite(st, a, b, rules[(a, b)])
    if certain:
        return True, []
    return False, _ambiguities(rules, support)


def _certain_rewrites(
    rules: Mapping[tuple[str, str], list[tuple[str, str, str]]],
    pattern: Mapping[tuple[str, str], bool],
) -> list[tuple[str, str]]:
    """The patterns (in order) whose every pair is the only one either of its keys has."""
    claimed: dict[str, set[str]] = defaultdict(set)
    elsewhere: dict[str, set[str]] = defaultdict(set)  # m -> every u a pattern maps it to
    for rw, ps in rules.items():
        if pattern[rw]:
            for m, u, _ in ps:
                claimed[u].add(m)
                elsewhere[m].add(u)
    return [
        rw
        for rw in sorted(rules)
        if pattern[rw] and all(elsewhere[m] == {u} and claimed[u] == {m} for m, u, _ in rules[rw])
    ]


def _apply_rewrite(st: _State, a: str, b: str, ps: list[tuple[str, str, str]]) -> None:
    """Take the pairs of the certain rewrite ``a`` -> ``b``, then rename the other open keys."""
    fronts = sorted({x for _, _, x in ps})
    st.take(
        [(m, u) for m, u, _ in ps if m in st.cur and u in st.free], "rewrite", *_rewrite_name(a, b)
    )
    # The rewrite holds for every key under the same front: rename the other open keys too,
    # so a second cause on them (a rename under a prefix) is found next round.
    for m in st.open():
        name = st.cur[m]
        for x in fronts:
            if name.startswith(x + a):
                st.cur[m] = x + b + name[len(x + a) :]
                break


def _ambiguities(
    rules: Mapping[tuple[str, str], list[tuple[str, str, str]]],
    support: Mapping[tuple[str, str], list[tuple[str, str]]],
) -> list[Ambiguity]:
    """What no certain rewrite explains: per target-side text, every supported checkpoint-side
    text (a tie, or one pair that is not yet a pattern)."""
    # Shown per target key: the candidates of the best-supported rewrites that reach it (a
    # rewrite seen once is not shown next to one seen on every layer).
    best: dict[str, int] = defaultdict(int)
    for rw, ps in rules.items():
        for m, _, _ in ps:
            best[m] = max(best[m], len(support[rw]))
    by_a: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for (a, b), ps in rules.items():
        n = len(support[(a, b)])
        kept = [(m, u) for m, u, _ in ps if n and n == best[m]]
        if kept:
            na, nb = _rewrite_name(a, b)
            by_a[na][nb] += kept
    out = []
    for a in sorted(by_a):
        cands = by_a[a]
        pairs = tuple(sorted({p for ps in cands.values() for p in ps}))
        out.append(Ambiguity(a, tuple(sorted(cands)), tuple(sorted({m for m, _ in pairs})), pairs))
    return out


def _cprefix(prefix: str) -> str:
    """A prefix ('' or ending with '.') without wrapper segments."""
    c = canonical(prefix[:-1]) if prefix else ""
    return c + "." if c else ""


def _chosen_name(name: str, key: str, a: str, b: str) -> str | None:
    """The target key ``key`` (now called ``name``) after the choice ``{a: b}``, or None where the
    choice does not reach it."""
    if a == "" or a.endswith("."):
        pa, pb = _cprefix(a), _cprefix(b)
        return pb + name[len(pa) :] if name.startswith(pa) else None
    if "." in a:
        return canonical(b) if canonical(a) == name or a == key else None
    segs = _segs(name)
    if a not in segs[:-1]:
        return None  # never a leaf
    return _join(b if s == a else s for s in segs[:-1]) + "." + segs[-1]


def _apply_choice(st: _State, a: str, b: str) -> bool:
    """The caller's choice ``{a: b}``: a whole key (a dot inside, none at the end), a prefix ('' or
    ending with '.') or one segment name (never a leaf); applied to the open target keys whose
    result names a free checkpoint key of a compatible kind, each claimed once."""
    by_canon: dict[str, list[str]] = defaultdict(list)
    for u in sorted(st.free):
        by_canon[st.canon[u]].append(u)
    pairs = []
    for m in st.open():
        new = _chosen_name(st.cur[m], m, a, b)
        if new is None:
            continue
        us = [u for u in by_canon.get(new, ()) if _compatible(st.target[m], st.saved[u])]
        if len(us) == 1:
            pairs.append((m, us[0]))
    claimed: dict[str, int] = defaultdict(int)
    for _, u in pairs:
        claimed[u] += 1
    pairs = [(m, u) for m, u in pairs if claimed[u] == 1]
    if pairs:
        st.take(pairs, "choice", a, b)
    return bool(pairs)


def match_keys(
    target: Mapping[str, KeyFacts],
    saved: Mapping[str, KeyFacts],
    missing: Iterable[str] | None = None,
    unexpected: Iterable[str] | None = None,
    choices: Mapping[str, str] | None = None,
) -> Match:
    """Match target keys to checkpoint keys (see the module doc).

    ``target`` / ``saved``: every key with its facts. ``missing`` / ``unexpected``: the keys to
    match (default: the keys of one side not on the other). ``choices``: the caller's answers to
    ambiguities, ``{target-side text: checkpoint-side text}`` (a whole key, a prefix ending with
    '.' or '', or one segment name), applied before anything is inferred."""
    if missing is None:
        missing = [k for k in target if k not in saved]
    if unexpected is None:
        unexpected = [k for k in saved if k not in target]
    st = _State(target, saved, missing, unexpected)
    ambiguities: list[Ambiguity] = []
    for _ in range(MAX_ROUNDS):
        changed = False
        for a, b in sorted((choices or {}).items()):
            changed |= _apply_choice(st, a, b)
        changed |= _equal_names(st)
        if not changed:
            changed, ambiguities = _rewrites(st)
        if not changed:
            break
    return _finish(st, ambiguities + _possible_sources(st, ambiguities))


def _could_hold(t: KeyFacts, s: KeyFacts) -> bool:
    """Could ``s`` be ``t`` saved before a resize: one kind, and for tensors one number of dims
    with at most one dim changed."""
    if not _compatible(t, s):
        return False
    return not t.is_tensor or sum(a != b for a, b in zip(t.size, s.size)) <= 1  # type: ignore[arg-type]


def _possible_sources(st: _State, known: list[Ambiguity]) -> list[Ambiguity]:
    """Open target keys that no tie names yet but that some unread checkpoint key could fill (same
    leaf, same layer indices, a value of one kind, at most one dim resized): one Ambiguity per key, ``a`` the whole key. A
    key with a possible source is never called 'not in the checkpoint' (the advice would be to
    skip it, leaving loadable data unread)."""
    seen = {m for amb in known for m in amb.keys}
    by_bucket: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    for u in sorted(st.free):
        by_bucket[_bucket(st.canon[u])].append(u)
    out = []
    for m in st.open():
        if m in seen:
            continue
        us = [
            u
            for u in by_bucket.get(_bucket(st.cur[m]), ())
            if _could_hold(st.target[m], st.saved[u])
        ]
        if us:
            out.append(Ambiguity(m, tuple(us), (m,), tuple((m, u) for u in us)))
    return out


def _finish(st: _State, ambiguities: list[Ambiguity]) -> Match:
    resized, reshaped, cast = [], [], []
    pairs = [(m, m) for m in st.target if m not in st.cur and m not in st.done and m in st.saved]
    pairs += list(st.done.items())
    for m, u in sorted(pairs):
        t, s = st.target[m], st.saved[u]
        if t.is_tensor and s.is_tensor:
            if t.size != s.size:
                (resized if len(t.size) == len(s.size) else reshaped).append((m, u, s.size, t.size))  # type: ignore[arg-type]
            elif t.dtype and s.dtype and t.dtype != s.dtype:
                cast.append((m, u, s.dtype, t.dtype))
    return Match(
        mapping=tuple(sorted(st.done.items())),
        rules=tuple(st.rules),
        ambiguities=tuple(ambiguities),
        resized=tuple(resized),
        reshaped=tuple(reshaped),
        cast=tuple(cast),
        missing=tuple(sorted(st.cur)),
        unexpected=tuple(sorted(st.free)),
    )


def compose(first: Mapping[str, str], then: Mapping[str, str]) -> dict[str, str]:
    """A rename ``first`` (original key -> name) followed by ``then`` (name -> name): original key
    -> final name, keeping every rename of ``first`` (a second round never drops the first's)."""
    out = {k: then.get(v, v) for k, v in first.items()}
    renamed = set(first.values())
    for k, v in then.items():
        if k not in renamed and k not in out:
            out[k] = v
    return {k: v for k, v in sorted(out.items()) if k != v}
