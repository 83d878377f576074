"""Versioned dataset registry: publish Hugging Face dataset folders, pull them by ``name@version``.

Run as: grok datasets list | show NAME | pull NAME@VERSION

Layout of a registry root (a local folder by default, or any fsspec URL)::

    <root>/<name>/<version>/data/<config>/<split>-00000-of-00001.parquet  (or -NNNNN-of-MMMMM shards)
    <root>/<name>/<version>/README.md       dataset card (YAML front matter: configs, splits, features)
    <root>/<name>/<version>/manifest.json   fingerprint, versions, build id, row counts
    <root>/<name>/<version>/croissant.json  Croissant 1.0 metadata (record sets, field types, licence, provenance)

A version folder is written under a temporary name and renamed into place only when complete, so
a killed publish leaves no partial version; an existing version is never overwritten; a lock
file serialises concurrent publishes of one name. The fingerprint is a sha256 over the canonical
Arrow content of every table (not over file bytes or timestamps), so the same content always gives
the same fingerprint. ``datasets.load_dataset(<version folder>, "<config>")`` works on a published
folder, and :func:`load` wraps it with the version check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from grok.parquet_io import open_parquet

DEFAULT_REGISTRY_ENV = "GROK_REGISTRY"
DEFAULT_REGISTRY = "registry"
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Arrow bytes per parquet row group of a published split (``datasets`` aims at 100 MB, or its
#: ``config.MAX_ROW_GROUP_SIZE`` when that is smaller). A reader holds whole row groups: ``load_dataset``
#: streaming, the privacy scan of the staged version, the split sizes below. With 100 MB groups a
#: publication's memory grew with the split until a split passed 100 MB (issue 22: +0.10 MB per study
#: from 500 to 5,000 studies); 16 MB groups keep every reader's share bounded at any size.
ROW_GROUP_BYTES = 16 << 20


class RegistryError(ValueError):
    """A registry operation that cannot proceed; the message names the dataset/version and the fix."""


@dataclass(frozen=True)
class DatasetRef:
    name: str
    version: str | None  #: None = latest

    @classmethod
    def parse(cls, spec: str) -> DatasetRef:
        name, _, version = spec.partition("@")
        if not _NAME_RE.match(name):
            raise RegistryError(f"dataset name {name!r} is invalid: use lower-case letters, digits, '.', '_', '-'")
        if version in ("", "latest"):
            return cls(name, None)
        if not _VERSION_RE.match(version):
            raise RegistryError(f"version {version!r} in {spec!r} is not X.Y.Z (or 'latest')")
        return cls(name, version)


def registry_root(registry: str | os.PathLike | None = None) -> str:
    """The registry root: the argument, else ``$GROK_REGISTRY``, else ``./registry``."""
    return str(registry or os.environ.get(DEFAULT_REGISTRY_ENV) or DEFAULT_REGISTRY)


def _fs(root: str):
    return fsspec.core.url_to_fs(root)


def _vkey(v: str) -> tuple[int, int, int]:
    m = _VERSION_RE.match(v)
    assert m
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def list_versions(name: str, registry: str | None = None) -> list[str]:
    """Published versions of ``name``, oldest first."""
    fs, root = _fs(registry_root(registry))
    base = f"{root}/{name}"
    if not fs.exists(base):
        return []
    out = []
    for p in fs.ls(base, detail=False):
        v = p.rstrip("/").rsplit("/", 1)[-1]
        if _VERSION_RE.match(v) and fs.exists(f"{p}/manifest.json"):
            out.append(v)
    return sorted(out, key=_vkey)


def list_datasets(registry: str | None = None) -> dict[str, list[str]]:
    fs, root = _fs(registry_root(registry))
    if not fs.exists(root):
        return {}
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False) if fs.isdir(p))
    return {n: vs for n in names if (vs := list_versions(n, registry))}


def resolve(spec: str, registry: str | None = None) -> dict[str, Any]:
    """``name@version`` (or ``name@latest``) -> {name, version, fingerprint, path, manifest}.

    Raises :class:`RegistryError` naming the versions that do exist when the asked one does not.
    """
    ref = DatasetRef.parse(spec)
    versions = list_versions(ref.name, registry)
    if not versions:
        raise RegistryError(f"dataset {ref.name!r} has no published version in registry {registry_root(registry)!r}; "
                            "publish it first (grok publish) or point --registry at the right place")
    version = ref.version or versions[-1]
    if version not in versions:
        raise RegistryError(f"{ref.name}@{version} does not exist in {registry_root(registry)!r}; "
                            f"published versions: {', '.join(versions)}")
    fs, root = _fs(registry_root(registry))
    path = f"{root}/{ref.name}/{version}"
    manifest = json.loads(fs.cat_file(f"{path}/manifest.json"))
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    url = path if "file" in protocols else f"{protocols[0]}://{path.lstrip('/')}"
    return {"name": ref.name, "version": version, "fingerprint": manifest["fingerprint"], "path": url,
            "manifest": manifest}


def next_version(name: str, bump: str = "minor", registry: str | None = None) -> str:
    """The version after the latest one (0.1.0 for a new dataset)."""
    if bump not in ("major", "minor", "patch"):
        raise RegistryError(f"--bump must be major, minor or patch, not {bump!r}")
    versions = list_versions(name, registry)
    if not versions:
        return "0.1.0"
    a, b, c = _vkey(versions[-1])
    return {"major": f"{a + 1}.0.0", "minor": f"{a}.{b + 1}.0", "patch": f"{a}.{b}.{c + 1}"}[bump]


#: Rows of a split hashed as one Arrow record batch by :func:`table_fingerprint`: the split is hashed a batch at a
#: time, so publication never holds a split (its images embedded) in memory to fingerprint it.
FINGERPRINT_BATCH_ROWS = 128
#: What a fingerprint is a hash of; written to ``manifest.json`` (``fingerprint_scheme``). Versions published before
#: it was recorded hash each split as one record batch; their fingerprints are not comparable with these.
FINGERPRINT_SCHEME = f"arrow-ipc-stream/{FINGERPRINT_BATCH_ROWS}-row-batches/sha256"


def table_fingerprint(table) -> str:
    """sha256 of a table's canonical Arrow IPC stream: the schema without metadata, then the rows in record
    batches of :data:`FINGERPRINT_BATCH_ROWS` (the last one shorter), each batch contiguous. The same rows give
    the same hash however the table is chunked or stored; a ``datasets.Dataset`` is read a batch at a time (its
    indices mapping applied), a ``pa.Table`` sliced, so only one batch is copied into memory at once."""
    batches = _row_batches(table, FINGERPRINT_BATCH_ROWS)
    first = next(batches, None)
    schema = (first.schema if first is not None else _schema_of(table)).remove_metadata()
    h = hashlib.sha256()
    # the stream is hashed as it is written (not buffered, then copied to bytes)
    with pa.PythonFile(_HashSink(h), mode="w") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for batch in itertools.chain([first] if first is not None else [], batches):
            writer.write_table(batch.replace_schema_metadata(None).combine_chunks())
    return h.hexdigest()


def _schema_of(table) -> pa.Schema:
    return table.schema if isinstance(table, pa.Table) else table.with_format("arrow")[:0].schema


def _row_batches(table, rows: int):
    """``rows``-row slices of a ``pa.Table`` or of a ``datasets.Dataset`` (as Arrow tables, indices applied)."""
    if isinstance(table, pa.Table):
        for start in range(0, table.num_rows, rows):
            yield table.slice(start, rows)
        return
    yield from table.with_format("arrow").iter(batch_size=rows)


class _HashSink:
    """A write-only file object that feeds what is written to a hash."""

    closed = False

    def __init__(self, h):
        self.h = h

    def write(self, data) -> int:
        self.h.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def content_fingerprint(tables: Mapping[str, Mapping[str, Any]]) -> str:
    """sha256 over ``config/split:table_fingerprint`` lines, configs and splits in sorted order."""
    h = hashlib.sha256()
    for config in sorted(tables):
        for split in sorted(tables[config]):
            h.update(f"{config}/{split}:{table_fingerprint(tables[config][split])}\n".encode())
    return h.hexdigest()


def publish(
    tables: Mapping[str, Mapping[str, Any]],
    name: str,
    *,
    version: str | None = None,
    bump: str = "minor",
    registry: str | None = None,
    card_body: str = "",
    card_meta: Mapping[str, Any] | None = None,
    manifest_extra: Mapping[str, Any] | None = None,
    extra_writer: Callable[[Path], None] | None = None,
    max_shard_bytes: int = 500_000_000,
) -> dict[str, Any]:
    """Publish ``tables[config][split]`` (``datasets.Dataset`` objects) as ``name@version``.

    ``extra_writer(staging_dir)`` may add files (e.g. a curator report) before the atomic rename.
    A split larger than ``max_shard_bytes`` (Arrow bytes) is written as ``<split>-NNNNN-of-MMMMM.parquet``
    files of at most about that size each (the Hub's advice is <= 500 MB), read lazily by ``load`` and
    ``datasets.load_dataset``; the fingerprint does not depend on the files.

    Returns what :func:`resolve` returns for the new version. Raises :class:`RegistryError` if the
    version exists, the registry is not writable, or another publish of ``name`` holds the lock.
    """
    import datasets

    ref = DatasetRef.parse(name)
    if version is not None and not _VERSION_RE.match(version):
        raise RegistryError(f"--version {version!r} is not X.Y.Z")
    root_s = registry_root(registry)
    fs, root = _fs(root_s)
    base = f"{root}/{ref.name}"
    try:
        fs.makedirs(base, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"registry {root_s!r} is not writable ({exc}); choose another --registry") from exc
    lock = f"{base}/.publish.lock"
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    if local:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
        except FileExistsError as exc:
            if _stale_lock(lock):
                os.unlink(lock)
                return publish(tables, name, version=version, bump=bump, registry=registry, card_body=card_body,
                               card_meta=card_meta, manifest_extra=manifest_extra, extra_writer=extra_writer)
            raise RegistryError(f"another publish of {ref.name!r} is running (lock {lock}); wait for it, or remove "
                                "the lock file if that process is gone") from exc
        except OSError as exc:
            raise RegistryError(f"registry {root_s!r} is not writable ({exc}); choose another --registry") from exc
    try:
        version = version or next_version(ref.name, bump, registry)
        final = f"{base}/{version}"
        if fs.exists(final):
            raise RegistryError(f"{ref.name}@{version} already exists; published versions are never overwritten. "
                                f"Use --bump or --version {next_version(ref.name, 'patch', registry)}")
        tmp = f"{base}/.tmp-{version}-{uuid.uuid4().hex[:8]}"
        staging = Path(tmp) if local else Path(os.path.join(os.environ.get("TMPDIR", "/tmp"), tmp.replace("/", "_")))
        staging.mkdir(parents=True)
        arrow_tables: dict[str, dict[str, Any]] = {}
        counts: dict[str, dict[str, int]] = {}
        data_files: dict[str, list[dict[str, str]]] = {}
        infos: dict[str, Any] = {}
        for config in sorted(tables):
            info = datasets.DatasetInfo(splits=datasets.SplitDict(), download_size=0, dataset_size=0)
            for split in sorted(tables[config]):
                ds = tables[config][split]
                if not isinstance(ds, datasets.Dataset):
                    raise RegistryError(f"tables[{config!r}][{split!r}] must be a datasets.Dataset")
                n = max(1, min(len(ds), -(-ds.data.nbytes // max_shard_bytes)))
                rels = [f"data/{config}/{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
                (staging / rels[0]).parent.mkdir(parents=True, exist_ok=True)
                group_rows = _row_group_rows(ds)
                for i, rel in enumerate(rels):
                    (ds if n == 1 else ds.shard(n, i, contiguous=True)).to_parquet(str(staging / rel),
                                                                                    batch_size=group_rows)
                arrow_tables.setdefault(config, {})[split] = ds  # hashed a batch at a time below
                counts.setdefault(config, {})[split] = len(ds)
                if len(ds) == 0:
                    continue  # kept as a file (see load), left out of the card: datasets cannot load it
                # sizes as the Hub and datasets.load_dataset count them: Arrow bytes per split, file bytes
                nbytes = sum(_arrow_nbytes(staging / rel) for rel in rels)
                data_files.setdefault(config, []).append(
                    {"split": split, "path": rels[0] if n == 1 else f"data/{config}/{split}-*-of-{n:05d}.parquet"})
                info.features = ds.features
                info.splits.add(datasets.SplitInfo(name=split, num_bytes=nbytes, num_examples=len(ds)))
                info.download_size += sum((staging / rel).stat().st_size for rel in rels)
                info.dataset_size += nbytes
            if info.splits:
                info.size_in_bytes = info.download_size + info.dataset_size
                infos[config] = info
        fingerprint = content_fingerprint(arrow_tables)
        manifest = {
            "name": ref.name,
            "version": version,
            "fingerprint": fingerprint,
            "fingerprint_scheme": FINGERPRINT_SCHEME,
            "created_utc": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "counts": counts,
            **dict(manifest_extra or {}),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if extra_writer is not None:
            extra_writer(staging)
        (staging / "README.md").write_text(_card(ref.name, version, data_files, infos, counts,
                                                 dict(card_meta or {}), card_body, fingerprint))
        (staging / "croissant.json").write_text(json.dumps(
            croissant(ref.name, version, data_files, infos, dict(card_meta or {}), manifest), indent=2))
        if local:
            if fs.exists(final):  # re-check under the lock just before the atomic rename
                raise RegistryError(f"{ref.name}@{version} appeared while publishing; nothing was changed")
            os.rename(staging, final)
        else:
            fs.put(str(staging), f"{base}/.upload-{version}", recursive=True)
            fs.mv(f"{base}/.upload-{version}", final, recursive=True)
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        if local:
            for p in Path(base).glob(f".tmp-{version}-*") if version else []:
                shutil.rmtree(p, ignore_errors=True)
        raise
    finally:
        if local:
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
    return resolve(f"{ref.name}@{version}", registry)


def _stale_lock(lock: str) -> bool:
    """True when the lock's owner process (same host) is gone, e.g. a publish killed by a signal."""
    try:
        pid = int(Path(lock).read_text().strip() or "0")
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _size_category(n: int) -> str:
    """The Hub's ``size_categories`` tag for ``n`` rows."""
    for limit, tag in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return tag
    return "1M<n<10M"


def card_data(name: str, data_files: Mapping[str, list[dict]], infos: Mapping[str, Any], meta: Mapping[str, Any]):
    """The card's YAML metadata as a ``huggingface_hub.DatasetCardData``, in the form the Hub validates.

    ``data_files[config]``: ``[{"split", "path"}]``; ``infos[config]``: a ``datasets.DatasetInfo`` with the
    features and, per split, ``num_examples`` and ``num_bytes`` (Arrow bytes), plus ``download_size``
    (parquet bytes) and ``dataset_size``. Written through ``datasets``' own card writers (what
    ``push_to_hub`` uses), so ``datasets.load_dataset`` reads every field back without a warning.
    """
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    rows = sum(s.num_examples for info in infos.values() for s in info.splits.values())
    data = DatasetCardData(
        pretty_name=meta.get("pretty_name", name),
        license=meta.get("license", "other"),
        task_categories=meta.get("task_categories", ["image-text-to-text"]),
        size_categories=[_size_category(rows)],
        tags=meta.get("tags", ["ophthalmology", "oct", "fundus", "synthetic" if meta.get("synthetic") else "clinical"]),
    )
    MetadataConfigs({c: {"data_files": list(files)} for c, files in data_files.items()}).to_dataset_card_data(data)
    DatasetInfosDict(dict(infos)).to_dataset_card_data(data)
    return data


def _card(name: str, version: str, data_files: Mapping[str, list[dict]], infos: Mapping[str, Any], counts: dict,
          meta: dict, body: str, fingerprint: str) -> str:
    from huggingface_hub import DatasetCard

    lines = [f"# {name} {version}", "", f"Content fingerprint: `{fingerprint}`", "", "| config | split | rows |",
             "|---|---|---|"]
    for c in sorted(counts):
        for s, n in counts[c].items():
            lines.append(f"| {c} | {s} | {n} |")
    empty = [f"{c}/{s}" for c in sorted(counts) for s, n in counts[c].items() if n == 0]
    if empty:
        lines += ["", f"Empty splits ({', '.join(empty)}) are published as parquet files with their features but are "
                  "not listed in the card's `configs`: `datasets.load_dataset` cannot load a split without rows "
                  "(`grok.registry.load` reads them)."]
    lines += ["", body.strip(), ""]
    card = DatasetCard(f"---\n{card_data(name, data_files, infos, meta).to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


#: The JSON-LD context of a Croissant 1.0 file (as mlcroissant writes it).
CROISSANT_CONTEXT: dict[str, Any] = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "cr": "http://mlcommons.org/croissant/", "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/", "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileProperty": "cr:fileProperty", "fileObject": "cr:fileObject", "fileSet": "cr:fileSet", "format": "cr:format",
    "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset", "jsonPath": "cr:jsonPath", "key": "cr:key",
    "md5": "cr:md5", "parentField": "cr:parentField", "path": "cr:path", "recordSet": "cr:recordSet",
    "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated", "replace": "cr:replace",
    "samplingRate": "cr:samplingRate", "sc": "https://schema.org/", "separator": "cr:separator", "source": "cr:source",
    "subField": "cr:subField", "transform": "cr:transform",
}
_CROISSANT_TYPES = {"string": "sc:Text", "large_string": "sc:Text", "bool": "sc:Boolean", "date32": "sc:Date",
                    **{f"{p}int{b}": "sc:Integer" for p in ("", "u") for b in (8, 16, 32, 64)},
                    **{f"float{b}": "sc:Float" for b in (16, 32, 64)}}


def _croissant_field(fid: str, column: str, feature: Any, file_set: str, json_path: str | None = None) -> dict:
    """One Croissant field for a ``datasets`` feature: a value, an image (the embedded bytes), a list of
    either (``repeated``) or a struct (``subField`` per key, read by JSON path from the same column)."""
    import datasets

    field: dict[str, Any] = {"@type": "cr:Field", "@id": fid, "name": fid.rsplit("/", 1)[-1]}
    source: dict[str, Any] = {"fileSet": {"@id": file_set}, "extract": {"column": column}}
    transforms = [{"jsonPath": json_path}] if json_path else []
    if isinstance(feature, datasets.List | datasets.Sequence | list):
        inner = feature[0] if isinstance(feature, list) else feature.feature
        return {**_croissant_field(fid, column, inner, file_set, json_path), "repeated": True}
    if isinstance(feature, dict):
        field["dataType"] = "cr:RecordSet"
        field["subField"] = [_croissant_field(f"{fid}/{k}", column, v, file_set, k) for k, v in feature.items()]
    elif isinstance(feature, datasets.Image):
        field["dataType"] = "sc:ImageObject"
        transforms.append({"jsonPath": "bytes"})
    elif isinstance(feature, datasets.Value) and (feature.dtype in _CROISSANT_TYPES
                                                  or feature.dtype.startswith("timestamp")):
        field["dataType"] = _CROISSANT_TYPES.get(feature.dtype, "sc:Date")
    else:
        raise RegistryError(f"feature {fid} ({feature!r}) has no Croissant data type; use a string, number, "
                            "boolean, date, image, list or struct feature")
    if transforms:
        source["transform"] = transforms if len(transforms) > 1 else transforms[0]
    field["source"] = source
    return field


def croissant(name: str, version: str, data_files: Mapping[str, list[dict]], infos: Mapping[str, Any],
              meta: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The version's Croissant 1.0 metadata (``croissant.json``, MLCommons): one file set and one record set
    per config, a field per column with its type (images as ``sc:ImageObject`` from the embedded bytes,
    lists as ``repeated``, structs as sub-fields) plus the split read from the file name; the licence, the
    content fingerprint and the provenance (build id, code, knowledge-base and template versions).
    Paths are relative to the version folder, so the file is read where the folder is."""
    versions = manifest.get("versions") or {}
    provenance = [f"content fingerprint sha256:{manifest['fingerprint']}"]
    if manifest.get("build_id"):
        provenance.append(f"build id {manifest['build_id']}")
    for key in ("code_version", "templates_fingerprint"):
        if versions.get(key):
            provenance.append(f"{key.replace('_', ' ')} {versions[key]}")
    if versions.get("kb_snapshots"):
        provenance.append("knowledge-base snapshots " + ", ".join(versions["kb_snapshots"]))
    distribution, record_sets = [], []
    for config in sorted(infos):
        file_set = f"{config}-parquet"
        distribution.append({"@type": "cr:FileSet", "@id": file_set, "name": file_set,
                             "description": f"The parquet files of the {config!r} config, one per split.",
                             "encodingFormat": "application/x-parquet",
                             "includes": [f["path"] for f in data_files[config]]})
        fields = [{"@type": "cr:Field", "@id": f"{config}/split", "name": "split", "dataType": "sc:Text",
                   "description": "The split (train, validation, test), from the file name.",
                   "source": {"fileSet": {"@id": file_set}, "extract": {"fileProperty": "filename"},
                              "transform": {"regex": r"^(.+)-\d{5}-of-\d{5}\.parquet$"}}}]
        fields += [_croissant_field(f"{config}/{col}", col, feat, file_set) for col, feat in infos[config].features.items()]
        record_sets.append({"@type": "cr:RecordSet", "@id": config, "name": config,
                            "description": f"The rows of the {config!r} config "
                                           f"({sum(s.num_examples for s in infos[config].splits.values())} rows).",
                            "field": fields})
    doc: dict[str, Any] = {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "name": name,
        "description": meta.get("description") or f"{meta.get('pretty_name', name)} {version}: ophthalmic instruction "
                       "data published by the GROK data engine (" + "; ".join(provenance) + ").",
        "conformsTo": "http://mlcommons.org/croissant/1.0",
        "citeAs": f"@misc{{{re.sub(r'[^a-z0-9]', '_', name)}_{version.replace('.', '_')}, title = {{{name} "
                  f"{version}}}, note = {{content fingerprint sha256:{manifest['fingerprint']}}}}}",
        "datePublished": manifest["created_utc"],
        "license": meta.get("license", "other"),
        "version": version,
        "identifier": f"sha256:{manifest['fingerprint']}",
        "keywords": list(meta.get("tags", ["ophthalmology", "oct", "fundus"])),
        "distribution": distribution,
        "recordSet": record_sets,
    }
    if meta.get("url"):
        doc["url"] = meta["url"]
    return doc


def _row_group_rows(ds) -> int:
    """Rows per parquet row group of ``ds``: about :data:`ROW_GROUP_BYTES` of its Arrow data (or ``datasets``'
    smaller ``MAX_ROW_GROUP_SIZE``), fewer where ``datasets`` caps a feature's groups (images, audio)."""
    import datasets
    from datasets.arrow_writer import get_writer_batch_size_from_features
    from datasets.utils.py_utils import convert_file_size_to_int

    limit = min(ROW_GROUP_BYTES, convert_file_size_to_int(datasets.config.MAX_ROW_GROUP_SIZE))
    rows = max(1, len(ds) * limit // max(1, ds.data.nbytes))
    by_features = get_writer_batch_size_from_features(ds.features)
    return min(rows, by_features) if by_features else rows


def _arrow_nbytes(parquet: Path) -> int:
    """Bytes of a parquet file's rows as Arrow, what ``datasets`` records as a split's ``num_bytes`` when it
    loads the file (one column of one row group in memory at a time)."""
    f = open_parquet(parquet)
    return sum(f.read_row_group(g, columns=[name]).nbytes for g in range(f.num_row_groups)
               for name in f.schema_arrow.names)


def load(spec: str, config: str, split: str, registry: str | None = None):
    """Load one split of a pinned version as a ``datasets.Dataset`` (fully offline).

    ``spec`` is ``name@X.Y.Z`` or ``name@latest``. The dataset's ``info.description`` records the
    resolved ``name@version`` and fingerprint.
    """
    import datasets

    info = resolve(spec, registry)
    files = info["manifest"]["counts"].get(config)
    if files is None:
        raise RegistryError(f"{info['name']}@{info['version']} has no config {config!r}; "
                            f"configs: {', '.join(sorted(info['manifest']['counts']))}")
    if split not in files:
        raise RegistryError(f"{info['name']}@{info['version']} config {config!r} has no split {split!r}; "
                            f"splits: {', '.join(files)}")
    fs, root = fsspec.core.url_to_fs(f"{info['path']}/data/{config}")
    paths = sorted(fs.glob(f"{root}/{split}-*-of-*.parquet"))  # one file, or shards of a large split
    if "://" in info["path"] or files[split] == 0:
        # a remote registry (any fsspec URL) is read through fsspec; an empty split keeps its features
        tables = []
        for path in paths:
            with fs.open(path, "rb") as fh:
                tables.append(pq.read_table(fh))
        ds = datasets.Dataset(pa.concat_tables(tables))
    else:
        ds = datasets.Dataset.from_parquet(paths if len(paths) > 1 else paths[0], keep_in_memory=False)
    ds.info.description = json.dumps({"dataset": f"{info['name']}@{info['version']}",
                                      "fingerprint": info["fingerprint"]})
    return ds
