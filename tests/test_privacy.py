"""Privacy: hashed deny lists, the whole-build scan (every format, a demo-like build, a published version,
the publish refusal) and no identifier ever written by the checks themselves."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grok.ingest.deid import DeidConfig
from grok.ingest.pipeline import IngestConfig, ingest
from grok.privacy.denylist import DENY_LIST_FILE, DenyList, DenyListSpool, tokens
from grok.privacy.scan import ScanError, scan, scan_path

KEY = "test-secret-key"  # conftest sets GROK_PSEUDONYM_KEY to this, so CLI runs share it


def _no_plain(text: str, planted: list[str]) -> None:
    low = text.lower()
    for p in planted:
        assert p.lower() not in low, "an identifier was written"


# ------------------------------------------------------------------------------------------- deny lists
def test_tokens_normalise_case_punctuation_accents_and_keep_decimals():
    assert tokens("WINTERBOTTOM^ETHELINDA") == tokens("Winterbottom,  ethelinda") == ["winterbottom", "ethelinda"]
    assert tokens("Zoë O'Brien-Smith") == ["zoe", "o", "brien", "smith"]
    assert tokens("MRN1234567") == tokens("mrn 1234567") == ["mrn", "1234567"]
    assert tokens("thickness 271.123456 um") == ["thickness", "271.123456", "um"]


def test_deny_list_matches_spellings_and_never_holds_an_identifier(tmp_path):
    d = DenyList.from_identifiers([("WINTERBOTTOM^ETHELINDA", "patient_name"), ("19450312", "birth_date"),
                                   ("MRN1234567", "patient_id"), ("14 Lantern Row, Dunmore", "address")], KEY)
    text = ("Ethelinda Winterbottom (mrn-1234567), born 12/03/1945 and 1945-03-12, of 14 LANTERN ROW DUNMORE; "
            "measured 0.19450312 and 1945.3")
    assert d.hits(text) == {"patient_name": 1, "patient_id": 1, "birth_date": 2, "address": 1}
    assert d.count("winterbottom") == 0  # only whole entries: the name parts were not given
    assert d.count("central subfield thickness 271.1 um, 19 45 03 12") == 0
    path = d.save(tmp_path / "deny.json")
    raw = path.read_text()
    _no_plain(raw, ["winterbottom", "ethelinda", "1234567", "19450312", "lantern", "1945"])
    again = DenyList.load(path, KEY)
    assert again.hits(text) == d.hits(text)
    with pytest.raises(ValueError, match="GROK_PSEUDONYM_KEY"):
        DenyList.load(path, "another-secret")


def test_deny_list_token_cache_is_bounded_and_finds_the_same(monkeypatch):
    """Issue 22: a build's text holds hundreds of thousands of distinct tokens (every measured number); the
    per-list cache of their keyed hashes is cleared when full, and the hits do not depend on it."""
    import grok.privacy.denylist as denylist

    d = DenyList.from_identifiers([("WINTERBOTTOM^ETHELINDA", "patient_name"), ("MRN1234567", "patient_id")], KEY)
    rng = np.random.default_rng(0)
    text = " ".join(f"{x:.3f} um" for x in rng.uniform(0, 400, 3000)) + " Ethelinda Winterbottom, mrn-1234567; " \
        + " ".join(f"{x:.2f}" for x in rng.uniform(0, 1, 3000)) + " Winterbottom Ethelinda"
    expected = {"patient_name": 2, "patient_id": 1}
    assert d.hits(text) == expected
    assert len(d._cache) > 3000  # the default cap holds them all
    monkeypatch.setattr(denylist, "TOKEN_CACHE_ENTRIES", 64)
    d._cache.clear()
    assert d.hits(text) == expected
    assert len(d._cache) <= 64


def test_spooled_deny_list_saves_the_same_file_and_holds_no_entry(tmp_path, monkeypatch):
    """Issue 22: ingestion spools its deny list to disk (the dict grew with an archive's patients); the saved file is
    byte for byte the one the in-memory list writes, for the same additions, repeats and a merged older list (whose
    kinds lose to the new ones), read back a few rows at a time; an empty list too."""
    import grok.privacy.denylist as denylist

    monkeypatch.setattr(denylist, "SPOOL_ROWS", 5)
    rng = np.random.default_rng(3)
    people = [(f"{''.join(rng.choice(list('ABCDEFGHIJ'), 6))}^{''.join(rng.choice(list('KLMNOPQRST'), 5))}",
               f"{int(rng.integers(10**6, 10**8))}", f"19{int(rng.integers(20, 99))}0{int(rng.integers(1, 9))}1"
               f"{int(rng.integers(0, 9))}") for _ in range(40)]
    added = [(v, k) for n, i, b in people for v, k in ((n, "patient_name"), (i, "patient_id"), (b, "birth_date"))]
    older = DenyList.from_identifiers([(people[0][1], "other_id"), ("MRN7654321", "patient_id")], KEY)
    for items, merge in ((added + added[:7], older), (added, None), ([], None), ([], older)):
        mem, spool = DenyList(key=KEY.encode()), DenyListSpool(tmp_path / f"spool{len(items)}{merge is None}.arrow", KEY)
        for value, kind in items:
            mem.add(value, kind)
            spool.add(value, kind)
        assert not spool.entries and not spool.first  # nothing held
        if merge is not None:
            mem.update(merge)
            spool.update(merge)
        a, b = mem.save(tmp_path / "mem.json"), spool.save(tmp_path / "spool.json")
        assert a.read_bytes() == b.read_bytes()
        back = DenyList.load(b, KEY)
        assert len(back) == len(mem) > (0 if items or merge else -1)
        if items and merge is not None:  # the spooled list's own kind wins over the merged one's
            assert back.entries[DenyList.from_identifiers([(people[0][1], "x")], KEY).entries.popitem()[0]] \
                == "patient_id"


def test_digests_and_hex_ids_never_match_a_denied_number_inside_them():
    """At thousands of studies, six-digit study numbers are denied by the thousand and the digit runs inside
    SHA-256 digests and the product's ``img-`` ids hit some of them (a 5,000-study build refused to publish
    on 35 such rows). 16 or more hexadecimal characters after at most two letters are one token; the number written
    anywhere else is still found, and a denied hex identifier still matches itself."""
    d = DenyList.from_identifiers([("109611", "study_id"), ("3f2504e04f8911d39a0c0305e82c3301", "patient_id")], KEY)
    assert tokens("img-1bafea109611c112136f") == ["img", "1bafea109611c112136f"]
    assert tokens("S2a879015e6725775 Sd345224ddd234992") == ["s2a879015e6725775", "sd345224ddd234992"]
    assert d.count('{"image_id": "img-1bafea109611c112136f", "sha256": "23916c0ba07a80b9da311e8a109611", '
                   '"study_id": "S2a879015e6109611", "patient_id": "Pd109611ddd234992"}') == 0
    assert d.hits("study 109611; file 109611.dcm; ID109611; 1bafea_109611; xyz1bafea109611c112136f; "
                  "JohnSmith109611") == {"study_id": 6}
    assert d.hits("patient 3F2504E04F8911D39A0C0305E82C3301 seen") == {"patient_id": 1}
    assert tokens("1234567890123456.5 and 271.123456") == ["1234567890123456.5", "and", "271.123456"]


def test_name_words_of_the_products_own_text_are_denied_only_as_the_full_name():
    d = DenyList.from_identifiers([("MACULA^ROWENA", "patient_name"), ("MACULA", "patient_name"),
                                   ("ROWENA", "patient_name")], KEY)
    assert d.count("the macula is normal") == 0
    assert d.hits("Rowena Macula; MACULA^ROWENA; rowena") == {"patient_name": 3}


@pytest.fixture(scope="module")
def ingested(phantom_archive, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ing")
    ingest(str(phantom_archive / "dicom"), out, IngestConfig(deid=DeidConfig(key=KEY)))
    return out


def test_ingest_deny_list_covers_every_planted_identifier_and_is_hashed(ingested, planted):
    raw = (ingested / DENY_LIST_FILE).read_text()
    _no_plain(raw, planted)
    deny = DenyList.load(ingested / DENY_LIST_FILE, KEY)
    missed = [i for i, p in enumerate(planted) if deny.count(p) != 1]
    assert not missed, f"planted identifiers #{missed} are not in the ingest's deny list"
    assert {"patient_name", "patient_id", "birth_date", "accession_number"} <= set(deny.entries.values())


# ------------------------------------------------------------------------------------------- the scan
def _png_with_text(key: str, text: str, compressed: bool) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    (info.add_itxt(key, text, zip=True) if compressed else info.add_text(key, text))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _jpeg_with_exif(text: str, tag: int = 0x013B) -> bytes:
    """A JPEG whose EXIF ``tag`` holds ``text`` (Artist as ASCII; XPAuthor, 0x9C9D, as UTF-16LE)."""
    from PIL import Image

    im = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    exif = im.getexif()
    exif[tag] = text if tag != 0x9C9D else text.encode("utf-16-le") + b"\x00\x00"
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _plant_every_format(folder: Path, ident: dict[str, str]) -> dict[str, str]:
    """One file per format, each with one identifier hidden the way that format hides text; returns
    {relative path: what it holds}. Clean companions of each format hold none."""
    folder.mkdir(parents=True, exist_ok=True)
    name, mrn, dob = ident["name"], ident["mrn"], ident["dob"]
    family, given = name.split("^")
    rows = [{"id": "a", "messages": [{"role": "user", "content": "scan"}, {"role": "assistant", "content": "ok"}],
             "image": {"bytes": _png_with_text("Comment", f"patient {given} {family}", False), "path": "x.png"}},
            {"id": "b", "messages": [{"role": "user", "content": "ok"}], "image": None}]
    pq.write_table(pa.Table.from_pylist(rows), folder / "nested.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": "c", "notes": [f"seen {mrn.lower()}"]}]), folder / "list.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": "d", "born": int(dob)}]), folder / "ints.parquet")
    (folder / "escaped.json").write_text(json.dumps({"who": f"{family.title()}\u00a0{given.title()}"}))
    (folder / "rows.jsonl").write_text(json.dumps({"k": 1}) + "\n" + json.dumps({"dob": dob[:4] + "-" + dob[4:6]
                                                                                  + "-" + dob[6:]}) + "\n")
    (folder / "page.html").write_text(f"<p>{family.title()}&#44;&nbsp;{given.title()}</p>")
    (folder / "run.log").write_text(f"INFO loaded {mrn}\n")
    con = sqlite3.connect(folder / "cache.sqlite")
    con.execute("create table t (k text, v blob)")
    con.execute("insert into t values (?, ?)", ("a", json.dumps({"prompt": f"about {family}"}).encode()))
    con.commit()
    con.close()
    (folder / "photo.png").write_bytes(_png_with_text("Author", name, True))
    (folder / "photo.jpg").write_bytes(_jpeg_with_exif(f"{family}, {given}"))
    (folder / "photo_xp.jpg").write_bytes(_jpeg_with_exif(f"{given} {family}", 0x9C9D))
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName = "P0123456789abcdef"
    block = ds.private_block(0x0099, "VENDOR", create=True)
    block.add_new(0x01, "LO", mrn)
    ds.save_as(folder / "header.dcm", implicit_vr=False, little_endian=True)
    with zipfile.ZipFile(folder / "bundle.npz", "w") as zf:
        buf = io.BytesIO()
        np.save(buf, np.array([f"{given} {family}"]))
        zf.writestr("names.npy", buf.getvalue())
    (folder / "notes.txt.gz").write_bytes(gzip.compress(f"{mrn}\n".encode()))
    (folder / f"{family}_{mrn}.txt").write_text("nothing inside; the name is the leak")
    clean = folder / "clean"
    clean.mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": "z", "v": 271.123456, "t": "OD within normal limits"}]),
                   clean / "t.parquet")
    (clean / "c.png").write_bytes(_png_with_text("Software", "GROK", False))
    (clean / "c.html").write_text("<p>P0123456789abcdef, img-7df6e81acda25bdbef02, 2021-03-04</p>")
    return {p.relative_to(folder).as_posix(): "" for p in folder.rglob("*") if p.is_file() and "clean" not in p.parts}


def test_scan_finds_identifiers_in_every_format_and_never_names_them(tmp_path, planted):
    ident = {"name": next(p for p in planted if "^" in p and "TECHNICIAN" not in p),
             "mrn": next(p for p in planted if p.startswith("MRN")),
             "dob": next(p for p in planted if p.isdigit() and len(p) == 8)}
    expected = _plant_every_format(tmp_path / "b", ident)
    deny = DenyList.from_identifiers(planted, KEY)
    rep = scan_path(tmp_path / "b", deny)
    hit_files = {h.path for h in rep.hits}
    assert len(hit_files) == len(expected), (sorted(hit_files), sorted(expected))
    assert not any(h.path.startswith("clean/") for h in rep.hits)
    assert not rep.not_scanned and not rep.success
    assert any(h.path.startswith("<redacted ") for h in rep.hits)  # the identifying file name is not printed
    _no_plain(json.dumps(rep.to_dict()) + rep.summary(), planted)


def test_scan_needs_identifiers(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ScanError, match="--identifiers"):
        scan(tmp_path)


def _grok(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grok", *args], capture_output=True, text=True, check=False)


def test_operator_only_locate_map_is_the_only_file_with_identifiers(phantom_archive, planted, tmp_path):
    """Banner exports are quarantined; the operator's key -> path map (folder names hold names) is the one
    file allowed to name patients, and only under an operator-only name."""
    out = tmp_path / "ing"
    ingest(str(phantom_archive / "exports"), out, IngestConfig(deid=DeidConfig(key=KEY)))
    loc = _grok("ingest", str(phantom_archive / "exports"), "--out", str(out), "--locate")
    assert loc.returncode == 0 and loc.stdout.count("\n") == 8, loc.stderr
    (out / "locate.operator-only.tsv").write_text(loc.stdout)
    ids = phantom_archive / "truth" / "planted_identifiers.json"
    res = _grok("privacy-scan", str(out), "--identifiers", str(ids), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads(res.stdout)
    assert [h["path"] for h in rep["hits"]] == ["locate.operator-only.tsv"] and rep["hits"][0]["operator_only"]
    _no_plain(res.stdout + res.stderr, planted)
    shutil.copy(out / "locate.operator-only.tsv", out / "locate.tsv")  # the same map under an ordinary name
    res = _grok("privacy-scan", str(out), "--identifiers", str(ids))
    assert res.returncode == 1 and "locate.tsv:" in res.stderr
    _no_plain(res.stdout + res.stderr, planted)


def test_prefect_database_is_scanned_when_given(planted, phantom_archive, tmp_path):
    clean = tmp_path / "build"
    clean.mkdir()
    (clean / "build.json").write_text(json.dumps({"complete": True}))
    db = tmp_path / "prefect.db"
    con = sqlite3.connect(db)
    con.execute("create table artifact (id text, data json)")
    con.execute("insert into artifact values (?, ?)", ("a1", json.dumps({"markdown": f"seen {planted[2]}"})))
    con.commit()
    con.close()
    ids = str(phantom_archive / "truth" / "planted_identifiers.json")
    assert _grok("privacy-scan", str(clean), "--identifiers", ids).returncode == 0
    res = _grok("privacy-scan", str(clean), "--identifiers", ids, "--prefect-db", str(db), "--json")
    assert res.returncode == 1
    assert [(h["path"], h["file_kind"], h["hits"]) for h in json.loads(res.stdout)["hits"]] == [("prefect.db", "sqlite", 1)]


# ------------------------------------------------------------------------------------------- a build
SMALL = {"subjects": 7, "seed": 1, "oct_shape": [5, 160, 128], "oct_spacing_um": [8.0, 46.875, 1500.0],
         "cfp_size": 320}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from grok.stages.config import BuildConfig
    from grok.stages.runner import run_build

    tmp = tmp_path_factory.mktemp("privacy-build")
    cfg = BuildConfig.model_validate({
        "work_dir": str(tmp / "build"), "source": {"phantom": SMALL}, "measure": {"shard_size": 7},
        "instruct": {"mode": "template", "seed": 0, "shard_size": 7},
        # the low-resolution phantom's label-contradicted rows: see tests/test_build.py small_config
        "publish": {"name": "private", "registry": str(tmp / "registry"), "split_ratios": [0.6, 0.2, 0.2],
                    "verifier_pass_rate": 0.8}})
    reports = {r.stage: r for r in run_build(cfg)}
    return Path(cfg.work_dir), reports["publish"].outputs["path"]


def test_demo_build_and_published_version_hold_no_identifier(built):
    build, version = built
    truth = build / "phantom" / "truth" / "planted_identifiers.json"
    rep = scan(build, identifiers=[build / "ingest" / DENY_LIST_FILE, truth], key=KEY)
    assert rep.success, rep.summary()
    assert rep.not_scanned == [{"path": "phantom", "why": rep.not_scanned[0]["why"]}]
    assert rep.files_by_kind.get("parquet", 0) >= 5 and rep.files_by_kind.get("html", 0) >= 8
    assert rep.identifiers >= len(json.loads(truth.read_text()))
    # the Great Expectations stores were read, and hold counts, not identifiers
    docs = list((build / "contracts").rglob("*.json")) + list((build / "contracts").rglob("*.html"))
    assert docs and any("__known_identifiers__" in p.read_text() for p in docs)
    pub = _grok("privacy-scan", version, "--identifiers", str(build / "ingest" / DENY_LIST_FILE), "--json")
    assert pub.returncode == 0, pub.stdout + pub.stderr
    assert json.loads(pub.stdout)["files_scanned"] > 10


def test_scan_finds_a_planted_identifier_in_the_build(built, planted, tmp_path):
    """The same scan is not blind: one identifier written into a contract's data docs is found there."""
    build, _ = built
    names = json.loads((build / "phantom" / "truth" / "planted_identifiers.json").read_text())
    page = next((build / "contracts" / "instructions").rglob("index.html"))
    copy = tmp_path / "docs"
    shutil.copytree(page.parent, copy)
    (copy / "index.html").write_text((copy / "index.html").read_text() + f"<td>{names[0]}</td>")
    rep = scan_path(copy, DenyList.load(build / "ingest" / DENY_LIST_FILE, KEY))
    assert [h.path for h in rep.hits] == ["index.html"] and rep.hits[0].hits == 1


def test_publish_refuses_when_its_inputs_hold_an_identifier(built, tmp_path):
    from grok.publish import PublishConfig, PublishError, publish_build

    build, _ = built
    names = json.loads((build / "phantom" / "truth" / "planted_identifiers.json").read_text())
    work = tmp_path / "b"
    shutil.copytree(build, work, ignore=shutil.ignore_patterns("phantom", "contracts"))
    # records.jsonl is no contract's table: only the scan reads it
    lines = (work / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["notes"] = f"referred by {names[1].title()}"
    (work / "records.jsonl").write_text("\n".join([json.dumps(rec)] + lines[1:]) + "\n")
    reg = tmp_path / "reg"
    with pytest.raises(PublishError, match=r"privacy scan(.|\n)*records\.jsonl: 1 identifiers") as err:
        publish_build(work, PublishConfig(name="private", registry=str(reg)))
    _no_plain(str(err.value), names)
    assert not (reg / "private").exists() or not any((reg / "private").glob("[0-9]*"))
