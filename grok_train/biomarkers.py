"""Biomarker vectors for alignment: canonical order, z-score normalisation, missing values.

Normalisation uses normal ranges (mean, sd per biomarker id) that the caller takes from the knowledge
base; ids without a usable range fall back to the training split's own statistics, with a warning that
names them. Missing values stay NaN here; the biomarker encoder replaces them with a learned mask token.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from grok_train.errors import BadInputError, ConfigError


def values_matrix(rows_values: Sequence[Sequence[float | None]], n_ids: int) -> np.ndarray:
    """Stack per-row value lists into a float64 (N, K) array; None -> NaN. Rows must have K values."""
    out = np.full((len(rows_values), n_ids), np.nan, dtype=np.float64)
    for i, vals in enumerate(rows_values):
        if vals is None or len(vals) != n_ids:
            raise BadInputError(
                f"row {i}: biomarker_values has {None if vals is None else len(vals)} values, expected {n_ids} "
                "(one per biomarker_ids entry); republish the dataset"
            )
        out[i] = [np.nan if v is None else float(v) for v in vals]
    return out


def load_normal_ranges(path: str | Path) -> dict[str, tuple[float, float]]:
    """Read ``{id: [mean, sd]}`` or ``{id: {mean: .., sd: ..}}`` from a YAML or JSON file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"normal_ranges_file {p} not found; export the knowledge base's ranges or drop the key")
    raw = yaml.safe_load(p.read_text(encoding="utf-8")) if p.suffix in (".yaml", ".yml") else json.loads(p.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping biomarker id -> [mean, sd]")
    out: dict[str, tuple[float, float]] = {}
    for key, val in raw.items():
        if isinstance(val, dict):
            mean, sd = val.get("mean"), val.get("sd")
        elif isinstance(val, (list, tuple)) and len(val) == 2:
            mean, sd = val
        else:
            raise ConfigError(f"{p}: {key}: expected [mean, sd] or {{mean, sd}}, got {val!r}")
        out[str(key)] = (float(mean), float(sd))
    return out


@dataclass
class BiomarkerNormaliser:
    """z = (value - mean) / sd per biomarker, in a fixed id order.

    ``source[k]`` says where biomarker k's (mean, sd) came from: ``ranges`` (passed in, i.e. the knowledge
    base), ``dataset`` (training-split statistics, used as a fallback) or ``unavailable`` (no range and
    no observed value: mean 0, sd 1, every value of it is missing anyway).
    """

    ids: tuple[str, ...]
    mean: np.ndarray
    """(K,) float64, in the unit of each id."""
    sd: np.ndarray
    """(K,) float64, > 0."""
    source: tuple[str, ...]

    @classmethod
    def fit(cls, ids: Sequence[str], values: np.ndarray,
            ranges: Mapping[str, tuple[float, float]] | None = None) -> BiomarkerNormaliser:
        """Use ``ranges[id]`` where given and valid (sd > 0); otherwise the mean/sd of ``values[:, k]`` (N, K)."""
        ranges = dict(ranges or {})
        k = len(ids)
        mean = np.zeros(k)
        sd = np.ones(k)
        source: list[str] = []
        fallback: list[str] = []
        for j, bid in enumerate(ids):
            rng = ranges.get(bid)
            if rng is not None and math.isfinite(rng[0]) and math.isfinite(rng[1]) and rng[1] > 0:
                mean[j], sd[j] = rng
                source.append("ranges")
                continue
            col = values[:, j]
            col = col[np.isfinite(col)]
            if col.size == 0:
                source.append("unavailable")
                continue
            mean[j] = float(col.mean())
            s = float(col.std())
            sd[j] = s if s > 0 else 1.0
            source.append("dataset")
            fallback.append(bid)
        if fallback:
            warnings.warn(
                f"no normal range for {len(fallback)} biomarker(s) {fallback[:6]}{'...' if len(fallback) > 6 else ''}; "
                "normalising them with training-split statistics (pass the knowledge base's ranges via "
                "normal_ranges_file to fix)",
                UserWarning,
                stacklevel=2,
            )
        return cls(tuple(ids), mean, sd, tuple(source))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """(N, K) raw values -> (N, K) float32 z-scores; NaN (missing) stays NaN."""
        if values.shape[-1] != len(self.ids):
            raise BadInputError(f"expected {len(self.ids)} biomarker values per row, got {values.shape[-1]}")
        return ((values - self.mean) / self.sd).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "mean": self.mean.tolist(), "sd": self.sd.tolist(), "source": list(self.source)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BiomarkerNormaliser:
        return cls(tuple(d["ids"]), np.asarray(d["mean"], float), np.asarray(d["sd"], float), tuple(d["source"]))
