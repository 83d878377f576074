"""The on-disk duplicate index of grok.splits against datasketch's in-memory MinHashLSH (the implementation it
replaced, kept as the reference in benchmarks/dedup_index.py): the same kept ids and removed rows on texts with exact and near
duplicates and held-out contamination, and memory that does not grow with the rows."""

from __future__ import annotations

import random

import pytest

from benchmarks import dedup_index
from benchmarks.dedup_index import ref_decontaminate_texts, ref_dedup_texts
from grok import splits
from grok.splits import decontaminate_texts, dedup_texts
from tests.test_scale_memory import _peak

_VOCAB = [f"w{i}" for i in range(400)] + ["fluid", "drusen", "macula", "RNFL", "thinning", "cup-to-disc", "um"]


def _corpus(seed: int, n_families: int = 40, per_family: int = 8, words: int = 120):
    """(id, text) pairs: families of variants of a base text (0-8 words changed: exact copies with other case
    and spacing, near duplicates and texts just below the threshold), unrelated texts, ids shuffled so that
    the input order is not the id order."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n_families):
        base = [rng.choice(_VOCAB) for _ in range(words)]
        texts.append(" ".join(base))
        for _ in range(per_family):
            v = list(base)
            for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 4, 6, 8])):
                v[rng.randrange(words)] = rng.choice(_VOCAB)
            t = " ".join(v)
            texts.append(rng.choice([t, t.upper(), "  " + t.replace(" ", "\n  ")]))
    texts += [" ".join(rng.choice(_VOCAB) for _ in range(rng.choice([3, 20, words]))) for _ in range(60)]
    texts += ["", "   ", "short text"]
    rng.shuffle(texts)
    ids = [f"r{i:05d}" for i in rng.sample(range(100_000), len(texts))]
    return list(zip(ids, texts))


@pytest.mark.parametrize(("seed", "threshold"), [(0, 0.9), (1, 0.9), (2, 0.8), (3, 0.7), (4, 0.5)])
def test_dedup_same_as_in_memory_datasketch(seed, threshold, tmp_path):
    items = _corpus(seed)
    multi: list[str] = []
    ref = ref_dedup_texts(items, threshold=threshold, multi=multi)
    new = dedup_texts(iter(items), threshold=threshold, tmp=tmp_path)
    assert new == ref
    reasons = {r["reason"].split(" ")[0] for r in ref[1]}
    assert reasons == {"exact", "near"} and len(ref[0]) > 40  # both kinds removed, most families kept once
    if threshold <= 0.8:
        assert multi  # rows that hit several kept rows: the smallest id is named
    assert list(tmp_path.iterdir()) == []  # the index is removed


@pytest.mark.parametrize(("seed", "threshold"), [(5, 0.9), (6, 0.7), (7, 0.5)])
def test_decontaminate_same_as_in_memory_datasketch(seed, threshold, tmp_path):
    items = _corpus(seed)
    held, train = items[: len(items) // 3], items[len(items) // 3:]
    held += [(f"h{i}", text) for i, (_, text) in enumerate(held[:20])]  # held-out copies: the last one is named
    multi: list[str] = []
    ref = ref_decontaminate_texts(iter(train), iter(held), threshold=threshold, multi=multi)
    new = decontaminate_texts(iter(train), iter(held), threshold=threshold, tmp=tmp_path)
    assert new == ref
    assert 0 < len(ref[1]) < len(train) and multi
    assert list(tmp_path.iterdir()) == []


def test_other_id_types_and_num_perm(tmp_path):
    corpus = _corpus(8, n_families=10)
    items = [(i, text) for i, (_, text) in zip(random.Random(8).sample(range(10_000), len(corpus)), corpus)]
    assert dedup_texts(items, num_perm=64, threshold=0.6, tmp=tmp_path) == ref_dedup_texts(items, num_perm=64, threshold=0.6)
    assert decontaminate_texts(items[50:], items[:50], num_perm=32, tmp=tmp_path) == \
        ref_decontaminate_texts(items[50:], items[:50], num_perm=32)


def test_errors_as_datasketch_and_index_removed(tmp_path):
    dup_id = [("a", "one text about the macula and the fovea today"), ("a", "another text entirely, the optic disc")]
    with pytest.raises(ValueError, match="key already exists"):
        ref_dedup_texts(dup_id)
    with pytest.raises(ValueError, match="key already exists"):
        dedup_texts(dup_id, tmp=tmp_path)
    with pytest.raises(ValueError, match="key already exists"):
        decontaminate_texts([], dup_id, tmp=tmp_path)
    with pytest.raises(ValueError, match="threshold"):
        dedup_texts([], threshold=1.5, tmp=tmp_path)
    assert list(tmp_path.iterdir()) == []  # removed after an error too


def test_index_memory_does_not_grow_with_rows(tmp_path, monkeypatch):
    """Python memory of dedup over 2,000 and 8,000 distinct short texts: the in-memory index grows by its
    entries (about 2 KB a row), the on-disk one by the returned ids only (SQLite's page cache, bounded and here
    made small, is outside tracemalloc; its bound is what the index costs). The signatures are computed before
    tracing (tracemalloc makes datasketch's MinHash ten times slower) and looked up by text."""
    monkeypatch.setattr(splits, "INDEX_CACHE_KIB", 256)
    rng = random.Random(9)
    corpus = [(f"id{i:06d}", " ".join(rng.choice(_VOCAB) for _ in range(8))) for i in range(8000)]
    signature = {text: splits._minhash(text, 128) for _, text in corpus}
    monkeypatch.setattr(splits, "_minhash", lambda text, num_perm: signature[text])
    monkeypatch.setattr(dedup_index, "_minhash", lambda text, num_perm: signature[text])
    grown = {}
    for name, fn in (("memory", ref_dedup_texts), ("disk", lambda items: dedup_texts(items, tmp=tmp_path))):
        peaks = {n: _peak(lambda n=n, fn=fn: fn(iter(corpus[:n]))) for n in (2000, 8000)}
        grown[name] = peaks[8000] - peaks[2000]
    assert grown["disk"] < 0.15 * grown["memory"], grown


@pytest.mark.parametrize("seed", [10, 11])
def test_same_results_when_the_index_hashes_collide(seed, tmp_path, monkeypatch):
    """The index's tables are keyed by 64-bit hashes of the band keys and texts, confirmed against the stored
    bytes: with a 2-bit hash (every lookup collides) the results are still datasketch's."""
    monkeypatch.setattr(splits, "_h64", lambda digest: digest[0] % 4)
    items = _corpus(seed, n_families=15)
    assert dedup_texts(items, threshold=0.7, tmp=tmp_path) == ref_dedup_texts(items, threshold=0.7)
    held = items[:40] + [("h-copy", items[0][1])]
    assert decontaminate_texts(items[40:], held, threshold=0.7, tmp=tmp_path) == \
        ref_decontaminate_texts(items[40:], held, threshold=0.7)
