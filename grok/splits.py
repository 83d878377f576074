"""Patient-level splits, duplicate removal and decontamination.

* :func:`assign_splits` — deterministic train/validation/test by patient, stratified by label: no
  patient is ever in two splits, the assignment depends only on the seed and the patients (not on
  row order), and each label's patients are divided by the ratios (largest remainder).
* :func:`dedup` — exact duplicates (normalised text) and near duplicates (MinHash LSH over word
  shingles, datasketch's signatures and banding) of instruction texts; the first row (by id) of each group
  is kept. The index is a SQLite file in a temporary folder, so memory does not grow with the rows.
* :func:`decontaminate` — removes train rows that are near duplicates of any held-out row.

Every removed row is returned with the id of the row it duplicates, so callers can account for it.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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


#: SQLite's page cache for the on-disk duplicate index (KiB): what the index holds in memory, whatever the rows.
INDEX_CACHE_KIB = 32 * 1024


def _lsh_bands(threshold: float, num_perm: int) -> list[tuple[int, int]]:
    """datasketch's bands for ``MinHashLSH(threshold, num_perm)`` (its ``_optimal_param``, weights 0.5/0.5) as
    (start, end) ranges of the hash values; the same ``ValueError`` for bad parameters."""
    from datasketch import MinHashLSH

    return list(MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges)


def _enc_id(rid: Any) -> str | bytes:
    return rid if isinstance(rid, str) else pickle.dumps(rid, protocol=5)  # any other id type, as it was


def _dec_id(v: str | bytes) -> Any:
    return pickle.loads(v) if isinstance(v, bytes) else v


class _DiskLSH:
    """datasketch's ``MinHashLSH`` (dict storage) and a table of exact-text hashes, kept in a SQLite file so that
    the process holds a bounded page cache (:data:`INDEX_CACHE_KIB`), not the index. A band's key is
    datasketch's (``bytes(hashvalues[start:end].byteswap().data)``; datasketch has a table per band, here the
    band number prefixes the key); each key keeps the smallest id inserted under it, which is all a caller that
    names ``sorted(hits)[0]`` needs (the smallest hit is the smallest of the bands' smallest). A context
    manager: the file is in a temporary folder under ``tmp`` (default: the system's), always removed."""

    def __init__(self, threshold: float, num_perm: int, tmp: Path | None = None):
        self.num_perm = num_perm
        self.ranges = _lsh_bands(threshold, num_perm)
        self.prefix = [i.to_bytes(2, "big") for i in range(len(self.ranges))]
        self.tmp = tmp
        self._query = f"SELECT id FROM bands WHERE key IN ({','.join('?' * len(self.ranges))})"

    def __enter__(self) -> _DiskLSH:
        self._dir = tempfile.TemporaryDirectory(dir=self.tmp, prefix=".dedup-index-")
        try:
            self.db = sqlite3.connect(Path(self._dir.name) / "index.sqlite", isolation_level=None)
            for pragma in ("journal_mode = OFF", "synchronous = OFF", "locking_mode = EXCLUSIVE",
                           f"cache_size = -{INDEX_CACHE_KIB}", "temp_store = FILE"):
                self.db.execute(f"PRAGMA {pragma}")
            for table in ("bands (key BLOB PRIMARY KEY, id)", "exact (h BLOB PRIMARY KEY, id)", "keys (id PRIMARY KEY)"):
                self.db.execute(f"CREATE TABLE {table} WITHOUT ROWID")
            self.db.execute("BEGIN")  # one transaction, never committed: the file is thrown away
        except BaseException:
            self._dir.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.db.close()
        finally:
            self._dir.cleanup()

    def bands(self, text: str) -> list[bytes]:
        hv = _minhash(text, self.num_perm).hashvalues
        raw, size = hv.byteswap().tobytes(), hv.itemsize
        return [p + raw[a * size:b * size] for p, (a, b) in zip(self.prefix, self.ranges)]

    def query(self, keys: list[bytes]) -> list[Any]:
        """The smallest id under each colliding band key (so the smallest of them is the smallest hit)."""
        return [_dec_id(v) for (v,) in self.db.execute(self._query, keys)]

    def insert(self, rid: Any, keys: list[bytes], *, fresh: bool = False) -> None:
        """Add ``rid`` under its band keys (``fresh``: the caller's query found none of them)."""
        enc = _enc_id(rid)
        try:
            self.db.execute("INSERT INTO keys VALUES (?)", (enc,))
        except sqlite3.IntegrityError:
            raise ValueError("The given key already exists") from None  # as MinHashLSH.insert
        if fresh:
            self.db.executemany("INSERT INTO bands VALUES (?, ?)", [(key, enc) for key in keys])
            return
        for key in keys:
            row = self.db.execute("SELECT id FROM bands WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.db.execute("INSERT INTO bands VALUES (?, ?)", (key, enc))
            elif rid < _dec_id(row[0]):
                self.db.execute("UPDATE bands SET id = ? WHERE key = ?", (enc, key))

    def exact(self, h: bytes) -> tuple[Any] | None:
        """(the id stored for the text hash ``h``,), or None."""
        row = self.db.execute("SELECT id FROM exact WHERE h = ?", (h,)).fetchone()
        return None if row is None else (_dec_id(row[0]),)

    def set_exact(self, h: bytes, rid: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO exact VALUES (?, ?)", (h, _enc_id(rid)))


def _text_hash(text: str) -> bytes:
    return hashlib.sha256(normalise_text(text).encode()).digest()


def dedup_texts(items: Iterable[tuple[Any, str]], *, threshold: float = 0.9, num_perm: int = 128,
                tmp: Path | None = None) -> tuple[list[Any], list[dict[str, Any]]]:
    """:func:`dedup` of ``(id, text)`` pairs given in id order, one at a time: only the index (a hash per kept
    text and its MinHash LSH bands) is kept, not the texts, and the index is a SQLite file in a temporary
    folder under ``tmp`` (removed afterwards), so memory does not grow with the rows. The results are those of
    an in-memory datasketch ``MinHashLSH`` of the kept rows: a near duplicate names the smallest kept id that
    shares a band with it. Returns (kept ids, removed ``{id, duplicate_of, reason}``)."""
    kept: list[Any] = []
    removed: list[dict[str, Any]] = []
    with _DiskLSH(threshold, num_perm, tmp) as index:
        for rid, text in items:
            h = _text_hash(text)
            if (first := index.exact(h)) is not None:
                removed.append({"id": rid, "duplicate_of": first[0], "reason": "exact duplicate"})
                continue
            keys = index.bands(text)
            if hits := index.query(keys):
                removed.append({"id": rid, "duplicate_of": sorted(hits)[0],
                                "reason": f"near duplicate (Jaccard >= {threshold})"})
                continue
            index.insert(rid, keys, fresh=True)
            index.set_exact(h, rid)
            kept.append(rid)
    return kept, removed


def decontaminate_texts(train: Iterable[tuple[Any, str]], held_out: Iterable[tuple[Any, str]], *,
                        threshold: float = 0.9, num_perm: int = 128, tmp: Path | None = None,
                        ) -> tuple[list[Any], list[dict[str, Any]]]:
    """:func:`decontaminate` of ``(id, text)`` pairs, one at a time (an index of the held-out texts is kept, in
    a SQLite file under ``tmp`` as in :func:`dedup_texts`, not the texts). A train row whose normalised text is
    a held-out row's names the last such held-out row, otherwise the smallest held-out id sharing a band.
    Returns (kept train ids, removed ``{id, duplicate_of, reason}``)."""
    kept: list[Any] = []
    removed: list[dict[str, Any]] = []
    with _DiskLSH(threshold, num_perm, tmp) as index:
        for rid, text in held_out:
            index.insert(rid, index.bands(text))
            index.set_exact(_text_hash(text), rid)
        for rid, text in train:
            first = index.exact(_text_hash(text))
            hits = [first[0]] if first is not None else index.query(index.bands(text))
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
