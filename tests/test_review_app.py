"""The curator review app end to end: a published phantom version reviewed in headless Chromium (Playwright),
decisions persisted, two curators at once, model text inert, a killed server, the next publish applying the
decisions; plus the token, CSRF and origin checks through the ASGI test client.

The build (4 phantom subjects from the session's ``phantom_archive``) and its publication are made once for the
module; each server is the real ``grok review`` command in a subprocess.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from grok.publish import PublishConfig, publish_build
from grok.review.app import create_app, wait_until_served
from grok.review.source import ReviewSource
from grok.review.store import Store
from grok.stages.config import BuildConfig
from grok.stages.runner import run_build
from tests.browser import _ARGS

ROOT = Path(__file__).resolve().parents[1]
PASSING_EDIT = " Reviewed by a curator."
FAILING_EDIT = " The central subfield thickness is 999 µm."
SCRIPT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def published(phantom_archive, tmp_path_factory):
    """(build folder, version folder) of the session's phantom archive built and published once."""
    tmp = tmp_path_factory.mktemp("review")
    cfg = BuildConfig.model_validate({
        "work_dir": str(tmp / "build"),
        "source": {"archive": str(phantom_archive / "dicom"), "cohort": str(phantom_archive / "cohort.csv")},
        "instruct": {"mode": "template", "seed": 0},
        "publish": {"name": "rv", "registry": str(tmp / "registry"), "split_ratios": [0.5, 0.25, 0.25],
                    "verifier_pass_rate": 0.5},
    })
    run_build(cfg)
    return Path(cfg.work_dir), tmp / "registry" / "rv" / "0.1.0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(source: Path, db: Path, *extra: str):
    """``grok review SOURCE --db DB`` on a free loopback port; yields (base URL, process)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "grok.cli", "review", str(source), "--db", str(db), "--port",
                             str(port), *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_served(base + "/login", timeout_s=60)
        except OSError:
            proc.kill()
            raise AssertionError(proc.communicate()[0].decode()[-3000:]) from None
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.stdout.close()


@contextmanager
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (bash scripts/bootstrap.sh --test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=_ARGS)
        try:
            yield b
        finally:
            b.close()


def _context(b, **kw):
    """A browser context that ignores the app's Content-Security-Policy: the test's own probes evaluate script,
    and model text must be inert by escaping alone, not because the policy blocks it."""
    return b.new_context(bypass_csp=True, **kw)


def _sign_in(ctx, base: str, name: str):
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/login")
    page.fill("#login-name", name)
    page.press("#login-name", "Enter")
    page.wait_for_url(base + "/")
    return page, errors


def _saved(page, action: str) -> None:
    page.wait_for_function("(a) => document.getElementById('status').textContent.startsWith('saved: ' + a)",
                           arg=action, timeout=10000)


def _edit(page, text: str, verdict: str) -> None:
    """Start editing (``e``), type ``text`` at the end, wait for the live verdict to start with ``verdict``."""
    page.keyboard.press("e")
    page.keyboard.press("Control+End")
    page.keyboard.type(text)
    page.wait_for_function("(v) => document.getElementById('live-verdict').textContent.startsWith(v)", arg=verdict)


def _next_row(page, base: str) -> str:
    before = page.url
    page.keyboard.press("n")
    page.wait_for_url(lambda u: u != before and "/row/" in u)
    page.wait_for_load_state("load")
    return page.locator("#row-id").inner_text()


def test_curator_reviews_a_version_by_keyboard(published, tmp_path):
    build, version = published
    db = tmp_path / "reviews.sqlite"
    n_report = sum(1 for f in (version / "data").glob("*/*.parquet") if "records" not in str(f) and
                   "alignment" not in str(f) for t in pq.read_table(f, columns=["task"]).column("task").to_pylist()
                   if t == "report")
    with serve(version, db, "--build", str(build)) as (base, _proc), browser() as b:
        page, errors = _sign_in(_context(b), base, "alice")
        page.select_option("#f-family", "report")  # the page submits the filter on change
        page.wait_for_url(re.compile(r".*family=report.*"))
        assert page.locator("#progress b").first.inner_text() == str(n_report)
        fams = page.locator("#queue tbody tr td:nth-child(2)").all_inner_texts()
        assert fams and set(fams) == {"report"}
        page.keyboard.press("j")
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r".*/row/.*"))
        ids = [page.locator("#row-id").inner_text()]
        # overlays: shown, hidden by "o", shown again
        overlay = page.locator(".layer-overlay").first
        assert overlay.is_visible()
        page.keyboard.press("o")
        assert not overlay.is_visible() and not page.is_checked("#t-overlay")
        page.keyboard.press("o")
        assert overlay.is_visible()
        disc = page.locator(".layer-disc circle.disc").first  # drawn from the measured disc centre and diameter
        assert disc.is_visible()
        page.keyboard.press("d")
        assert not disc.is_visible() and overlay.is_visible()
        # one transparent layer per structure, each toggled on its own (y: layer boundaries, v: vessels)
        for key, layer in (("y", "layers"), ("v", "vessels")):
            img = page.locator(f"img.layer-s-{layer}").first
            assert img.is_visible() and page.is_checked(f"#t-s-{layer}")
            page.keyboard.press(key)
            assert not img.is_visible() and not page.is_checked(f"#t-s-{layer}") and overlay.is_visible()
            page.keyboard.press(key)
            assert img.is_visible()
        page.keyboard.press("a")
        _saved(page, "accept")
        ids.append(_next_row(page, base))
        page.keyboard.press("r")
        page.keyboard.press("2")  # the second reason code
        _saved(page, "reject")
        ids.append(_next_row(page, base))
        _edit(page, FAILING_EDIT, "fails")
        assert "wrong_number" in page.locator("#live-reasons").inner_text()
        page.keyboard.press("Control+Enter")
        page.wait_for_function("document.getElementById('status').textContent.includes('fails verification')")
        page.click("#btn-needs-review")
        _saved(page, "needs_review")
        ids.append(_next_row(page, base))
        _edit(page, PASSING_EDIT, "verifies")
        page.keyboard.press("Control+Enter")
        _saved(page, "edit")
        # the saved editor is hidden and must not keep the focus, or the next shortcut is read as typing
        assert page.evaluate("document.activeElement.tagName") != "TEXTAREA"
        ids.append(_next_row(page, base))
        page.keyboard.press("f")
        _saved(page, "flag")
        # reload every row: each shows its decision in its history
        for rid, action in zip(ids, ["accept", "reject", "needs_review", "edit", "flag"]):
            page.goto(f"{base}/row/{rid}")
            hist = page.locator("#history").inner_text()
            assert "alice" in hist and action in hist, (rid, action, hist)
        page.goto(base + "/?state=reviewed")
        assert page.locator("#progress b").first.inner_text() == "5"
        assert not errors, errors
    events = Store(db).events()
    assert [(e["row_id"], e["action"], e["curator"]) for e in events] == list(
        zip(ids, ["accept", "reject", "needs_review", "edit", "flag"], ["alice"] * 5))
    assert events[1]["reason_code"] == "wrong_diagnosis"
    assert json.loads(events[3]["after"])[-1]["content"].endswith(PASSING_EDIT)
    assert json.loads(events[3]["verdict"])["passed"] is True
    assert json.loads(events[2]["verdict"])["passed"] is False


def test_two_curators_at_once_and_their_agreement(published, tmp_path):
    build, version = published
    db = tmp_path / "reviews.sqlite"
    src = ReviewSource(version)
    rows = list(src.rows["row_id"][:4])
    with serve(version, db) as (base, _proc), browser() as b:
        pa, _ = _sign_in(_context(b), base, "bob")
        pc, _ = _sign_in(_context(b), base, "carol")
        # both decide the same four rows: agree on three, disagree on one
        for rid, (a, c) in zip(rows, [("a", "a"), ("a", "a"), ("r", "r"), ("a", "f")]):
            for page, key in ((pa, a), (pc, c)):
                page.goto(f"{base}/row/{rid}")
            for page, key in ((pa, a), (pc, c)):  # both pages open, then both decide
                page.keyboard.press(key)
                if key == "r":
                    page.keyboard.press("1")
            for page, key in ((pa, a), (pc, c)):
                _saved(page, {"a": "accept", "r": "reject", "f": "flag"}[key])
        assert "bob" in pa.locator("#curator").inner_text() and "carol" in pc.locator("#curator").inner_text()
        summary = pa.request.get(base + "/api/summary").json()
    events = Store(db).events()
    assert sorted({e["curator"] for e in events}) == ["bob", "carol"] and len(events) == 8
    assert summary["double_reviewed"] == 4
    by = {}
    for e in events:
        by.setdefault(e["row_id"], {})[e["curator"]] = e["action"]
    pairs = [(d["bob"], d["carol"]) for d in by.values()]
    po = sum(a == c for a, c in pairs) / 4
    labels = {x for p in pairs for x in p}
    pe = sum(sum(a == k for a, _ in pairs) * sum(c == k for _, c in pairs) for k in labels) / 16
    assert summary["kappa"] == pytest.approx((po - pe) / (1 - pe), abs=1e-4)


def test_model_text_renders_inert(published, tmp_path):
    build, _version = published
    hostile = tmp_path / "build"
    shutil.copytree(build, hostile, ignore=shutil.ignore_patterns("phantom", "ingest", "measure", "contracts"))
    t = pq.read_table(hostile / "instructions.parquet").to_pylist()
    msgs = t[0]["messages"]
    msgs[-1]["content"] += SCRIPT
    pq.write_table(__import__("pyarrow").Table.from_pylist(t, schema=pq.read_schema(hostile / "instructions.parquet")),
                   hostile / "instructions.parquet")
    with serve(hostile, tmp_path / "r.sqlite") as (base, _proc), browser() as b:
        page, errors = _sign_in(_context(b), base, "dana")
        page.goto(f"{base}/row/{t[0]['id']}")
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#text script, #text img").count() == 0
        assert SCRIPT in page.locator("#text .msg.assistant .content").last.inner_text()
        # the live preview while editing is escaped too
        page.keyboard.press("e")
        page.keyboard.press("Control+End")
        page.keyboard.type('<img src=y onerror="window.__pwned = 3">')
        page.wait_for_function("document.getElementById('live-verdict').textContent.length > 0")
        page.wait_for_timeout(400)
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#text img").count() == 0
        assert not errors, errors


def test_killed_server_leaves_no_partial_decision(published, tmp_path):
    import httpx

    _build, version = published
    db = tmp_path / "reviews.sqlite"
    src = ReviewSource(version)
    ok: list[int] = []
    with serve(version, db) as (base, proc):
        c = httpx.Client(base_url=base)
        c.post("/api/login", json={"name": "erin"}).raise_for_status()
        html = c.get(f"/row/{src.rows['row_id'].iat[0]}").text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)
        stop = threading.Event()

        def hammer():
            i = 0
            while not stop.is_set():
                rid, h = src.rows["row_id"].iat[i % len(src.rows)], src.rows["hash"].iat[i % len(src.rows)]
                body = {"action": "reject", "reason_code": "other", "content_hash": h} if i % 2 else \
                    {"action": "accept", "content_hash": h}
                try:
                    r = c.post(f"/api/decision/{rid}", json=body, headers={"X-CSRF-Token": csrf}, timeout=5)
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    ok.append(r.json()["event"]["id"])
                i += 1

        th = threading.Thread(target=hammer)
        th.start()
        end = time.monotonic() + 30
        while len(ok) < 8 and time.monotonic() < end:  # a stream of writes under way, however loaded the machine
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        th.join(10)
    assert len(ok) > 3
    events = Store(db).events()
    ids = [e["id"] for e in events]
    assert set(ok) <= set(ids) and len(ids) - len(ok) <= 1  # at most the one in flight, committed unanswered
    for e in events:  # every stored decision is whole
        assert e["row_id"] in src.position and e["curator"] == "erin" and e["created_at"]
        assert e["action"] in ("accept", "reject") and (e["reason_code"] == "other") == (e["action"] == "reject")
        assert json.loads(e["before"]) == src.row(e["row_id"]).messages
    import sqlite3

    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_row_page_screenshot_shows_images_and_highlighted_text(published, tmp_path):
    import numpy as np
    from PIL import Image

    build, version = published
    with serve(version, tmp_path / "r.sqlite", "--build", str(build)) as (base, _proc), browser() as b:
        page, _ = _sign_in(_context(b, viewport={"width": 1400, "height": 1000}), base, "finn")
        rid = ReviewSource(version).rows.query("task == 'report'")["row_id"].iat[0]
        page.goto(f"{base}/row/{rid}")
        page.wait_for_function("Array.from(document.querySelectorAll('img.base')).every(i => i.complete && "
                               "i.naturalWidth > 0)")
        shot = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
        imgs = page.locator("#images img.base")
        assert imgs.count() >= 2
        for k in range(imgs.count()):
            box = imgs.nth(k).bounding_box()
            crop = np.asarray(shot.crop((box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"])))
            assert crop.std() > 10, f"image {k} looks blank in the screenshot"
        num = page.locator("#text .hl.num").first
        box = num.bounding_box()
        crop = np.asarray(shot.crop((box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"])))
        green = (np.abs(crop.astype(int) - [214, 245, 214]).sum(axis=2) < 30).mean()
        assert green > 0.3, "the highlighted number does not show its highlight in the screenshot"
        assert page.locator("#text a.hl.bm").count() > 0


def test_tokens_csrf_and_origin_guard_writes(published, tmp_path):
    from fastapi.testclient import TestClient

    _build, version = published
    store = Store(tmp_path / "r.sqlite")
    token = store.add_curator("gail")
    src = ReviewSource(version)
    c = TestClient(create_app(src, store, require_token=True), base_url="http://review.test")
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert c.post("/api/login", json={"name": "gail"}).status_code == 403  # a name is not enough here
    assert c.post("/api/login", json={"token": token + "x"}).status_code == 403
    assert c.post("/api/login", json={"token": token}).status_code == 200
    rid, h = src.rows["row_id"].iat[0], src.rows["hash"].iat[0]
    html = c.get(f"/row/{rid}").text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)
    body = {"action": "accept", "content_hash": h}
    assert c.post(f"/api/decision/{rid}", json=body).status_code == 403
    assert c.post(f"/api/decision/{rid}", json=body, headers={"X-CSRF-Token": csrf,
                                                             "Origin": "http://evil.test"}).status_code == 403
    assert c.post(f"/api/decision/{rid}", json={**body, "content_hash": "0" * 32},
                  headers={"X-CSRF-Token": csrf}).status_code == 409
    assert c.post(f"/api/decision/{rid}", json={"action": "reject", "content_hash": h},
                  headers={"X-CSRF-Token": csrf}).status_code == 422  # no reason code
    r = c.post(f"/api/decision/{rid}", json=body, headers={"X-CSRF-Token": csrf, "Origin": "http://review.test"})
    assert r.status_code == 200 and r.json()["event"]["curator"] == "gail"
    assert [e["curator"] for e in store.events()] == ["gail"]
    raw = (tmp_path / "r.sqlite").read_bytes()
    assert token.encode() not in raw  # only the hash is stored
    assert "Content-Security-Policy" in c.get(f"/row/{rid}").headers


def test_next_publish_applies_the_decisions(published, tmp_path):
    build, version = published
    db = tmp_path / "reviews.sqlite"
    src = ReviewSource(build)
    store = Store(db)
    passed = src.rows[src.rows["verdict"] == "passed"]
    rej, edit, old = passed["row_id"].iat[0], passed.query("task == 'report'")["row_id"].iat[0], passed["row_id"].iat[2]
    pos = src.position
    store.record(row_id=rej, content_hash=src.rows["hash"].iat[pos[rej]], source="t", family="f", curator="a",
                 action="reject", reason_code="other")
    msgs = [dict(m) for m in src.row(edit).messages]
    msgs[-1]["content"] += PASSING_EDIT
    store.record(row_id=edit, content_hash=src.rows["hash"].iat[pos[edit]], source="t", family="report",
                 curator="a", action="edit", after=msgs)
    store.record(row_id=old, content_hash="f" * 32, source="t", family="f", curator="a", action="reject",
                 reason_code="other")  # a review of an earlier content of this row: stale
    res = publish_build(build, PublishConfig(name="rv", registry=str(tmp_path / "reg"), split_ratios=(0.5, 0.25, 0.25),
                                             verifier_pass_rate=0.5, reviews=str(db)))
    new = Path(res.path)
    ids = {r["id"]: r for f in (new / "data").glob("*/*.parquet") if f.parent.name in ("instructions", "benchmark")
           for r in pq.read_table(f, columns=["id", "messages"]).to_pylist()}
    before = {r["id"] for f in (version / "data").glob("*/*.parquet") if f.parent.name in ("instructions", "benchmark")
              for r in pq.read_table(f, columns=["id"]).to_pylist()}
    assert rej not in ids and ids.keys() == before - {rej}
    c = res.counts
    n_pub = sum(n for cfg, splits in c["published"].items() if cfg in ("instructions", "benchmark") for n in splits.values())
    assert c["removed_by_review"] == 1
    assert c["instructions_in"] == n_pub + c["duplicates_removed"] + c["failed_verification_excluded"] + 1
    assert ids[edit]["messages"][-1]["content"].endswith(PASSING_EDIT)
    man = json.loads((new / "manifest.json").read_text())["reviews"]
    assert man["applied"]["rejected_removed"] == 1 and man["applied"]["edits_applied"] == 1
    assert man["applied"]["stale"] == 1 and man["reviewed"] == 2 and man["stale"] == 1
    # every row under review counts (the published ones and the rejected one), though only decided rows are read
    assert man["rows"] == n_pub + 1 == sum(f["rows"] for f in man["per_family"].values())
    card = (new / "README.md").read_text()
    assert "## Curator review" in card and "1 rejected rows are not published" in card
    assert "| report |" in card.split("## Curator review")[1]


def test_double_review_queue_until_two_curators_decided(published, tmp_path):
    from fastapi.testclient import TestClient

    _build, version = published
    src = ReviewSource(version)
    app = create_app(src, Store(tmp_path / "r.sqlite"), double_share=1.0)
    rid, h = src.rows["row_id"].iat[0], src.rows["hash"].iat[0]

    def curator(name: str) -> tuple[TestClient, str]:
        c = TestClient(app)
        assert c.post("/api/login", json={"name": name}).status_code == 200
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', c.get(f"/row/{rid}").text).group(1)
        return c, csrf

    def second(c: TestClient) -> list[str]:
        return re.findall(r'href="/row/([^"?]+)\?', c.get("/", params={"state": "needs_second"}).text)

    a, ta = curator("ann")
    b, tb = curator("ben")
    assert rid in second(a)
    a.post(f"/api/decision/{rid}", json={"action": "accept", "content_hash": h}, headers={"X-CSRF-Token": ta})
    assert rid in second(a)  # one of two decisions
    mine = re.findall(r'href="/row/([^"?]+)\?', a.get("/", params={"todo": "1"}).text)
    assert rid not in mine and rid in re.findall(r'href="/row/([^"?]+)\?', b.get("/", params={"todo": "1"}).text)
    b.post(f"/api/decision/{rid}", json={"action": "reject", "reason_code": "other", "content_hash": h},
           headers={"X-CSRF-Token": tb})
    assert rid not in second(a)
    s = a.get("/api/summary").json()
    fam = src.rows["task"].iat[0]
    assert s["double_reviewed"] == 1 and s["per_family"][fam]["agreement"] == 0.0


def test_reviews_survive_a_rebuild_unless_the_row_changed(published, tmp_path):
    import pyarrow as pa
    from fastapi.testclient import TestClient

    build, _version = published
    db = Store(tmp_path / "r.sqlite")
    before = ReviewSource(build)
    kept, changed = before.rows["row_id"].iat[0], before.rows["row_id"].iat[1]
    for rid in (kept, changed):
        db.record(row_id=rid, content_hash=before.rows["hash"].iat[before.position[rid]], source="b", family="f",
                  curator="ann", action="accept")
    rebuilt = tmp_path / "build"  # the same build with one row's text changed
    shutil.copytree(build, rebuilt, ignore=shutil.ignore_patterns("phantom", "ingest", "measure", "contracts"))
    rows = pq.read_table(rebuilt / "instructions.parquet").to_pylist()
    row = next(r for r in rows if r["id"] == changed)
    row["messages"][-1]["content"] += " Changed in a rebuild."
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(rebuilt / "instructions.parquet")),
                   rebuilt / "instructions.parquet")
    c = TestClient(create_app(ReviewSource(rebuilt), db))

    def listed(state: str) -> list[str]:
        return re.findall(r'<a href="/row/([^"?]+)\?', c.get("/", params={"state": state}).text)

    assert listed("reviewed") == [kept] and listed("stale") == [changed]  # stale: back in the queue, unreviewed
    assert "no (stale)" in c.get(f"/row/{changed}").text and "no (stale)" not in c.get(f"/row/{kept}").text
