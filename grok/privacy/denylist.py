"""Deny lists of known identifiers, held as keyed hashes only, and the matcher that counts them.

A :class:`DenyList` never holds an identifier. Each entry is HMAC-SHA256 under the pseudonym secret
(``GROK_PSEUDONYM_KEY``, see :mod:`grok.ingest.deid`) of a *normalised token n-gram*: the
identifier is Unicode-normalised (NFKD, accents dropped), case-folded and split into tokens at
every character that is not a letter or a digit and at every letter/digit boundary, so
``"WINTERBOTTOM^ETHELINDA"``, ``"Winterbottom, Ethelinda"`` and ``"winterbottom  ethelinda"`` are
one entry, and ``"MRN1234567"`` also matches ``"MRN 1234567"``. Person names get their reversed
order too (``GIVEN FAMILY``) and dates their usual spellings (``19450312``, ``1945-03-12``,
``12/03/1945``, ``03/12/1945``, ``12.03.1945``). Decimal numbers are one token, so the digits of a
measurement never match an identifier.

Counting hits in a text hashes its tokens (each distinct token once; keyed) and, only where a token
may start an entry, the n-grams that start there, up to the longest entry's token count. Reports
built on it (data contracts, the whole-build scan) can therefore say how many identifiers a row or
a file holds, and of which kind, without ever seeing or writing one.

The file format (``grok-deny-list/1``, JSON) holds the key fingerprint, the longest entry's token
count, the keyed hashes of the tokens that start an entry and the keyed hashes of the entries with
their kind (``person_name``, ``patient_id``, ``birth_date`` ...). Without the secret nobody can
test a name against it; with the public demo key anyone can, which is one more reason real data
needs ``GROK_PSEUDONYM_KEY``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from grok.parquet_io import TableWriter, sorted_batches
from grok.privacy.pseudonyms import keyed_hash, resolve_key
from grok.resources import bundled_dir

FORMAT = "grok-deny-list/1"
#: The name ingestion writes its deny list under, in its output folder.
DENY_LIST_FILE = "deny_list.json"
#: Entries whose tokens join to fewer characters are too unspecific to deny (initials, "OD").
MIN_ENTRY_CHARS = 4
#: A single all-digit token shorter than this is a number, not an identifier (ages, counts, house numbers).
MIN_DIGIT_ENTRY = 6
#: Decimal numbers stay one token ("271.123456" is not "123456"), so float digits never look like an id.
#: A word of at least ``HEX_RUN`` hexadecimal characters after at most two letters (a SHA-256 digest, the
#: product's own pseudonyms ``S``/``P`` + 16 hex and ``img-...`` ids) is one token too: split at its
#: letter/digit boundaries it holds random digit runs, and at thousands of studies some equal a denied
#: six-digit study number (a 5,000-study build found 35 such rows and refused to publish). Words with a
#: longer letter prefix (``MRN...``, a name run into a date) are split as before.
HEX_RUN = 16
_TOKEN_RE = re.compile(r"(?<![0-9a-z])[a-z]{0,2}[0-9a-f]{%d,}(?![0-9a-z]|\.\d)|\d+(?:\.\d+)*|[^\W\d_]+"
                       % HEX_RUN)
_HASH_LEN = 32
#: Entries a :class:`DenyListSpool` holds in memory before writing them out, and reads back at a time.
SPOOL_ROWS = 4096
#: Entries a :class:`DenyListSpool` remembers having spooled (cleared when full): each DICOM file of a patient adds
#: the same identifiers again (a 2,500-study phantom: 279,558 additions of 14,162 entries), and a repeat met
#: within this many entries is not spooled again (the save de-duplicates the rest).
SPOOL_RECENT = 16_384
#: Keyed hashes of text tokens kept per deny list (cleared when full). Most tokens of an archive's text are numbers
#: seen once: the 5,000-study build's contracts met 293,874 distinct tokens (an uncapped cache held ~50 MB,
#: and publication's memory grew with the archive: issue 22); common words come back within a few rows.
TOKEN_CACHE_ENTRIES = 65_536
#: Kinds whose single words are not denied when the product's own text uses them (see :func:`vocabulary`).
NAME_KINDS = frozenset({"patient_name", "person_name", "name"})


@functools.lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """Words of the product's own templates and knowledge base. A name part that is one of them (a family
    called Normal, a clinician called Macula) is denied only as part of the full name: alone it would flag
    every generated row that uses the word."""
    words: set[str] = set()
    for folder, pattern in (("templates", "*"), ("knowledge_base", "*.yaml")):
        for p in bundled_dir(folder).rglob(pattern):
            if p.is_file():
                words.update(tokens(p.read_text(errors="replace")))
    return frozenset(words)


def tokens(text: str) -> list[str]:
    """Normalised tokens of ``text``: accents dropped, case-folded, split at non-alphanumerics and letter/digit
    boundaries (``"Zoë O'Brien-Smith, MRN1234"`` -> ``['zoe', 'o', 'brien', 'smith', 'mrn', '1234']``), except
    decimal numbers and words of ``HEX_RUN`` or more hexadecimal characters after at most two letters, which
    stay whole."""
    if text.isascii():
        return _TOKEN_RE.findall(text.lower())
    flat = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _TOKEN_RE.findall(flat.casefold())


def key_fingerprint(key: bytes) -> str:
    """Short keyed fingerprint of the secret (the same as ``ingest_summary.json`` records)."""
    return keyed_hash("fingerprint", key, purpose="key-fingerprint", length=12)


def _date_variants(s: str) -> list[list[str]]:
    """Spellings of a calendar date written as ``YYYYMMDD`` or ``YYYY-MM-DD`` (empty if it is not one)."""
    digits = re.fullmatch(r"(\d{4})[-/.]?(\d{2})[-/.]?(\d{2})", s.strip())
    if not digits:
        return []
    y, m, d = digits.groups()
    try:
        dt.date(int(y), int(m), int(d))
    except ValueError:
        return []
    return [[y + m + d], [y, m, d], [d, m, y], [m, d, y], [f"{d}.{m}.{y}"], [f"{y}.{m}.{d}"]]


def guess_kind(s: str) -> str:
    """A coarse kind for an identifier given without one (a plain JSON list): never the value itself."""
    if _date_variants(s):
        return "date"
    toks = tokens(s)
    if any(t.isdigit() for t in toks):
        return "number"
    if "^" in s:
        return "person_name"
    return "name_or_place" if len(toks) > 1 else "name"


def variants(value: str, kind: str) -> list[list[str]]:
    """The token sequences that ``value`` is denied as (dates in several spellings, names in both orders)."""
    dates = _date_variants(value)
    if dates:
        return dates
    toks = tokens(value)
    out = [toks] if toks else []
    if "^" in value or kind == "person_name":
        parts = [tokens(p) for p in value.split("^") if tokens(p)]
        if len(parts) >= 2:
            out.append(parts[1] + parts[0])
    return out


@dataclass
class DenyList:
    """Keyed hashes of identifier n-grams; see the module docstring.

    Build one with :meth:`from_identifiers` (plain values are hashed at once and dropped), read one
    with :meth:`load`, add to it with :meth:`add`, count hits with :meth:`hits`.
    """

    key: bytes = field(repr=False)
    entries: dict[str, str] = field(default_factory=dict)
    first: set[str] = field(default_factory=set)
    max_tokens: int = 0
    _cache: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_identifiers(cls, items: Iterable[str | tuple[str, str]], key: str | bytes | None = None) -> DenyList:
        """``items``: identifier strings, or ``(value, kind)`` pairs. ``key=None``: the pseudonym secret."""
        deny = cls(key=_key_bytes(key))
        for it in items:
            value, kind = (it, guess_kind(it)) if isinstance(it, str) else it
            deny.add(value, kind)
        return deny

    def add(self, value: str, kind: str) -> None:
        """Deny ``value`` (all its variants) as ``kind``; too short or too generic values are ignored, and so are
        single name words of the product's :func:`vocabulary`."""
        for toks in variants(str(value), kind):
            if len("".join(toks)) < MIN_ENTRY_CHARS or (len(toks) == 1 and toks[0].isdigit()
                                                         and len(toks[0]) < MIN_DIGIT_ENTRY):
                continue
            if len(toks) == 1 and kind in NAME_KINDS and toks[0] in vocabulary():
                continue
            self._put(self._gram(toks), kind, self._token(toks[0]))
            self.max_tokens = max(self.max_tokens, len(toks))

    def _put(self, entry: str, kind: str, first: str) -> None:
        self.entries.setdefault(entry, kind)
        self.first.add(first)

    def update(self, other: DenyList) -> None:
        """Merge another deny list made with the same secret."""
        if other.key != self.key:
            raise ValueError("deny lists made with different secrets cannot be merged")
        for h, kind in other.entries.items():
            self.entries.setdefault(h, kind)
        self.first |= other.first
        self.max_tokens = max(self.max_tokens, other.max_tokens)

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def _token(self, tok: str) -> str:
        h = self._cache.get(tok)
        if h is None:
            if len(self._cache) >= TOKEN_CACHE_ENTRIES:
                self._cache.clear()
            h = self._cache[tok] = keyed_hash(tok, self.key, purpose="deny-token", length=_HASH_LEN)
        return h

    def _gram(self, toks: list[str]) -> str:
        return keyed_hash(" ".join(toks), self.key, purpose="deny-ngram", length=_HASH_LEN)

    def hits(self, text: str | None) -> Counter[str]:
        """Identifiers found in ``text``, counted by kind (longest match at each place, no overlaps)."""
        found: Counter[str] = Counter()
        if not text or not self.entries:
            return found
        toks = tokens(text)
        first, entries, n_max = self.first, self.entries, self.max_tokens
        i, n_toks = 0, len(toks)
        while i < n_toks:
            step = 1
            if self._token(toks[i]) in first:
                for n in range(min(n_max, n_toks - i), 0, -1):
                    kind = entries.get(self._gram(toks[i:i + n]))
                    if kind is not None:
                        found[kind] += 1
                        step = n
                        break
            i += step
        return found

    def count(self, text: str | None) -> int:
        """Number of identifiers found in ``text``."""
        return sum(self.hits(text).values())

    # -- files --------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": FORMAT,
                "note": "keyed hashes of normalised identifier n-grams (grok.privacy.denylist); no identifier is stored",
                "key_fingerprint": key_fingerprint(self.key), "max_tokens": self.max_tokens,
                "first_tokens": sorted(self.first), "entries": dict(sorted(self.entries.items()))}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the hashed list (sorted, so equal lists give equal bytes); atomic."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike, key: str | bytes | None = None) -> DenyList:
        """Read a hashed deny list (``grok-deny-list/1``) or a plain JSON list of identifier strings (hashed
        at once). Raises ``ValueError`` naming the fix when a hashed list was made under another secret."""
        kb = _key_bytes(key)
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{p}: not a readable JSON deny list ({type(exc).__name__})") from exc
        try:
            return cls.from_json(raw, kb)
        except ValueError as exc:
            raise ValueError(f"{p}: {exc}") from exc

    @classmethod
    def from_json(cls, raw: list | dict, key: str | bytes | None = None) -> DenyList:
        """From a JSON list of identifier strings (hashed at once) or a parsed ``grok-deny-list/1`` file."""
        kb = _key_bytes(key)
        if isinstance(raw, list):
            return cls.from_identifiers([str(x) for x in raw], kb)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"neither a JSON list of identifiers nor a {FORMAT} file")
        if raw.get("key_fingerprint") != key_fingerprint(kb):
            raise ValueError("the deny list was written under another secret than the current one; set "
                             "GROK_PSEUDONYM_KEY to the secret the build was ingested with")
        return cls(key=kb, entries=dict(raw["entries"]), first=set(raw["first_tokens"]),
                   max_tokens=int(raw["max_tokens"]))


def _key_bytes(key: str | bytes | None) -> bytes:
    k, _ = resolve_key(key)
    return k.encode() if isinstance(k, str) else k


class DenyListSpool(DenyList):
    """A deny list made to be saved, not matched: each entry goes to an Arrow file (``path``) as it is added, so
    whoever makes it (ingestion, which meets every patient of an archive) holds none of them; :meth:`save` writes
    the same ``grok-deny-list/1`` file, byte for byte, as :meth:`DenyList.save` of the same additions, sorting
    and de-duplicating the spooled entries a batch at a time. ``hits`` sees nothing: load the saved file."""

    def __init__(self, path: str | os.PathLike, key: str | bytes | None = None) -> None:
        super().__init__(key=_key_bytes(key))
        self._spool = TableWriter(path, pa.schema([("entry", pa.string()), ("kind", pa.string()),
                                                   ("first", pa.string())]), batch_rows=SPOOL_ROWS)
        self._added = 0
        self._recent: set[str] = set()

    def _put(self, entry: str, kind: str, first: str) -> None:
        if entry in self._recent:  # every file of a patient repeats their identifiers: spool an entry once
            return
        if len(self._recent) >= SPOOL_RECENT:
            self._recent.clear()
        self._recent.add(entry)
        self._spool.write({"entry": entry, "kind": kind, "first": first})
        self._added += 1

    def __len__(self) -> int:  # entries spooled, a few repeats included (the distinct count is known once saved)
        return self._added

    def __bool__(self) -> bool:
        return self._added > 0

    def update(self, other: DenyList) -> None:
        """Merge a deny list made with the same secret (what was added here keeps its kind, as in
        :meth:`DenyList.update`)."""
        if other.key != self.key:
            raise ValueError("deny lists made with different secrets cannot be merged")
        for h, kind in other.entries.items():
            self._spool.write({"entry": h, "kind": kind, "first": None})
        for f in other.first:
            self._spool.write({"entry": None, "kind": None, "first": f})
        self.max_tokens = max(self.max_tokens, other.max_tokens)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the hashed list as :meth:`DenyList.save` does (sorted, indent 1; atomic), streaming it."""
        table = self._spool.read()
        head = self.to_json()  # the fields besides the two collections (empty here: nothing is held)
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")

        def distinct(column: str, pairs: bool) -> Iterator[str]:
            part = table.select([column, "kind"]).filter(pc.is_valid(table.column(column)))
            last = None
            for batch in sorted_batches(part, [(column, "ascending")], SPOOL_ROWS):
                for value, kind in zip(batch.column(column).to_pylist(), batch.column("kind").to_pylist()):
                    if value != last:  # the first addition of a value wins (a stable sort keeps that order)
                        last = value
                        yield f"  {json.dumps(value)}: {json.dumps(kind)}" if pairs else f"  {json.dumps(value)}"

        with open(tmp, "w") as fh:
            fh.write("{\n")
            for name, opening, closing, lines in (("entries", "{", "}", distinct("entry", True)),
                                                  ("first_tokens", "[", "]", distinct("first", False))):
                first_line = next(lines, None)
                if first_line is None:
                    fh.write(f' "{name}": {opening}{closing},\n')
                    continue
                fh.write(f' "{name}": {opening}\n{first_line}')
                for line in lines:
                    fh.write(",\n" + line)
                fh.write(f"\n {closing},\n")
            rest = [(k, v) for k, v in sorted(head.items()) if k not in ("entries", "first_tokens")]
            fh.write(",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in rest) + "\n}")
        tmp.replace(p)
        return p
