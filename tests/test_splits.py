"""Splits by patient, duplicate removal and decontamination."""

from __future__ import annotations

import collections

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grok.splits import PatientSplits, assign_splits, decontaminate, dedup


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), n_labels=st.integers(1, 7), seed=st.integers(0, 5),
       eyes=st.booleans())
def test_patient_level_disjoint_deterministic_order_free(n, n_labels, seed, eyes):
    rows = []
    for i in range(n):
        for eye in (("OD", "OS") if eyes else ("OD",)):
            rows.append({"patient_id": f"P{i:05d}", "label": f"l{(i * 7) % n_labels}", "eye": eye})
    df = pd.DataFrame(rows)
    a = assign_splits(df, seed=seed)
    b = assign_splits(df.sample(frac=1.0, random_state=1), seed=seed)  # row order does not matter
    assert a == b
    assert set(a) == set(df.patient_id)  # every patient exactly once
    counts = collections.Counter(a.values())
    for split, ratio in zip(("train", "validation", "test"), (0.8, 0.1, 0.1)):
        assert abs(counts.get(split, 0) - ratio * n) <= 1.0 + 1e-9


def test_strata_spread_over_splits():
    df = pd.DataFrame({"patient_id": [f"p{i}" for i in range(300)], "label": [["a", "b", "c"][i % 3] for i in range(300)]})
    a = assign_splits(df, ratios=(0.6, 0.2, 0.2), seed=3)
    per = collections.Counter((df.label[i], a[f"p{i}"]) for i in range(300))
    for lab in "abc":
        assert abs(per[(lab, "train")] - 60) <= 2 and abs(per[(lab, "test")] - 20) <= 2


def test_patient_splits_are_the_dict_as_arrays():
    pat = pd.DataFrame({"patient_id": [f"P{i:03d}" for i in range(40)] + ["P7", "Q"],
                        "label": ["amd", "normal", "dr", "normal"] * 10 + ["amd", "dr"]})
    d = assign_splits(pat, seed=3)
    ps = PatientSplits(d)
    assert dict(ps) == d and len(ps) == len(d) and list(ps) == sorted(d)
    assert all(ps[p] == s for p, s in d.items()) and "P999" not in ps and ps.get("P0000") is None
    with pytest.raises(KeyError):
        ps["P00"]  # a prefix of a patient id is not that patient
    # per row, as Series.map(dict) gives it: looked up per distinct patient, NaN where a patient has no split
    rows = pd.Series(["P001", "Q", "P039", "nobody", "P001", "a-much-longer-id-than-any-patient"] * 3)
    for series in (rows, rows.astype("category")):
        got, want = ps.of(series), series.map(d)
        assert got.isna().sum() == 6 and got.astype("category").equals(want.astype("category"))
    assert len(ps.of(pd.Series([], dtype=object))) == 0 and len(PatientSplits({}).of(rows).dropna()) == 0


def test_bad_ratios():
    with pytest.raises(ValueError, match="sum"):
        assign_splits(pd.DataFrame({"patient_id": ["a"], "label": ["x"]}), ratios=(0.5, 0.2, 0.2))


def test_dedup_exact_and_near():
    base = "Central subfield thickness is 312 um, thickened for age; intraretinal fluid is present in the inner ring."
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "text": [
        base,
        base.upper() + "  ",  # exact after normalisation
        base.replace("present in the inner ring.", "present in the inner ring!"),  # near
        "A completely different report about the optic disc and cup-to-disc ratio of 0.7 in this eye.",
    ]})
    kept, removed = dedup(df, threshold=0.8)
    assert list(kept.id) == ["a", "d"]
    assert dict(zip(removed.id, removed.duplicate_of)) == {"b": "a", "c": "a"}
    assert len(kept) + len(removed) == len(df)


def test_decontaminate_removes_train_copies_of_test():
    test = pd.DataFrame({"id": ["t1"], "text": ["the drusen volume in the central 3 mm is 0.05 mm3 which is large"]})
    train = pd.DataFrame({"id": ["x1", "x2"], "text": [
        "the drusen volume in the central 3 mm is 0.05 mm3 which is large",
        "retinal nerve fibre layer thinning in the superior and inferior sectors suggests glaucoma"]})
    kept, removed = decontaminate(train, test, threshold=0.8)
    assert list(kept.id) == ["x2"] and list(removed.duplicate_of) == ["t1"]
