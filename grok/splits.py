"""Patient-level splits, duplicate removal and decontamination.

* :func:`assign_splits` — deterministic train/validation/test by patient, stratified by label: no
  patient is ever in two splits, the assignment depends only on the seed and the patients (not on
  row order), and each label's patients are divided by the ratios (largest remainder).
* :func:`dedup` — exact duplicates (normalised text) and near duplicates (MinHash LSH over word
  shingles, datasketch) of instruction texts; the first row (by id) of each group is kept.
* :func:`decontaminate` — removes train rows that are near duplicates of any held-out row.

Every removed row is returned with the id of the row it duplicates, so callers can account for it.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

import pandas as pd

SPLITS = ("train", "validation", "test")


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def assign_splits(patients: pd.DataFrame, *, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                  patient_col: str = "patient_id", label_col: str = "label") -> dict[str, str]:
    """Map every patient to a split.

    Parameters
    ----------
    patients : DataFrame with one or more rows per patient (e.g. one per eye); the stratum of a patient
        is the sorted set of its labels.
    ratios : train, validation, test fractions (must sum to 1).
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    strata: dict[str, list[str]] = defaultdict(list)
    for pid, grp in patients.groupby(patient_col):
        strata["|".join(sorted(set(map(str, grp[label_col]))))].append(str(pid))
    # Systematic allocation: walk the strata (each in a seeded order) and give every patient to the
    # split furthest below its quota so far. Overall ratios hold to within one patient, and every
    # stratum is spread over the splits in proportion, even when strata are smaller than 1/ratio.
    out: dict[str, str] = {}
    counts = dict.fromkeys(SPLITS, 0)
    total = 0
    for stratum in sorted(strata):
        for p in sorted(strata[stratum], key=lambda p: _rank(seed, p)):
            total += 1
            split = max(SPLITS, key=lambda s: (ratios[SPLITS.index(s)] * total - counts[s], -SPLITS.index(s)))
            counts[split] += 1
            out[p] = split
    return out


_WS = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    return _WS.sub(" ", text.lower()).strip()


def _shingles(text: str, k: int = 5) -> set[str]:
    words = normalise_text(text).split()
    if len(words) < k:
        return {" ".join(words)}
    return {" ".join(words[i:i + k]) for i in range(len(words) - k + 1)}


def _minhash(text: str, num_perm: int):
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    m.update_batch([s.encode() for s in _shingles(text)])
    return m


def dedup_texts(items: Iterable[tuple[str, str]], *, threshold: float = 0.9, num_perm: int = 128,
                ) -> tuple[list[str], list[dict[str, str]]]:
    """:func:`dedup` of ``(id, text)`` pairs given in id order, one at a time: only the index (a hash per kept
    text and its MinHash LSH bands) is kept, not the texts. Returns (kept ids, removed ``{id, duplicate_of,
    reason}``)."""
    from datasketch import MinHashLSH

    seen_exact: dict[str, str] = {}
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: list[str] = []
    removed: list[dict[str, str]] = []
    for rid, text in items:
        h = hashlib.sha256(normalise_text(text).encode()).hexdigest()
        if h in seen_exact:
            removed.append({"id": rid, "duplicate_of": seen_exact[h], "reason": "exact duplicate"})
            continue
        mh = _minhash(text, num_perm)
        hits = lsh.query(mh)
        if hits:
            removed.append({"id": rid, "duplicate_of": sorted(hits)[0],
                            "reason": f"near duplicate (Jaccard >= {threshold})"})
            continue
        seen_exact[h] = rid
        lsh.insert(rid, mh)
        kept.append(rid)
    return kept, removed


def decontaminate_texts(train: Iterable[tuple[str, str]], held_out: Iterable[tuple[str, str]], *,
                        threshold: float = 0.9, num_perm: int = 128) -> tuple[list[str], list[dict[str, str]]]:
    """:func:`decontaminate` of ``(id, text)`` pairs, one at a time (an index of the held-out texts is kept,
    not the texts). Returns (kept train ids, removed ``{id, duplicate_of, reason}``)."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    exact = {}
    for rid, text in held_out:
        lsh.insert(rid, _minhash(text, num_perm))
        exact[hashlib.sha256(normalise_text(text).encode()).hexdigest()] = rid
    kept: list[str] = []
    removed: list[dict[str, str]] = []
    for rid, text in train:
        h = hashlib.sha256(normalise_text(text).encode()).hexdigest()
        hits = [exact[h]] if h in exact else lsh.query(_minhash(text, num_perm))
        if hits:
            removed.append({"id": rid, "duplicate_of": sorted(hits)[0], "reason": "contaminates a held-out split"})
        else:
            kept.append(rid)
    return kept, removed


def dedup(df: pd.DataFrame, *, text_col: str = "text", id_col: str = "id", threshold: float = 0.9,
          num_perm: int = 128) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove exact and near duplicates; returns (kept, removed) with ``duplicate_of`` and ``reason``."""
    df = df.sort_values(id_col, kind="stable")
    _kept, removed = dedup_texts(zip(df[id_col], df[text_col]), threshold=threshold, num_perm=num_perm)
    return _split_off(df, removed, id_col)


def decontaminate(train: pd.DataFrame, held_out: pd.DataFrame, *, text_col: str = "text", id_col: str = "id",
                  threshold: float = 0.9, num_perm: int = 128) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop train rows that are near duplicates of a held-out row; returns (kept, removed)."""
    _kept, removed = decontaminate_texts(zip(train[id_col], train[text_col]), zip(held_out[id_col], held_out[text_col]),
                                         threshold=threshold, num_perm=num_perm)
    return _split_off(train, removed, id_col)


def _split_off(df: pd.DataFrame, removed: list[dict[str, str]], id_col: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of ``df`` not removed, removed rows with every column plus ``duplicate_of`` and ``reason``)."""
    why = {r["id"]: r for r in removed}
    gone = df[id_col].isin(why)
    rem = df[gone.to_numpy()]
    rem = pd.DataFrame([{**row, "duplicate_of": why[row[id_col]]["duplicate_of"], "reason": why[row[id_col]]["reason"]}
                        for row in rem.to_dict("records")]) if len(rem) else pd.DataFrame()
    return df[~gone.to_numpy()], rem
