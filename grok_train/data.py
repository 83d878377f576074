"""Pinned dataset pull: ``NAME@VERSION`` through ``grok.registry`` or a local HF dataset folder.

Every job resolves a :class:`DatasetPin` (name, version, fingerprint) before it trains, writes it into
each checkpoint and metrics file, and fails before training when the version does not exist.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grok_train.errors import DatasetNotFoundError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    import datasets

#: Name of the metadata file a registry version folder carries (name, version, fingerprint ...).
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class DatasetPin:
    """The exact dataset a job used."""

    name: str
    version: str
    fingerprint: str
    """The registry's fingerprint, or for a local folder without one the sha256 of its parquet files."""
    path: str
    """Folder the rows were read from."""
    source: str
    """``registry`` or ``local``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"name@1.2.0"`` -> ``("name", "1.2.0")``; raise :class:`DatasetNotFoundError` otherwise."""
    name, sep, version = spec.partition("@")
    if not sep or not name or not version:
        raise DatasetNotFoundError(
            f"dataset spec {spec!r} is not NAME@VERSION; jobs only train on pinned versions "
            "(e.g. --dataset grok-phantom@0.1.0)"
        )
    return name, version


def _import_registry() -> Any:
    try:
        from grok import registry  # lazy: grok.registry is the lead's publishing side
    except ImportError as exc:
        raise MissingDependencyError(
            f"grok.registry cannot be imported ({exc}); install the project (`pip install -e .`) "
            "or read a local dataset folder with --dataset-path DIR"
        ) from exc
    return registry


def _local_fingerprint(root: Path) -> str:
    """sha256 over the relative paths and bytes of every parquet file under ``root/data``."""
    digest = hashlib.sha256()
    for f in sorted((root / "data").rglob("*.parquet")):
        digest.update(str(f.relative_to(root)).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_local(dataset_path: str | Path) -> DatasetPin:
    """Describe a local HF dataset folder; name/version/fingerprint come from its manifest.json if present."""
    root = Path(dataset_path)
    if not (root / "data").is_dir():
        raise DatasetNotFoundError(
            f"{root}: not a dataset folder (expected {root / 'data'}/<config>/<split>-*.parquet); "
            "pass the folder of a published version"
        )
    manifest: dict[str, Any] = {}
    if (root / MANIFEST_NAME).is_file():
        try:
            manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetNotFoundError(f"{root / MANIFEST_NAME}: not valid JSON ({exc}); republish the version") from exc
    return DatasetPin(
        name=str(manifest.get("name") or root.name),
        version=str(manifest.get("version") or "local"),
        fingerprint=str(manifest.get("fingerprint") or _local_fingerprint(root)),
        path=str(root.resolve()),
        source="local",
    )


def resolve_dataset(
    dataset_spec: str | None = None, registry: str | None = None, *, dataset_path: str | Path | None = None
) -> DatasetPin:
    """Resolve a pinned registry version (``dataset_spec``) or a local folder (``dataset_path``)."""
    if dataset_path is not None:
        return resolve_local(dataset_path)
    if dataset_spec is None:
        raise DatasetNotFoundError("no dataset: pass --dataset NAME@VERSION or --dataset-path DIR")
    name, version = parse_spec(dataset_spec)
    reg = _import_registry()
    try:
        info = reg.resolve(dataset_spec, registry)
    except Exception as exc:  # the registry's own not-found errors vary; re-raise one clear error
        raise DatasetNotFoundError(
            f"dataset {dataset_spec!r} not found in registry {registry or '(default)'}: {exc}. "
            f"Check the name and that version {version!r} was published."
        ) from exc
    return DatasetPin(
        name=str(info.get("name", name)),
        version=str(info.get("version", version)),
        fingerprint=str(info.get("fingerprint", "")),
        path=str(info.get("path", "")),
        source="registry",
    )


def load_split(
    dataset_spec: str | None,
    config: str,
    split: str,
    registry: str | None = None,
    *,
    dataset_path: str | Path | None = None,
    max_rows: int | None = None,
    allow_empty: bool = False,
) -> datasets.Dataset:
    """Load one split of one config as a ``datasets.Dataset``.

    Parameters
    ----------
    dataset_spec : ``NAME@VERSION`` read through ``grok.registry.load`` (ignored when dataset_path is given).
    config : dataset config, e.g. ``alignment``, ``instructions``, ``benchmark``.
    split : split name, e.g. ``train``, ``validation``, ``test``.
    registry : registry root/URL passed to ``grok.registry``.
    dataset_path : a local HF dataset folder; rows come from ``data/<config>/<split>-*.parquet``.
    max_rows : keep only the first ``max_rows`` rows.
    allow_empty : return an empty split instead of raising (optional validation splits).
    """
    if dataset_path is not None:
        root = Path(dataset_path)
        files = sorted((root / "data" / config).glob(f"{split}-*.parquet"))
        if not files:
            configs = sorted(p.name for p in (root / "data").iterdir() if p.is_dir()) if (root / "data").is_dir() else []
            splits = sorted({f.name.split("-")[0] for f in (root / "data" / config).glob("*.parquet")}) \
                if (root / "data" / config).is_dir() else []
            raise DatasetNotFoundError(
                f"{root}: no files data/{config}/{split}-*.parquet (configs present: {configs}; "
                f"splits of {config!r}: {splits}); pick an existing config/split"
            )
        try:
            import datasets
        except ImportError as exc:
            raise MissingDependencyError("reading datasets needs `pip install datasets`") from exc
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    else:
        if dataset_spec is None:
            raise DatasetNotFoundError("no dataset: pass --dataset NAME@VERSION or --dataset-path DIR")
        parse_spec(dataset_spec)
        reg = _import_registry()
        try:
            ds = reg.load(dataset_spec, config, split, registry)
        except Exception as exc:
            raise DatasetNotFoundError(
                f"cannot load {dataset_spec!r} config {config!r} split {split!r} from registry "
                f"{registry or '(default)'}: {exc}"
            ) from exc
    if max_rows is not None and len(ds) > max_rows:
        ds = ds.select(range(max_rows))
    if len(ds) == 0 and not allow_empty:
        raise DatasetNotFoundError(f"{dataset_spec or dataset_path}: config {config!r} split {split!r} is empty")
    return ds
