"""Content keys: a shard's output is reused only while the key recorded with it matches its inputs.

Each sharded stage describes a shard by its real inputs (for measure: every study row and the manifest
row, with the pixel and source-file sha256s, of every image it uses; the config section that shapes
the output; the code versions. For instruct: the study records, the instruct settings, the build id,
the knowledge-base snapshot and the hash of every template file) and :func:`content_key` turns that
description into the key. The shard writes the key next to its output (:func:`shard_name` says
where), so a replaced image, a changed setting or a new template is measured or generated again,
and an unchanged shard is skipped by the plain runner and by Prefect's cache alike.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def content_key(inputs: Mapping[str, Any]) -> str:
    """sha256 (32 hex digits) of the canonical JSON of a shard's inputs."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class StreamKey:
    """A content key over a description (as :func:`content_key`) and then byte strings added one at a time
    (a shard's input lines as they are read), so the parts are never held together. Each part is hashed with
    its length, so parts cannot run into each other; a different split of the same bytes is a different key."""

    def __init__(self, inputs: Mapping[str, Any]) -> None:
        self._h = hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":"),
                                            default=_json_default).encode())

    def add(self, part: bytes) -> None:
        self._h.update(len(part).to_bytes(8, "big"))
        self._h.update(part)

    def key(self) -> str:
        return self._h.hexdigest()[:32]


def shard_name(study_ids: Iterable[str]) -> str:
    """Where a shard's output lives: a hash of its sorted study ids (its key is stored with the output)."""
    h = hashlib.sha256()
    for s in sorted(study_ids):
        h.update(s.encode() + b"\n")
    return h.hexdigest()[:16]


def files_digest(root: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (templates, knowledge-base folders)."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def source_digest(*modules: str) -> str:
    """sha256 of the Python source of ``modules`` (a package counts with every module under it).

    Part of a shard's "code version": the package version is not bumped on every change, the code that
    measures or generates is, so an edited extractor re-measures instead of serving stale values.
    """
    h = hashlib.sha256()
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for f in files:
            h.update(f"{name}:{f.relative_to(origin.parent)}\n".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:32]


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
