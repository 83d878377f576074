"""The compiled scanner (``grok/verify/_cscan.c``) against the ``re`` path it stands for: identical results.

``grok.verify.scan`` runs the verifier's whole-text scans compiled when the extension is built and through ``re``
otherwise (or with ``GROK_NO_CEXT=1``). Each scan is compared here, in one process, with the regex it replaces on
the benchmark's references, their numbers moved, and generated texts (names and terms run together, cut,
hyphenated; other scripts' letters and digits; line breaks and other white space; lone surrogates; text of each
of ``str``'s three widths); and the whole reading of answers with the extension against a fresh process with
``GROK_NO_CEXT=1``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from grok.eval.data import benchmark_from_records
from grok.eval.reader import AnswerReader
from grok.instruct.samples import sample_records
from grok.knowledge import load_knowledge_base
from grok.knowledge.lexicon import build_lexicon
from grok.verify import scan, textnorm
from grok.verify import verifier as V

ROOT = Path(__file__).resolve().parents[1]
needs_cext = pytest.mark.skipif(not scan.COMPILED, reason="grok.verify._cscan is not built (or GROK_NO_CEXT is set)")

#: Odd characters: other scripts' letters and digits (all \w), marks, white space of other kinds, a lone
#: surrogate, characters of 2 and 4 bytes, the hyphens and dashes the scans test.
ODD = ["é", "ß", "µ", "μ", "٣", "४", "１", "²", "½", "Ⅻ", "_", "-", "–", "—", "’", "\u00a0", "\u2009", "\u3000",
       "\x0b", "\x1c", "\x85", "\u2028", "\t", "\r\n", "\n\n", "\ud800", "\udcff", "😀", "𝟙", "𐌰", "≥", "µm",
       ".", ";", "!", "?", ". ", "; ", "!\n", "?\t", "..", "(", ")", "/", "^", "³", "×", "−"]


def _bench_and_reader():
    kb = load_knowledge_base()
    lex = build_lexicon(kb)
    return benchmark_from_records(sample_records(40, 9, kb), kb=kb, lexicon=lex), AnswerReader(lex)


@pytest.fixture(scope="module")
def setup():
    return _bench_and_reader()


def _texts(reader, bench, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    refs = [it.reference for it in bench.items.values()]
    words = sorted({*reader._name_of, *reader._bm_of, *V._TERM_CLASS, *textnorm._UNITS, *textnorm._TENS,
                    *textnorm._SCALES})
    pool = [*words, *ODD, "3", "262", "0.42", "2.5", " ", "the", "is", "and"]
    out = [*refs, *(r.lower() for r in refs), *(textnorm.normalise(r.lower()) for r in refs)]
    for _ in range(n):
        parts = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        parts = [p[: rng.randint(1, len(p))] if rng.random() < 0.2 else p for p in parts]
        out.append(rng.choice([" ", "", "-", "x", " a", ", ", "\n", ". ", "_", "é"]).join(parts))
    for r in refs[:60]:  # a reference with odd characters spliced in
        k = rng.randrange(len(r) + 1)
        out.append(r[:k].lower() + rng.choice(ODD) + r[k:].lower())
    return out


@needs_cext
def test_word_scans_are_their_regexes(setup):
    bench, reader = setup
    scanners = {"names": reader._scan, "terms": V._TERM_SCAN, "number words": textnorm._FIRST_WORD}
    texts = _texts(reader, bench, 6000, 1)
    widths = {min(3, (max(map(ord, t), default=0).bit_length() + 7) // 8) for t in texts}
    assert widths == {1, 2, 3}  # str's three widths (ASCII and Latin-1 are one), the scanner reads each
    for name, sc in scanners.items():
        hits = 0
        for text in texts:
            want = [(m.start(), m.end(), m.group(0)) for m in sc.pattern.finditer(text)]
            got = sc.findall(text)
            assert got == want, (name, text)
            assert sc.search(text) is bool(want), (name, text)
            hits += bool(want)
        assert hits > 500, name  # the texts exercise each scanner


@needs_cext
def test_clause_spans_are_the_regex_split(setup):
    bench, reader = setup
    texts = _texts(reader, bench, 3000, 2)
    texts += ["", ".", ". ", "\n", "a.\n\nb", "a. \u00a0b", "a.\x1cb", "a;\u3000b", "a?\u2028\u2029b", "\n\n\n", "x!"]
    for text in texts:
        assert scan.clause_spans(text) == scan._clause_spans_re(text), text


#: Pieces of the number scan and the mask: digits of several scripts, marks, powers of ten, ranges, units, the
#: mask's words and what follows them; random strings of them exercise every backtracking path of the regexes.
RULE_TOKENS = [*"0123456789..  -e+x×^⁻⁺²³¹⁰⁴mµμunlp%/sy'\n\t٣", "10", "mm", "µm", "um", "nl", "mm³", "mm^3", "mm3",
               "to", "and", "–", "—", "−", "e2", "x10^", "×10", "z", "-score", " score", "of", "is", "was", "=", ":",
               "central ", "the central", "within the", "age", "aged", "step", "grade", "stage", "type", "category",
               "p", "st", "nd", "rd", "th", "-year-old", "year", "years", "y", "times", "fold", "-fold", "sd", "sds",
               "standard deviation", "quadrant", "sector", "clock hour", "o'clock", "disc diameter", "dd", "month",
               "week", "day", "hour", "minute", "mmhg", "mg", "ml", "dioptre", "diopter", "circle", "ring", "zone",
               "micrometres", "pixels", "px", "cubic millimetres", "_", "a", "é", "\ud800", "😀"]


#: Written cases of each alternative, near misses beside them.
RULE_CASES = ["3.5x", "3.5xyz", "2.62e2", "2.62e+2 µm", "2.62 × 10^2 µm", "2.62×10²", "2.62 x 10^-2", "2.6×10⁻³", "3-5.5x",
              "3 - 5.55 um", "262 µm2", "262µm³", "1e", "1e+", "5 to 7 mm", "5and6", "٣٤ µm", "z-score 5", "z -score 5",
              "z-5", "z−5", "z of -2.1", "z = 2", "z: −1.5", "z score is 2", "zis 3", "z-score", "aged 5", "age d 5",
              "age 5x", "p95", "p95th", "step 2", "grade 3b", "central 3 mm", "central 3.5mm³", "inner 1 mm ^",
              "3 mm circle", "1-3 mm ring", "1.5 - 3.5 mm zone", "3mm  grid", "2.5th", "1st", "3 yearsx", "3 years",
              "3y", "3 yrs", "80-year-old", "2 sds", "2sd", "2.5 sd", "4 clock hours", "6/12", "6/", "1.3 times",
              "2-fold", "2fold", "1.2.3", "0.5.", "12,5", "3 o'clock", "24 mmhg", "-2.5 dioptres", "1 dd", "1 ddx"]


def _rule_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = [*RULE_CASES, *(" ".join(rng.sample(RULE_CASES, 3)) for _ in range(n // 10))]
    pool = [*RULE_TOKENS, *RULE_CASES]
    out += ["".join(rng.choice(pool) for _ in range(rng.randint(1, 10))) for _ in range(n)]
    return out


@needs_cext
def test_mask_and_numbers_are_their_regexes(setup):
    """``scan.mask`` and ``scan.numbers`` (compiled) against ``_MASK_RE.sub`` and ``_NUMBER_RE.finditer``."""
    bench, reader = setup
    texts = _texts(reader, bench, 3000, 5) + _rule_texts(40000, 6)
    long = "\n".join(it.reference.lower() for it in bench.items.values())  # past the scanner's stack buffer
    texts += [long, long + " 😀", long.replace(" ", "\u2009")]
    assert len(long) > 10_000
    masked_any = found_any = 0
    for text in texts:
        want = scan._MASK_RE.sub(scan._blank_match, text)
        got = scan.mask(text)
        assert got == want and type(got) is str, text
        masked_any += got != text
        want_n = [(*m.span(), m.group(0), *m.groups()) for m in scan._NUMBER_RE.finditer(text)]
        assert scan.numbers(text) == want_n, text
        found_any += bool(want_n)
    assert masked_any > 1500 and found_any > 5000, (masked_any, found_any)


@needs_cext
def test_matches_by_clause_are_the_python_distribution(setup):
    """``by_clause`` (compiled) against the Python loop it replaces, on every scan's matches of the texts, and on
    matches that cross clauses (a clause that a match crosses into or out of is marked dirty)."""
    bench, reader = setup
    crossing = 0
    for text in [*_texts(reader, bench, 2000, 7), "\n".join(it.reference.lower() for it in bench.items.values())]:
        spans = scan.clause_spans(text)
        for found in (reader._scan.findall(text), V._TERM_SCAN.findall(text), scan.numbers(scan.mask(text)),
                      [(a, b + 3) for a, b in spans if b + 3 <= len(text)], [(a, a) for a, _ in spans]):
            got, want = scan.by_clause(found, spans), scan._by_clause_py(found, spans)
            assert got == want, (text, found)
            crossing += bool(got[1])
    assert crossing > 100


@needs_cext
def test_answer_words_gathered_in_c_are_the_python_joins(setup, monkeypatch):
    """``AnswerWords`` with the compiled join of its cached entries against its Python loops: the same BLEU ids,
    ROUGE-L tokens and flags for every answer, words seen before or not (a small cache, cleared on the way)."""
    from grok.eval import text as T
    from grok.eval.data import not_english_word

    bench, reader = setup
    refs = [it.reference for it in bench.items.values()]
    lines = refs + _texts(reader, bench, 1500, 8) + [r.replace(" ", " &amp; ", 1) + " <skipped> -\n" for r in refs[:40]]
    table = T.BleuTable(refs)
    fast = T.AnswerWords(table, not_english_word, max_words=700)
    got = [fast(x) for x in lines]
    monkeypatch.setattr(T, "_gather", None)
    slow = T.AnswerWords(table, not_english_word, max_words=700)
    assert [slow(x) for x in lines] == got



@needs_cext
def test_rouge_lcs_in_c_is_the_python_recurrence(setup, monkeypatch):
    """``grok.eval.text.lcs_with`` compiled (64-bit words, the carry taken across them) against its Python integers and
    the dynamic programme: the benchmark's answers against other references, and random token lists whose reference
    ends on each side of a word boundary (63-65, 127-129 tokens) or needs more words than the stack buffer holds."""
    from grok.eval import text as T

    def dp(a, b):
        prev = [0] * (len(b) + 1)
        for x in a:
            cur = [0]
            for j, y in enumerate(b):
                cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
            prev = cur
        return prev[-1]

    bench, reader = setup
    rng = random.Random(12)
    refs = [T.tokens(it.reference) for it in bench.items.values()]
    cands = [T.tokens(x) for x in _texts(reader, bench, 200, 13)]
    pairs = [(rng.choice(cands), rng.choice(refs)) for _ in range(600)]
    vocab = [f"w{i}" for i in range(9)]
    for n in (0, 1, 5, 63, 64, 65, 127, 128, 129, 200, 4097, 4200):
        for _ in range(4 if n < 4000 else 1):
            pairs.append(([rng.choice(vocab) for _ in range(rng.randint(0, 160))], [rng.choice(vocab) for _ in range(n)]))
    got = [T.lcs_with(a, T.RougeRef(b)) for a, b in pairs]
    monkeypatch.setattr(T, "_lcs", None)
    assert [T.lcs_with(a, T.RougeRef(b)) for a, b in pairs] == got
    assert [dp(a, b) for a, b in pairs[:700] if len(b) < 300] == [g for g, (_, b) in zip(got[:700], pairs) if len(b) < 300]

@needs_cext
def test_bad_arguments_are_refused():
    """Words that are not a tuple of non-empty str, text that is not str: an error, never a crash."""
    from grok.verify import _cscan

    for bad in (["ab"], ("ab", ""), ("ab", b"b"), ("ab", None)):
        with pytest.raises(TypeError):
            _cscan.compile(bad)
    trie = _cscan.compile(("ab", "b"))
    assert _cscan.words(trie, "ab b xb", 0) == [(0, 2, "ab"), (3, 4, "b")]
    with pytest.raises(TypeError):
        _cscan.words(trie, b"ab", 0)
    with pytest.raises(TypeError):
        _cscan.words(("ab",), "ab", 0)
    with pytest.raises(TypeError):
        _cscan.mask(b"3 mm", (), ())
    with pytest.raises(TypeError):
        _cscan.numbers("3 mm", ("mm", 3))
    with pytest.raises(TypeError):
        _cscan.gather({"a": (b"", ["a"]), "b": (b"", ("b",))}, ["a", "b"])
    assert _cscan.gather({"a": (b"\x01", ["a"])}, ["a", "c", "c"]) == ["c", "c"]
    assert _cscan.gather({"a": (b"\x01", ["a"]), "b": (b"\x02\x03", [])}, ["a", "b", "a"]) == (b"\x01\x02\x03\x01",
                                                                                             ["a", "a"])
    import numpy as np

    slots, values = np.full(16, -1, dtype=np.int32), np.array([5, 9], dtype=np.int64)
    slots[3], slots[4] = 0, 1
    keys, out = np.array([5, 9, 6], dtype=np.int64), np.zeros(3, dtype=np.int64)
    for args, err in (((slots.astype(np.int64), values, keys, 4, out), TypeError),  # slots not int32
                      ((slots, values.astype(np.int32), keys, 4, out), TypeError),
                      ((slots, values, keys, 4, out[:2]), ValueError),  # one out per key
                      ((slots, values, keys, 4, out.astype(np.int32)), TypeError),
                      ((slots, values, keys, 5, out), ValueError),  # 2**bits slots
                      ((slots, values, keys, 0, out), ValueError),
                      ((slots, values, keys, 4, np.zeros(3, dtype=np.int64)[::-1]), (TypeError, ValueError, BufferError)),
                      ((slots, values, keys, 4, b"\0" * 24), (TypeError, BufferError)),  # read-only out
                      ((slots, values, keys, 4), TypeError)):
        with pytest.raises(err):
            _cscan.index_find(*args)
    one = b"\x01" + b"\0" * 7  # a row of a 3-token reference: token 0
    ids = np.array([0, 2], dtype=np.int32).tobytes()  # "a" at 0, "c" at 2
    rows = one + b"\x04" + b"\0" * 7
    for args in ((("a",), {"a": 0}, ids, rows, 3), (["a"], [("a", 0)], ids, rows, 3), (["a"], {"a": 0}, ids[:6], rows, 3),
                 (["a"], {"a": 0}, ids, rows[:8], 3), (["a"], {"a": 0}, ids, rows, 65), (["a"], {"a": 0}, ids, rows, "3"),
                 (["a"], {"a": 0}, ids, rows, -1), (["a"], {"a": "0"}, ids, rows, 3), (["a"], {"a": 0}, list(ids), rows, 3)):
        with pytest.raises((TypeError, ValueError)):
            _cscan.lcs(*args)
    assert _cscan.lcs(["b", "a", "c"], {"a": 0, "b": 1, "c": 2}, ids, rows, 3) == 2  # "b" is no token of the reference
    assert _cscan.lcs([], {}, ids, rows, 3) == 0 and _cscan.lcs(["a"], {"a": 0}, b"", b"", 0) == 0
    draws, w = np.array([[0, 2, 2], [1, 1, 1]], dtype=np.int32), np.zeros((2, 3), dtype=np.float32)
    _cscan.count_rows(draws, w)
    assert w.tolist() == [[1, 0, 2], [0, 3, 0]]
    for args, err in (((draws.astype(np.int64), w), TypeError), ((draws, w.astype(np.float64)), TypeError),
                      ((draws, w[:1]), TypeError), ((draws, w.T.copy()[:2, :2]), TypeError),
                      ((draws + 1, np.zeros((2, 3), dtype=np.float32)), ValueError),  # a draw outside [0, n)
                      ((draws, np.zeros((2, 3), dtype=np.float32)[:, ::-1]), (TypeError, ValueError, BufferError))):
        with pytest.raises(err):
            _cscan.count_rows(*args)
    bad = slots.copy()
    bad[3] = 7  # a slot past values
    with pytest.raises(ValueError):
        _cscan.index_find(bad, values, np.arange(16, dtype=np.int64), 4, np.zeros(16, dtype=np.int64))


def _readings(items, texts) -> list:
    reader = AnswerReader(build_lexicon(load_knowledge_base()))
    out = []
    for k, text in enumerate(texts):
        it = items[k % len(items)]
        r = reader.read(it.question, text, it.facts, it.images)
        out.append([sorted(x) if isinstance(x, frozenset) else x for x in dataclasses.astuple(r)])
    return out


_PROBE = """
import json, sys
sys.path.insert(0, {tests!r})
import test_verify_cscan as T
from grok.verify import scan
assert not scan.COMPILED
bench, _ = T._bench_and_reader()
items = list(bench.items.values())
texts = json.loads(sys.stdin.read())
print(json.dumps(T._readings(items, texts)))
"""


@needs_cext
def test_readings_with_and_without_the_extension_are_identical(setup):
    """Every reading of the benchmark's answers, other studies' answers and generated texts: this process (compiled)
    against a process with ``GROK_NO_CEXT=1`` (the ``re`` path)."""
    bench, reader = setup
    items = list(bench.items.values())
    rng = random.Random(3)
    texts = [it.reference for it in items] + [rng.choice(items).reference for _ in items]
    texts += [t.upper() for t in texts[:100]] + _texts(reader, bench, 400, 4)[-460:]
    env = {**os.environ, "GROK_NO_CEXT": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(tests=str(ROOT / "tests"))], input=json.dumps(texts),
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = json.loads(proc.stdout)
    got = json.loads(json.dumps(_readings(items, texts)))
    assert len(got) == len(want) == len(texts)
    for text, g, w in zip(texts, got, want, strict=True):
        assert g == w, text


def test_extension_is_built_where_a_compiler_is():
    """``pip install`` (editable or not) builds the extension when a C compiler is found (setup.py)."""
    if os.environ.get("GROK_NO_CEXT", "") not in ("", "0"):
        pytest.skip("GROK_NO_CEXT is set: the re path is forced")
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}): the package runs the re path")
    assert scan.COMPILED, "grok.verify._cscan is not built: run pip install -e . (or python setup.py build_ext --inplace)"
