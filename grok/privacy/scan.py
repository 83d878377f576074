"""Whole-build privacy scan: every file a build (or a published version) holds, searched for identifiers.

Run as: grok privacy-scan DIR [--identifiers FILE] [--prefect-db PATH] [--json]

What is read, by content (magic bytes first, then the suffix):

* parquet tables: every cell of every column, nested lists and structs included, binary cells as
  the files they hold (an embedded PNG's text chunks), and the file's key-value metadata;
* JSON and JSON lines (every key and string, so ``\\u`` escapes are undone), HTML/XML (entities
  undone, ``data:`` URIs decoded), and any other text: logs, Markdown, CSV, YAML;
* SQLite databases (every text and blob cell of every table), e.g. LLM caches and Prefect's database;
* image metadata: PNG text/zTXt/iTXt/eXIf and other ancillary chunks, JPEG APP and COM segments
  (EXIF, XMP), GIF/TIFF/WebP info and EXIF tags, and DICOM headers (every element, private ones too);
* NumPy ``.npy`` headers (and string arrays), zip members (``.npz``, torch ``.pt``), gzip, the JSON
  header of ``.safetensors``; any other binary as its printable runs;
* the file's own path below ``DIR`` (folder and file names can carry names and numbers).

The identifiers come from a deny list of keyed hashes (:mod:`grok.privacy.denylist`): ``--identifiers
FILE`` (a hashed list, or a plain JSON list that is hashed at once), else the ``ingest/deny_list.json``
the build's ingest stage wrote, plus a phantom archive's ``truth/planted_identifiers.json`` found in
``DIR``. The report names files (a path component that itself matches is replaced by a keyed token),
counts and identifier kinds, never an identifier.

Files whose name contains ``operator-only`` (e.g. the source-key map of ``grok ingest --locate`` saved
as ``locate.operator-only.tsv``) are reported apart and do not fail the scan. A phantom archive inside
``DIR`` (a folder with ``truth/planted_identifiers.json``: the build's *input*, identifying by design)
is not scanned, and the report says so.
"""

from __future__ import annotations

import base64
import fnmatch
import gzip
import html
import io
import itertools
import json
import os
import re
import sqlite3
import struct
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from grok.parquet_io import iter_batches, open_parquet
from grok.privacy.denylist import DENY_LIST_FILE, DenyList
from grok.privacy.pseudonyms import keyed_hash

OPERATOR_ONLY_GLOBS = ("*operator-only*",)
PHANTOM_MARKER = Path("truth") / "planted_identifiers.json"
#: Binary files larger than this are read for printable runs in chunks of this size.
_CHUNK = 64 << 20
_PRINTABLE = re.compile(rb"[\x20-\x7e\t\n\r]{4,}")
_PRINTABLE_UTF16 = re.compile(rb"(?:[\x20-\x7e]\x00){4,}")
_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,([A-Za-z0-9+/=]{16,})")
_NESTED_MAX_DEPTH = 6


class ScanError(ValueError):
    """The scan cannot run (no identifiers, unreadable deny list); the message names the fix."""


@dataclass
class FileHits:
    """Identifier hits in one file: where (redacted path), what sort of file, how many, of which kinds."""

    path: str
    file_kind: str
    hits: int
    by_kind: dict[str, int]
    operator_only: bool = False


@dataclass
class ScanReport:
    root: str
    identifiers: int
    files_scanned: int = 0
    bytes_scanned: int = 0
    files_by_kind: dict[str, int] = field(default_factory=dict)
    hits: list[FileHits] = field(default_factory=list)
    not_scanned: list[dict[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def offending(self) -> list[FileHits]:
        """Files with hits that are not operator-only."""
        return [h for h in self.hits if not h.operator_only]

    @property
    def success(self) -> bool:
        return not self.offending

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["success"] = self.success
        d["hits_outside_operator_only"] = sum(h.hits for h in self.offending)
        d["files_with_hits_outside_operator_only"] = len(self.offending)
        return d

    def summary(self) -> str:
        head = (f"privacy scan of {self.root}: {self.files_scanned} files ({self.bytes_scanned / 1e6:.1f} MB), "
                f"{self.identifiers} known identifiers (hashed)")
        lines = [head]
        for h in sorted(self.hits, key=lambda h: (h.operator_only, h.path)):
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(h.by_kind.items()))
            tag = " [operator-only]" if h.operator_only else ""
            lines.append(f"  {h.path}{tag}: {h.hits} hits ({h.file_kind}; {kinds})")
        for s in self.not_scanned:
            lines.append(f"  not scanned: {s['path']} ({s['why']})")
        lines.append("result: " + ("no identifier outside operator-only files" if self.success else
                                   f"{sum(h.hits for h in self.offending)} identifiers in "
                                   f"{len(self.offending)} files"))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- identifiers
def identifier_files(root: Path) -> list[Path]:
    """Deny lists a folder carries: the ingest stage's hashed list and a phantom archive's planted list."""
    found = [p for p in (root / "ingest" / DENY_LIST_FILE, root / DENY_LIST_FILE) if p.is_file()]
    found += sorted(root.glob(f"*/{PHANTOM_MARKER.as_posix()}")) + sorted(root.glob(PHANTOM_MARKER.as_posix()))
    return found


def load_identifiers(root: Path, identifiers: Iterable[str | os.PathLike] = (), key: str | bytes | None = None,
                     ) -> DenyList:
    """The deny list a scan of ``root`` uses: the given files, else the ones ``root`` carries (see module doc)."""
    files = [Path(p) for p in identifiers] or identifier_files(root)
    if not files:
        raise ScanError(f"{root}: no identifiers to look for; pass --identifiers FILE (the build's "
                        f"ingest/{DENY_LIST_FILE}, or a JSON list of identifier strings)")
    deny: DenyList | None = None
    for f in files:
        try:
            d = DenyList.load(f, key)
        except ValueError as exc:
            raise ScanError(str(exc)) from exc
        if deny is None:
            deny = d
        else:
            deny.update(d)
    assert deny is not None
    if not deny:
        raise ScanError(f"{', '.join(map(str, files))}: the deny list is empty; nothing to look for")
    return deny


# ----------------------------------------------------------------------------------------- extraction
def _strings(data: bytes) -> Iterator[str]:
    """The decoded text when the bytes are valid UTF-8, else their printable ASCII and UTF-16LE runs (like
    ``strings``; EXIF's XP tags and Windows metadata are UTF-16)."""
    try:
        yield data.decode("utf-8")
        return
    except UnicodeDecodeError:
        pass
    for m in _PRINTABLE.finditer(data):
        yield m.group().decode("ascii")
    for m in _PRINTABLE_UTF16.finditer(data):
        yield m.group().decode("utf-16-le")


def _sniff(data: bytes, name: str) -> str:
    suffix = Path(name).suffix.lower()
    if data[:4] == b"PAR1":
        return "parquet"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:16] == b"SQLite format 3\x00":
        return "sqlite"
    if data[:6] == b"\x93NUMPY":
        return "npy"
    if data[128:132] == b"DICM" or suffix in (".dcm", ".dicom"):
        return "dicom"
    if data[:4] == b"PK\x03\x04":
        return "zip"
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:4] in (b"GIF8", b"II*\x00", b"MM\x00*") or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return "image"
    if suffix == ".safetensors":
        return "safetensors"
    if b"\x00" in data[:8192]:
        return "binary"
    if suffix in (".json", ".jsonl", ".ndjson", ".ipynb"):
        return "json"
    if suffix in (".html", ".htm", ".xml", ".svg", ".xhtml"):
        return "html"
    return "text"


def _walk_value(v: Any, depth: int = 0) -> Iterator[str]:
    """Text of a nested value: strings, dict keys, integers long enough to be a record number, and binary
    values read as the files they are."""
    if v is None or isinstance(v, (bool, float)):
        return
    if isinstance(v, int):
        if abs(v) >= 100_000:
            yield str(v)
    elif isinstance(v, str):
        yield v
    elif isinstance(v, (bytes, bytearray, memoryview)):
        if depth < _NESTED_MAX_DEPTH:
            yield from _texts(bytes(v), "cell", depth + 1)
    elif isinstance(v, dict):
        for k, x in v.items():
            if isinstance(k, str):
                yield k
            yield from _walk_value(x, depth)
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _walk_value(x, depth)
    else:
        yield str(v)


def _parquet(source: Any, depth: int) -> Iterator[str]:
    pf = open_parquet(source)
    for k, v in (pf.schema_arrow.metadata or {}).items():
        yield k.decode("utf-8", "replace")
        yield v.decode("utf-8", "replace")
    for batch in iter_batches(pf, 512):
        for col in batch.columns:
            for v in col.to_pylist():
                yield from _walk_value(v, depth)


def _json(text: str, depth: int) -> Iterator[str]:
    try:
        yield from _walk_value(json.loads(text), depth)
        return
    except (json.JSONDecodeError, RecursionError):
        pass
    for line in text.splitlines():  # JSON lines, or not JSON after all
        try:
            yield from _walk_value(json.loads(line), depth)
        except (json.JSONDecodeError, RecursionError):
            yield line


def _html(text: str, depth: int) -> Iterator[str]:
    yield html.unescape(text)
    if depth < _NESTED_MAX_DEPTH:
        for m in _DATA_URI.finditer(text):
            try:
                yield from _texts(base64.b64decode(m.group(1)), "data-uri", depth + 1)
            except ValueError:
                continue


def _png(data: bytes) -> Iterator[str]:
    """Every chunk but the pixels (IDAT) and the header: tEXt, zTXt/iTXt (inflated), eXIf, private ones."""
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype in (b"IDAT", b"IHDR", b"IEND", b"PLTE"):
            continue
        if ctype == b"zTXt":
            key, _, rest = body.partition(b"\x00")
            yield key.decode("latin-1")
            body = _inflate(rest[1:])
        elif ctype == b"iTXt":
            key, _, rest = body.partition(b"\x00")
            compressed, rest = rest[:1] == b"\x01", rest[2:]
            lang, _, rest = rest.partition(b"\x00")
            tkey, _, text = rest.partition(b"\x00")
            yield from (key.decode("latin-1"), lang.decode("latin-1"), tkey.decode("utf-8", "replace"))
            body = _inflate(text) if compressed else text
        elif ctype == b"tEXt":
            yield body.replace(b"\x00", b" ").decode("latin-1")
            continue
        yield from _strings(body)


def _inflate(data: bytes) -> bytes:
    try:
        d = zlib.decompressobj()
        return d.decompress(data, 64 << 20)
    except zlib.error:
        return data


def _jpeg(data: bytes) -> Iterator[str]:
    """APPn (EXIF, XMP, ICC ...) and COM segments, up to the start of the scan data."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        body = data[pos + 4:pos + 2 + length]
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            yield from _strings(body)
        if marker == 0xDA:  # start of scan: pixels follow
            return
        pos += 2 + length


def _pil_image(data: bytes) -> Iterator[str]:
    with Image.open(io.BytesIO(data)) as im:
        for v in im.info.values():
            yield from _walk_value(v if not isinstance(v, tuple) else list(v))
        for v in im.getexif().values():
            yield from _walk_value(v)
        for v in getattr(im, "tag_v2", {}).values():
            yield from _walk_value(v if not isinstance(v, tuple) else list(v))


def _dicom(data: bytes) -> Iterator[str]:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)

    def walk(dataset) -> Iterator[str]:
        for elem in dataset:
            if elem.VR == "SQ":
                for item in elem.value:
                    yield from walk(item)
                continue
            v = elem.value
            if isinstance(v, (bytes, bytearray)):
                yield from _strings(bytes(v))
            elif isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
                yield " ".join(str(x) for x in v)
            elif v is not None:
                yield str(v)

    if getattr(ds, "file_meta", None) is not None:
        yield from walk(ds.file_meta)
    yield from walk(ds)


def _npy(fh, depth: int) -> Iterator[str]:
    """The header; the values too when they are strings (pixel arrays hold no text)."""
    start = fh.tell()
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    _, _, dtype = read(fh)
    end = fh.tell()
    fh.seek(start)
    yield fh.read(end - start).decode("latin-1")
    if dtype.kind in "US":
        fh.seek(start)
        for v in np.load(fh, allow_pickle=False).ravel().tolist():
            yield from _walk_value(v, depth)


def _zip(data_or_path: Any, depth: int) -> Iterator[str]:
    with zipfile.ZipFile(data_or_path) as zf:
        for info in zf.infolist():
            yield info.filename
            if info.is_dir() or depth >= _NESTED_MAX_DEPTH:
                continue
            with zf.open(info) as member:
                if info.filename.endswith(".npy"):
                    yield from _npy(io.BytesIO(member.read()), depth + 1)
                else:
                    yield from _texts(member.read(), info.filename, depth + 1)


def _sqlite(path: Path, depth: int) -> Iterator[str]:
    uri = f"file:{path.resolve().as_posix()}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True)
        con.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.Error:  # no write access for the WAL index: read the main file as it is
        con = sqlite3.connect(uri + "&immutable=1", uri=True)
    try:
        con.text_factory = lambda b: b.decode("utf-8", "replace")
        tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        for t in tables:
            yield t
            for row in con.execute(f'select * from "{t.replace(chr(34), chr(34) * 2)}"'):
                for v in row:
                    yield from _walk_value(v, depth)
    finally:
        con.close()


def _texts(data: bytes, name: str, depth: int = 0) -> Iterator[str]:
    """Every piece of text in ``data`` (a file's bytes; ``name`` gives its suffix); see the module docstring.
    Bytes that do not parse as the format they look like are read as printable runs instead."""
    kind = _sniff(data, name)
    try:
        yield from _texts_as(kind, data, name, depth)
    except Exception:  # noqa: BLE001 - a damaged or mis-sniffed blob still gets its printable runs read
        yield from _strings(data)


def _texts_as(kind: str, data: bytes, name: str, depth: int) -> Iterator[str]:
    if kind == "parquet":
        yield from _parquet(io.BytesIO(data), depth)
    elif kind == "png":
        yield from _png(data)
    elif kind == "jpeg":
        yield from _jpeg(data)
    elif kind == "image":
        yield from _pil_image(data)
    elif kind == "dicom":
        yield from _dicom(data)
    elif kind == "npy":
        yield from _npy(io.BytesIO(data), depth)
    elif kind == "zip":
        yield from _zip(io.BytesIO(data), depth)
    elif kind == "gzip":
        yield from _texts(gzip.decompress(data), name.removesuffix(".gz"), depth + 1)
    elif kind == "safetensors":
        (n,) = struct.unpack("<Q", data[:8])
        yield data[8:8 + n].decode("utf-8", "replace")
    elif kind == "sqlite":
        with tempfile.NamedTemporaryFile(suffix=".sqlite") as tmp:
            tmp.write(data)
            tmp.flush()
            yield from _sqlite(Path(tmp.name), depth)
    elif kind == "binary":
        yield from _strings(data)
    else:
        text = data.decode("utf-8", "replace")
        if kind == "json":
            yield from _json(text, depth)
        elif kind == "html":
            yield from _html(text, depth)
        else:
            yield text


def file_texts(path: Path) -> tuple[str, Iterator[str]]:
    """(file kind, its texts) for a file on disk; large files are not read whole where the format allows."""
    with open(path, "rb") as fh:
        head = fh.read(8192)
    kind = _sniff(head, path.name)
    size = path.stat().st_size
    if kind == "npy":
        def npy() -> Iterator[str]:
            with open(path, "rb") as fh:
                yield from _npy(fh, 0)
        return kind, npy()
    if kind == "sqlite":
        return kind, _sqlite(path, 0)
    if kind == "parquet":
        return kind, _parquet(str(path), 0)
    if kind == "zip":
        return kind, _zip(str(path), 0)
    if kind == "json" and size > _CHUNK and path.suffix.lower() in (".jsonl", ".ndjson"):
        def lines() -> Iterator[str]:  # JSON lines (a build's records.jsonl): one line in memory at a time
            with open(path, "rb") as fh:
                for raw in fh:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    try:
                        yield from _walk_value(json.loads(line), 0)
                    except (json.JSONDecodeError, RecursionError):
                        yield line
        return kind, lines()
    if kind == "binary" and size > _CHUNK:
        def chunks() -> Iterator[str]:
            with open(path, "rb") as fh:
                while block := fh.read(_CHUNK):
                    yield from _strings(block)
        return kind, chunks()
    return kind, _texts(path.read_bytes(), path.name)


# ----------------------------------------------------------------------------------------- the scan
def _redacted(rel: str, deny: DenyList) -> str:
    parts = []
    for part in rel.split("/"):
        parts.append(f"<redacted {keyed_hash(part, deny.key, purpose='scan-path', length=12)}>"
                     if deny.count(part) else part)
    return "/".join(parts)


def _files(root: Path, exclude: list[Path], skipped: list[dict[str, str]]) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        for name in sorted(dirnames):
            sub = d / name
            if (sub / PHANTOM_MARKER).is_file():
                skipped.append({"path": sub.relative_to(root).as_posix(),
                                "why": "phantom source archive: the build's input, identifying by design"})
                dirnames.remove(name)
            elif any(sub.resolve() == e for e in exclude):
                skipped.append({"path": sub.relative_to(root).as_posix(), "why": "excluded (--exclude)"})
                dirnames.remove(name)
        dirnames.sort()
        for name in sorted(filenames):
            p = d / name
            if (p.is_file() or p.is_symlink()) and p.resolve() not in exclude:
                yield p


def scan_path(root: str | os.PathLike, deny: DenyList, *, files: Iterable[str | os.PathLike] | None = None,
              extra_files: Iterable[str | os.PathLike] = (), exclude: Iterable[str | os.PathLike] = (),
              operator_only: Iterable[str] = OPERATOR_ONLY_GLOBS) -> ScanReport:
    """Scan every file below ``root`` (or only ``files``, paths below ``root``), and ``extra_files`` (e.g.
    Prefect's database, named by file name), for ``deny``'s identifiers."""
    t0 = time.perf_counter()
    root = Path(root)
    if not root.exists():
        raise ScanError(f"{root}: no such file or folder")
    rep = ScanReport(root=str(root), identifiers=len(deny))
    excl = [Path(e).resolve() for e in exclude]

    def listed() -> Iterator[tuple[Path, str]]:
        # one path at a time: ``files`` may be a generator over an archive's media (publication streams them)
        for f in files:
            p = Path(f) if Path(f).is_absolute() else root / f
            if p.is_file():
                yield p, p.relative_to(root).as_posix()

    targets = itertools.chain(
        listed() if files is not None else ((p, p.relative_to(root).as_posix() if root.is_dir() else p.name)
                                            for p in _files(root, excl, rep.not_scanned)),
        ((Path(p), Path(p).name) for p in extra_files))
    globs = tuple(operator_only)
    kinds: Counter[str] = Counter()
    for path, rel in targets:
        if path.is_symlink():
            rep.not_scanned.append({"path": _redacted(rel, deny), "why": "symbolic link (not followed)"})
            continue
        found = deny.hits(rel)
        try:
            kind, texts = file_texts(path)
            for text in texts:
                found.update(deny.hits(text))
        except Exception as exc:  # noqa: BLE001 - an unreadable file is reported, never skipped silently
            kind = "unreadable"
            rep.not_scanned.append({"path": _redacted(rel, deny), "why": f"unreadable ({type(exc).__name__})"})
        kinds[kind] += 1
        rep.files_scanned += 1
        rep.bytes_scanned += path.stat().st_size
        if found:
            name = Path(rel).name
            rep.hits.append(FileHits(path=_redacted(rel, deny), file_kind=kind, hits=sum(found.values()),
                                     by_kind=dict(sorted(found.items())),
                                     operator_only=any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel, g)
                                                       for g in globs)))
    rep.files_by_kind = dict(sorted(kinds.items()))
    rep.elapsed_s = round(time.perf_counter() - t0, 3)
    return rep


def scan(root: str | os.PathLike, *, identifiers: Iterable[str | os.PathLike] = (),
         extra_files: Iterable[str | os.PathLike] = (), exclude: Iterable[str | os.PathLike] = (),
         key: str | bytes | None = None) -> ScanReport:
    """:func:`scan_path` with the deny list of :func:`load_identifiers`."""
    deny = load_identifiers(Path(root), identifiers, key)
    return scan_path(root, deny, extra_files=extra_files, exclude=exclude)
