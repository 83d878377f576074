"""Patient-level splits, duplicate removal and decontamination.

* :func:`assign_splits` — deterministic train/validation/test by patient, stratified by label: no
  patient is ever in two splits, the assignment depends only on the seed and the patients (not on
  row order), and each label's patients are divided by the ratios (largest remainder).
* :class:`PatientSplits` — that mapping held as two arrays, for publication (an archive's worth of patients).
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
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


def sorted_positions(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Where each of ``keys`` (bytes) is in ``ids`` (sorted fixed-width bytes, e.g. ``np.array(..., dtype=bytes)``),
    -1 where it is not: a binary search per key, so an archive's ids are held as one array, not as Python strings
    (:class:`PatientSplits`, ``grok.publish.StudyRecords``)."""
    if not len(ids) or not len(keys):
        return np.full(len(keys), -1, dtype=np.int64)
    if keys.dtype.itemsize <= ids.dtype.itemsize:
        keys = keys.astype(ids.dtype)
    at = np.minimum(np.searchsorted(ids, keys), len(ids) - 1)
    return np.where(ids[at] == keys, at, -1)


class PatientSplits(Mapping):
    """:func:`assign_splits`' patient -> split mapping held as two arrays, for an archive's worth of patients: the
    patient ids sorted, as fixed-width UTF-8 bytes (found by binary search), and a one-byte code into
    :data:`SPLITS` each. The dict held a Python string and a slot per patient for the whole of publication
    (about 100 bytes a patient; issue 22). Ids that are not strings are looked up by their ``str``."""

    def __init__(self, split_of: Mapping[Any, str]):
        keys = np.array([str(k).encode() for k in split_of], dtype=bytes)
        codes = np.array([SPLITS.index(v) for v in split_of.values()], dtype=np.uint8)
        order = np.argsort(keys, kind="stable")
        self._ids, self._codes = keys[order], codes[order]

    def _codes_of(self, keys: np.ndarray) -> np.ndarray:
        """The split code of each of ``keys`` (bytes), -1 where the patient has none."""
        at = sorted_positions(self._ids, keys)
        out = np.full(len(keys), -1, dtype=np.int8)
        out[at >= 0] = self._codes[at[at >= 0]]
        return out

    def __getitem__(self, patient: Any) -> str:
        code = self._codes_of(np.array([str(patient).encode()], dtype=bytes))[0]
        if code < 0:
            raise KeyError(patient)
        return SPLITS[code]

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def of(self, patients: pd.Series) -> pd.Series:
        """The split of each of ``patients`` (NaN where a patient has none), looked up once per distinct patient:
        what ``patients.map(dict)`` gives, without the dict."""
        cat = patients if isinstance(patients.dtype, pd.CategoricalDtype) else patients.astype("category")
        names = cat.cat.categories
        codes = self._codes_of(np.array([str(c).encode() for c in names], dtype=bytes)) if len(names) else \
            np.zeros(0, np.int8)
        per_row = np.asarray(cat.cat.codes)
        code = np.where(per_row >= 0, codes[np.maximum(per_row, 0)] if len(codes) else -1, -1)
        out = np.array([*SPLITS, np.nan], dtype=object)[np.where(code >= 0, code, len(SPLITS))]
        return pd.Series(out, index=patients.index, name=patients.name)


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
    the process holds a bounded page cache (:data:`INDEX_CACHE_KIB`), not the index.

    Every inserted row is appended to ``sigs`` (its id, text hash and band bytes, read back only to confirm a
    collision). The random-access tables are small: ``bands`` maps (band number, 64-bit hash of datasketch's
    band key ``bytes(hashvalues[start:end].byteswap().data)``) to rows, ``exact`` a 64-bit prefix of the text
    hash to rows; a match counts only when the stored bytes are equal, so results are exact. Each band key
    keeps only its smallest id, which is all a caller that names ``sorted(hits)[0]`` needs (the smallest hit
    is the smallest of the bands' smallest). A context manager: the file is in a temporary folder under
    ``tmp`` (default: the system's), always removed."""

    def __init__(self, threshold: float, num_perm: int, tmp: Path | None = None):
        self.num_perm = num_perm
        self.ranges = _lsh_bands(threshold, num_perm)
        self.tmp = tmp
        self.n = 0
        where = " OR ".join(["(b.band = ? AND b.h = ?)"] * len(self.ranges))
        self._query = f"SELECT b.band, s.id, s.sig FROM bands b JOIN sigs s ON s.seq = b.seq WHERE {where}"

    def __enter__(self) -> _DiskLSH:
        self._dir = tempfile.TemporaryDirectory(dir=self.tmp, prefix=".dedup-index-")
        try:
            self.db = sqlite3.connect(Path(self._dir.name) / "index.sqlite", isolation_level=None)
            for pragma in ("journal_mode = OFF", "synchronous = OFF", "locking_mode = EXCLUSIVE",
                           f"cache_size = -{INDEX_CACHE_KIB}", "temp_store = FILE"):
                self.db.execute(f"PRAGMA {pragma}")
            for table in ("sigs (seq INTEGER PRIMARY KEY, id, sha BLOB, sig BLOB)",
                          "bands (band INTEGER, h INTEGER, seq INTEGER, PRIMARY KEY (band, h, seq)) WITHOUT ROWID",
                          "exact (h INTEGER, seq INTEGER, PRIMARY KEY (h, seq)) WITHOUT ROWID",
                          "keys (id PRIMARY KEY) WITHOUT ROWID"):
                self.db.execute(f"CREATE TABLE {table}")
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

    def signature(self, text: str) -> tuple[bytes, list[int]]:
        """(the band keys' bytes end to end, a 64-bit hash of each band key)."""
        hv = _minhash(text, self.num_perm).hashvalues
        raw, size = hv.byteswap().tobytes(), hv.itemsize
        raw = raw[: self.ranges[-1][1] * size]
        return raw, [_h64(hashlib.blake2b(raw[a * size:b * size], digest_size=8).digest()) for a, b in self.ranges]

    def _band(self, raw: bytes, i: int) -> bytes:
        (a, b), size = self.ranges[i], len(raw) // self.ranges[-1][1]
        return raw[a * size:b * size]

    def query(self, sig: tuple[bytes, list[int]]) -> list[Any]:
        """The smallest id under each band key shared with ``sig`` (the smallest of them is the smallest hit)."""
        raw, hs = sig
        params = [v for i, h in enumerate(hs) for v in (i, h)]
        return [_dec_id(v) for i, v, other in self.db.execute(self._query, params)
                if self._band(other, i) == self._band(raw, i)]

    def insert(self, rid: Any, sig: tuple[bytes, list[int]], sha: bytes, *, fresh: bool = False) -> None:
        """Add ``rid`` (its band keys ``sig`` and text hash ``sha``); ``fresh``: the caller's query found none of
        its band keys."""
        enc = _enc_id(rid)
        try:
            self.db.execute("INSERT INTO keys VALUES (?)", (enc,))
        except sqlite3.IntegrityError:
            raise ValueError(f"The given key already exists: id {rid!r} is given twice") from None  # as MinHashLSH
        seq, self.n = self.n, self.n + 1
        raw, hs = sig
        self.db.execute("INSERT INTO sigs VALUES (?, ?, ?, ?)", (seq, enc, sha, raw))
        self.db.execute("INSERT INTO exact VALUES (?, ?)", (_h64(sha), seq))
        if fresh:
            self.db.executemany("INSERT INTO bands VALUES (?, ?, ?)", [(i, h, seq) for i, h in enumerate(hs)])
            return
        for i, h in enumerate(hs):
            cur = self.db.execute("SELECT b.seq, s.id, s.sig FROM bands b JOIN sigs s ON s.seq = b.seq "
                                  "WHERE b.band = ? AND b.h = ?", (i, h)).fetchall()
            same = [(old, _dec_id(v)) for old, v, other in cur if self._band(other, i) == self._band(raw, i)]
            if not same:
                self.db.execute("INSERT INTO bands VALUES (?, ?, ?)", (i, h, seq))
            elif rid < same[0][1]:
                self.db.execute("UPDATE bands SET seq = ? WHERE band = ? AND h = ? AND seq = ?", (seq, i, h, same[0][0]))

    def exact(self, sha: bytes) -> tuple[Any] | None:
        """(the id of the last row inserted with text hash ``sha``,), or None."""
        for v, other in self.db.execute("SELECT s.id, s.sha FROM exact e JOIN sigs s ON s.seq = e.seq WHERE e.h = ? "
                                        "ORDER BY e.seq DESC", (_h64(sha),)):
            if other == sha:
                return (_dec_id(v),)
        return None


def _h64(digest: bytes) -> int:
    """A signed 64-bit integer (SQLite's) from the first 8 bytes of a digest."""
    return int.from_bytes(digest[:8], "big", signed=True)


def _text_hash(text: str) -> bytes:
    return hashlib.sha256(normalise_text(text).encode()).digest()


def dedup_texts(items: Iterable[tuple[Any, str]], *, threshold: float = 0.9, num_perm: int = 128,
                tmp: Path | None = None, kept_ids: bool = True) -> tuple[list[Any] | None, list[dict[str, Any]]]:
    """:func:`dedup` of ``(id, text)`` pairs given in id order, one at a time: only the index (a hash per kept
    text and its MinHash LSH bands) is kept, not the texts, and the index is a SQLite file in a temporary
    folder under ``tmp`` (removed afterwards), so memory does not grow with the rows. The results are those of
    an in-memory datasketch ``MinHashLSH`` of the kept rows: a near duplicate names the smallest kept id that
    shares a band with it. Returns (kept ids, removed ``{id, duplicate_of, reason}``); with ``kept_ids=False`` the
    kept ids are not listed (None: they are the items not removed), so the caller holds only the few removed."""
    kept: list[Any] | None = [] if kept_ids else None
    removed: list[dict[str, Any]] = []
    with _DiskLSH(threshold, num_perm, tmp) as index:
        for rid, text in items:
            h = _text_hash(text)
            if (first := index.exact(h)) is not None:
                removed.append({"id": rid, "duplicate_of": first[0], "reason": "exact duplicate"})
                continue
            sig = index.signature(text)
            if hits := index.query(sig):
                removed.append({"id": rid, "duplicate_of": sorted(hits)[0],
                                "reason": f"near duplicate (Jaccard >= {threshold})"})
                continue
            index.insert(rid, sig, h, fresh=True)
            if kept is not None:
                kept.append(rid)
    return kept, removed


def decontaminate_texts(train: Iterable[tuple[Any, str]], held_out: Iterable[tuple[Any, str]], *,
                        threshold: float = 0.9, num_perm: int = 128, tmp: Path | None = None, kept_ids: bool = True,
                        ) -> tuple[list[Any] | None, list[dict[str, Any]]]:
    """:func:`decontaminate` of ``(id, text)`` pairs, one at a time (an index of the held-out texts is kept, in
    a SQLite file under ``tmp`` as in :func:`dedup_texts`, not the texts). A train row whose normalised text is
    a held-out row's names the last such held-out row, otherwise the smallest held-out id sharing a band.
    Returns (kept train ids, removed ``{id, duplicate_of, reason}``); ``kept_ids=False``: as in :func:`dedup_texts`."""
    kept: list[Any] | None = [] if kept_ids else None
    removed: list[dict[str, Any]] = []
    with _DiskLSH(threshold, num_perm, tmp) as index:
        for rid, text in held_out:
            index.insert(rid, index.signature(text), _text_hash(text))
        for rid, text in train:
            first = index.exact(_text_hash(text))
            hits = [first[0]] if first is not None else index.query(index.signature(text))
            if hits:
                removed.append({"id": rid, "duplicate_of": sorted(hits)[0], "reason": "contaminates a held-out split"})
            elif kept is not None:
                kept.append(rid)
    return kept, removed


def dedup(df: pd.DataFrame, *, text_col: str = "text", id_col: str = "id", threshold: float = 0.9,
          num_perm: int = 128) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Remove exact and near duplicates; returns (kept, removed) with ``duplicate_of`` and ``reason``."""
    df = df.sort_values(id_col, kind="stable")
    _, removed = dedup_texts(zip(df[id_col], df[text_col]), threshold=threshold, num_perm=num_perm, kept_ids=False)
    return _split_off(df, removed, id_col)


def decontaminate(train: pd.DataFrame, held_out: pd.DataFrame, *, text_col: str = "text", id_col: str = "id",
                  threshold: float = 0.9, num_perm: int = 128) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop train rows that are near duplicates of a held-out row; returns (kept, removed)."""
    _, removed = decontaminate_texts(zip(train[id_col], train[text_col]), zip(held_out[id_col], held_out[text_col]),
                                     threshold=threshold, num_perm=num_perm, kept_ids=False)
    return _split_off(train, removed, id_col)


def _split_off(df: pd.DataFrame, removed: list[dict[str, str]], id_col: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of ``df`` not removed, removed rows with every column plus ``duplicate_of`` and ``reason``)."""
    why = {r["id"]: r for r in removed}
    gone = df[id_col].isin(why)
    rem = df[gone.to_numpy()]
    rem = pd.DataFrame([{**row, "duplicate_of": why[row[id_col]]["duplicate_of"], "reason": why[row[id_col]]["reason"]}
                        for row in rem.to_dict("records")]) if len(rem) else pd.DataFrame()
    return df[~gone.to_numpy()], rem
