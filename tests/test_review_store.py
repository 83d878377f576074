"""Review storage on SQLite and on a real PostgreSQL server, and the decision arithmetic (outcomes, stale reviews,
Cohen's kappa, the double-review sample, content hashes).

The PostgreSQL tests start a throwaway cluster (initdb + pg_ctl on a temporary folder and a free port) and skip,
saying why, when the server binaries are absent (``bash scripts/bootstrap.sh --test`` installs Debian's
``postgresql`` as root) or psycopg is not installed.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from grok.review.decisions import (
    ReviewError,
    cohen_kappa,
    content_hash,
    double_review,
    outcomes,
    summarise,
)
from grok.review.store import Store


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


@pytest.fixture(scope="module")
def postgres_url():
    """A SQLAlchemy URL of a fresh PostgreSQL cluster, removed after the module."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: bash scripts/bootstrap.sh --test installs "
                    "Debian's postgresql when run as root")
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[review]'")
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="grok-pg-")
    if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as the postgres user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run a PostgreSQL cluster as")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(root, "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "grok", "--no-sync"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -F", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://grok@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = Store(tmp_path / "reviews.sqlite")
    else:
        url = request.getfixturevalue("postgres_url")
        s = Store(url)
        with s.engine.begin() as c:  # a clean log per test on the shared cluster
            c.execute(sa.text("DELETE FROM review_events"))
            c.execute(sa.text("DELETE FROM review_curators"))
    yield s
    s.close()


def _rec(store: Store, row: str, action: str, curator: str = "ann", h: str = "h1", **kw):
    return store.record(row_id=row, content_hash=h, source="ds@0.1.0", family="report", curator=curator,
                        action=action, **kw)


def test_decisions_append_and_read_back(store):
    msgs = [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "CST 270 µm."}]
    a = _rec(store, "r1", "accept", before=msgs)
    b = _rec(store, "r1", "reject", reason_code="wrong_number", note="too high")
    c = _rec(store, "r2", "edit", after=msgs, verdict={"passed": True})
    evs = store.events()
    assert [e["id"] for e in evs] == [a["id"], b["id"], c["id"]] and a["id"] < b["id"] < c["id"]
    assert [e["action"] for e in evs] == ["accept", "reject", "edit"]
    assert evs[0]["before"] and json.loads(evs[0]["before"]) == msgs  # JSON, unicode kept
    assert evs[1]["reason_code"] == "wrong_number" and evs[1]["note"] == "too high"
    assert store.events(after_id=a["id"], row_id="r1") == [evs[1]]
    with pytest.raises(ReviewError, match="reason code"):
        _rec(store, "r1", "reject")
    with pytest.raises(ReviewError, match="unknown action"):
        _rec(store, "r1", "approve")
    assert store.count() == 3  # refused decisions left nothing behind


def test_concurrent_writers_one_transaction_per_decision(store):
    def write(k: int) -> None:
        for i in range(20):
            _rec(store, f"row{i}", "accept" if i % 2 else "flag", curator=f"c{k}")

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    evs = store.events()
    assert len(evs) == 80 == store.count() and len({e["id"] for e in evs}) == 80
    assert {(e["curator"], e["row_id"]) for e in evs} == {(f"c{k}", f"row{i}") for k in range(4) for i in range(20)}


def test_curator_tokens_are_stored_hashed(store):
    token = store.add_curator("ann")
    assert store.curator_for(token) == "ann" and store.curator_for(token + "x") is None
    assert store.curator_for("") is None
    with store.engine.connect() as c:
        stored = [tuple(r) for r in c.execute(sa.text("SELECT name, token_sha256 FROM review_curators"))]
    assert stored and all(token not in v for row in stored for v in row)
    newer = store.add_curator("ann")  # a new token replaces the old one
    assert store.curator_for(token) is None and store.curator_for(newer) == "ann"
    assert store.curator_names() == ["ann"]
    with pytest.raises(ReviewError, match="curator name"):
        store.add_curator("ann smith")


def test_export_writes_every_event(store, tmp_path):
    _rec(store, "r1", "accept")
    _rec(store, "r2", "reject", reason_code="other")
    n = store.export(tmp_path / "decisions.parquet")
    df = pd.read_parquet(tmp_path / "decisions.parquet")
    assert n == 2 and list(df["row_id"]) == ["r1", "r2"] and list(df["action"]) == ["accept", "reject"]
    assert df["reason_code"].tolist()[1] == "other"


def test_stale_reviews_and_outcomes(store):
    _rec(store, "r1", "accept", h="old")
    _rec(store, "r2", "reject", reason_code="other", h="h2", curator="ann")
    _rec(store, "r2", "accept", h="h2", curator="bob")
    _rec(store, "r3", "reject", reason_code="other", h="h3")
    _rec(store, "r3", "accept", h="h3")  # the latest decision of a curator wins
    outs = outcomes(store.events(), {"r1": "new", "r2": "h2", "r3": "h3"})
    assert outs["r1"].state == "stale" and outs["r1"].action is None
    assert outs["r2"].state == "reviewed" and outs["r2"].by_curator == {"ann": "reject", "bob": "accept"}
    assert outs["r3"].action == "accept" and outs["r3"].by_curator == {"ann": "accept"}
    s = summarise(store.events(), {"r1": ("new", "report"), "r2": ("h2", "report"), "r3": ("h3", "cot"),
                                   "r4": ("h4", "cot")})
    assert s["rows"] == 4 and s["reviewed"] == 2 and s["stale"] == 1 and s["coverage"] == 0.5
    assert s["per_family"]["report"]["double_reviewed"] == 1 and s["per_family"]["report"]["agreement"] == 0
    assert s["per_family"]["cot"]["acceptance"] == 1.0
    # publication hashes only the rows with events and counts every row per family: the same summary
    decided = {"r1": ("new", "report"), "r2": ("h2", "report"), "r3": ("h3", "cot")}
    assert summarise(store.events(), decided, family_rows={"report": 2, "cot": 2}) == s
    assert summarise(store.events(), decided)["rows"] == 3  # without the counts, only the rows given count


def test_cohen_kappa_textbook_values():
    # 50 items, two raters: yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> po 0.7, pe 0.5, kappa 0.4
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("a", "a"), ("b", "b")]) == 1.0
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)
    assert cohen_kappa([]) is None


def test_double_review_share_and_content_hash():
    ids = [f"row{i}" for i in range(20000)]
    share = sum(double_review(r, 0.1) for r in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert sum(double_review(r, 0.0) for r in ids) == 0 and all(double_review(r, 1.0) for r in ids[:100])
    assert [double_review(r, 0.1, seed=1) for r in ids[:500]] != [double_review(r, 0.1) for r in ids[:500]]
    row = {"study_id": "S1", "task": "report", "messages": [{"role": "assistant", "content": "CST 270 µm."}],
           "images": ["media/S1/cfp.jpg"]}
    published = {**row, "images": [{"path": "cfp.jpg", "bytes": b"..."}]}
    assert content_hash(row) == content_hash(published)  # build folder and version read the same
    assert content_hash(row) != content_hash({**row, "messages": [{"role": "assistant", "content": "CST 271 µm."}]})


def test_unusable_database_names_the_fix(tmp_path):
    with pytest.raises(ReviewError, match="cannot be opened"):
        Store(tmp_path / "missing-dir" / "reviews.sqlite")
    assert Path(tmp_path).exists()


def test_cli_add_curator_and_export(tmp_path):
    from typer.testing import CliRunner

    from grok.cli import app

    db = tmp_path / "reviews.sqlite"
    run = CliRunner().invoke(app, ["review", "add-curator", "ann", "--db", str(db)])
    assert run.exit_code == 0, run.output
    token = run.stdout.strip().splitlines()[-1]
    store = Store(db)
    assert store.curator_for(token) == "ann"
    _rec(store, "r1", "accept", curator="ann")
    out = tmp_path / "d.parquet"
    run = CliRunner().invoke(app, ["review", "export", "--db", str(db), "--out", str(out), "--json"])
    assert run.exit_code == 0 and json.loads(run.stdout)["events"] == 1
    assert pd.read_parquet(out)["curator"].tolist() == ["ann"]
    run = CliRunner().invoke(app, ["review", "export", "--out", str(out)])
    assert run.exit_code == 2 and "--db" in run.output  # neither --db nor --source: names the fix
    run = CliRunner().invoke(app, ["review", str(tmp_path / "nowhere")])
    assert run.exit_code == 3 and "no such folder" in " ".join(run.output.split())  # the message wraps with the path
