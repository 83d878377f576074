"""The review web app: a filtered queue, a row page, decisions as append-only events.

Run as: grok review SOURCE [--db URL] [--host 127.0.0.1 --port 8080]

Pages are rendered on the server (Jinja, autoescaped: model text is never trusted) with a little plain
JavaScript (``static/review.js``) for keyboard shortcuts, overlay toggles and re-verification while editing.

Safety: bound to loopback, a curator signs in by name; bound elsewhere (``require_token``), every request
needs a curator token (``grok review add-curator NAME``; only its sha256 is stored). The signed-in curator is
a signed cookie (HttpOnly, SameSite=Strict); every write also needs the page's CSRF token in a header and, when
the browser sends one, an Origin of this server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from grok.instruct.boxes import parse_boxes
from grok.knowledge.lexicon import build_lexicon
from grok.review.decisions import (
    ACTIONS,
    REJECT_REASONS,
    ReviewError,
    RowOutcome,
    apply_event,
    double_review,
    summarise,
)
from grok.review.highlight import render
from grok.review.source import ReviewSource
from grok.review.store import Store
from grok.verify import Verifier, VerifyConfig, verify_row

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50
COOKIE = "grok_review"
#: Queue filters: query parameter -> row index column (exact match on one value).
COLUMN_FILTERS = {"category": "label", "family": "task", "split": "split", "verdict": "verdict",
                  "status_reason": "status_reason"}
STATES = ("unreviewed", "reviewed", "stale", "needs_second", *ACTIONS)
SORTS = {"id": ("row_id", True), "family": ("task", True), "category": ("label", True), "score": ("score", True),
         "-score": ("score", False)}


_STATE_CODES = ("unreviewed", "reviewed", "stale")


class ReviewState:
    """Each row's outcome, kept in step with the event log (read incrementally: other servers on the same
    database are seen on the next request), and the queue's precomputed columns: integer codes of every
    filterable column and one mask per verifier reason code, so a filter over 100,000 rows is a few vector
    operations."""

    def __init__(self, source: ReviewSource, store: Store, double_share: float, seed: int):
        self.source, self.store = source, store
        rows = source.rows
        self.hashes = dict(zip(rows["row_id"], rows["hash"]))
        n = len(rows)
        self.state = np.zeros(n, dtype=np.int8)  #: index into _STATE_CODES
        self.action = np.full(n, -1, dtype=np.int8)  #: index into ACTIONS, -1 none
        self.double = np.array([double_review(r, double_share, seed) for r in rows["row_id"]], dtype=bool)
        self.n_curators = np.zeros(n, dtype=np.int16)
        self.by_curator: dict[str, np.ndarray] = {}
        self.outs: dict[str, RowOutcome] = {}
        self.cats: dict[str, tuple[list[str], np.ndarray]] = {}
        for param, col in COLUMN_FILTERS.items():
            cat = pd.Categorical(rows[col])
            self.cats[param] = (list(cat.categories), np.asarray(cat.codes))
        self.reason_masks: dict[str, np.ndarray] = {}
        for i, r in enumerate(rows["reasons"]):
            for code in r.split(" ") if r else ():
                self.reason_masks.setdefault(code, np.zeros(n, dtype=bool))[i] = True
        self.score = rows["score"].fillna(-1.0).to_numpy(dtype=float)
        self.last_id = 0
        self.lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        with self.lock:
            for ev in self.store.events(after_id=self.last_id):
                self._apply(ev)

    def _apply(self, ev: dict[str, Any]) -> None:
        self.last_id = max(self.last_id, ev["id"])
        o = apply_event(self.outs, ev, self.hashes.get(ev["row_id"]))
        if o is None:
            return
        i = self.source.position[ev["row_id"]]
        self.state[i] = _STATE_CODES.index(o.state)
        self.action[i] = ACTIONS.index(o.action) if o.action else -1
        self.n_curators[i] = len(o.by_curator)
        for c in o.by_curator:
            if c not in self.by_curator:
                self.by_curator[c] = np.zeros(len(self.state), dtype=bool)
            self.by_curator[c][i] = True

    def state_name(self, i: int) -> str:
        return _STATE_CODES[self.state[i]]

    def action_name(self, i: int) -> str:
        return ACTIONS[self.action[i]] if self.action[i] >= 0 else ""

    def parts(self, q: dict[str, str], me: str | None) -> dict[str, np.ndarray]:
        """One boolean mask per filter of the queue query ``q`` (curator ``me``); their AND is the selection."""
        n = len(self.state)
        none = np.zeros(n, dtype=bool)
        out: dict[str, np.ndarray] = {}
        for param in COLUMN_FILTERS:
            v = q.get(param)
            if v:
                cats, codes = self.cats[param]
                out[param] = (codes == cats.index(v)) if v in cats else none
        if q.get("reason"):
            out["reason"] = self.reason_masks.get(q["reason"], none)
        state = q.get("state")
        if state == "needs_second":
            out["state"] = self.double & (self.n_curators < 2) & (self.state != 2)
        elif state in _STATE_CODES:
            out["state"] = self.state == _STATE_CODES.index(state)
        elif state in ACTIONS:
            out["state"] = (self.state == 1) & (self.action == ACTIONS.index(state))
        if q.get("curator"):
            out["curator"] = self.by_curator.get(q["curator"], none)
        if q.get("todo") and me:
            mine = self.by_curator.get(me, none)
            out["todo"] = ((self.state != 1) | (self.double & (self.n_curators < 2))) & ~mine
        text = (q.get("q") or "").strip()
        if text:  # searched within the review filters only, so the facet counts of the others stay exact
            within = _all([m for k, m in out.items() if k in ("state", "curator", "todo")], n)
            out["q"] = self.source.text_matches(text, within=within) if within.any() else none
        return out

    def mask(self, q: dict[str, str], me: str | None) -> np.ndarray:
        """Boolean mask of the rows the queue query ``q`` selects for curator ``me``."""
        return _all(list(self.parts(q, me).values()), len(self.state))

    def ordered(self, mask: np.ndarray, sort: str) -> np.ndarray:
        """Positions of the selected rows in the queue's order."""
        pos = np.flatnonzero(mask)
        col, asc = SORTS.get(sort, SORTS["id"])
        if col == "row_id":
            return pos  # source order: by file, then row
        if col == "score":
            vals = self.score[pos]
            return pos[np.argsort(vals if asc else -vals, kind="stable")]
        param = {"task": "family", "label": "category"}[col]
        return pos[np.argsort(self.cats[param][1][pos], kind="stable")]

    def facets(self, parts: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
        """The selection and the counts of every filter's values among the rows the *other* filters select
        (so each list offers its alternatives), with the review states and decisions of the selection."""
        n = len(self.state)
        mask = _all(list(parts.values()), n)
        out: dict[str, Any] = {}
        for param, (cats, codes) in self.cats.items():
            others = _all([m for k, m in parts.items() if k != param], n)
            counts = np.bincount(codes[others], minlength=len(cats))
            out[param] = {c: int(k) for c, k in zip(cats, counts) if k}
        others = _all([m for k, m in parts.items() if k != "reason"], n)
        out["reason"] = {code: int((m & others).sum()) for code, m in sorted(self.reason_masks.items())}
        out["reason"] = {k: v for k, v in sorted(out["reason"].items(), key=lambda kv: -kv[1]) if v}
        st = np.bincount(self.state[mask], minlength=3)
        out["states"] = {s: int(k) for s, k in zip(_STATE_CODES, st) if k}
        acts = np.bincount(self.action[mask & (self.state == 1)].astype(np.int64) + 1, minlength=len(ACTIONS) + 1)
        out["actions"] = {a: int(k) for a, k in zip(ACTIONS, acts[1:]) if k}
        return mask, out


def _all(masks: list[np.ndarray], n: int) -> np.ndarray:
    """The AND of ``masks`` (all rows when there is none)."""
    out = np.ones(n, dtype=bool)
    for m in masks:
        out &= m
    return out


class _Auth:
    def __init__(self, store: Store, require_token: bool, secret: bytes):
        self.store, self.require_token, self.secret = store, require_token, secret

    def sign(self, curator: str) -> str:
        nonce = secrets.token_urlsafe(12)
        name = base64.urlsafe_b64encode(curator.encode()).decode()
        mac = hmac.new(self.secret, f"{name}.{nonce}".encode(), hashlib.sha256).hexdigest()
        return f"{name}.{nonce}.{mac}"

    def read(self, request: Request) -> tuple[str | None, str | None]:
        """(curator, nonce) of a valid session cookie, else (None, None)."""
        raw = request.cookies.get(COOKIE) or ""
        parts = raw.split(".")
        if len(parts) != 3:
            return None, None
        name, nonce, mac = parts
        good = hmac.new(self.secret, f"{name}.{nonce}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, good):
            return None, None
        try:
            return base64.urlsafe_b64decode(name.encode()).decode(), nonce
        except (ValueError, UnicodeDecodeError):
            return None, None

    def csrf(self, nonce: str | None) -> str:
        return hmac.new(self.secret, f"csrf.{nonce}".encode(), hashlib.sha256).hexdigest() if nonce else ""

    def check_write(self, request: Request) -> str:
        """The curator of a write, after the CSRF and origin checks; raises 403 otherwise."""
        curator, nonce = self.read(request)
        if curator is None:
            raise HTTPException(403, "sign in first (a curator name, or a token from grok review add-curator)")
        token = request.headers.get("x-csrf-token", "")
        if not nonce or not hmac.compare_digest(token, self.csrf(nonce)):
            raise HTTPException(403, "missing or wrong CSRF token; reload the page")
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host", ""):
            raise HTTPException(403, f"cross-origin write from {origin} refused")
        return curator


def create_app(source: ReviewSource, store: Store, *, require_token: bool = False, double_share: float = 0.1,
               seed: int = 0, secret: bytes | None = None) -> FastAPI:
    """The app over ``source`` with decisions in ``store``. ``require_token``: every request needs a curator
    token (set it whenever the server is reachable from other machines). ``double_share``: the share of rows
    reviewed by two curators. ``secret``: signs sessions (default ``$GROK_REVIEW_SECRET``, else random)."""
    secret = secret or os.environ.get("GROK_REVIEW_SECRET", "").encode() or secrets.token_bytes(32)
    auth = _Auth(store, require_token, secret)
    st = ReviewState(source, store, double_share, seed)
    lex = build_lexicon(source.kb)
    verifier = Verifier(lex, VerifyConfig())
    facts_cache: dict[str, Any] = {}
    app = FastAPI(title="GROK review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = st
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.autoescape = True

    @app.middleware("http")
    async def _gate(request: Request, call_next):
        path = request.url.path
        if require_token and not (path.startswith("/static/") or path in ("/login", "/api/login")):
            if auth.read(request)[0] is None:
                if path.startswith("/api/"):
                    return JSONResponse({"error": "a curator token is required"}, status_code=401)
                return RedirectResponse("/login?" + urlencode({"next": str(request.url.path)}), status_code=303)
        resp = await call_next(request)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
        if resp.headers.get("content-type", "").startswith("text/html"):
            resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                       "script-src 'self'; style-src 'self'; object-src 'none'; "
                                                       "frame-ancestors 'none'")
        return resp

    def page(request: Request, name: str, **ctx) -> HTMLResponse:
        curator, nonce = auth.read(request)
        return templates.TemplateResponse(request, name, {
            "curator": curator, "csrf": auth.csrf(nonce), "source": source, "require_token": require_token, **ctx})

    def query(request: Request) -> dict[str, str]:
        return {k: v for k, v in request.query_params.items() if v}

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        return page(request, "login.html.j2", next=request.query_params.get("next", "/"))

    @app.post("/api/login")
    async def login(request: Request):
        body = await _json_body(request)
        token = str(body.get("token") or "")
        name = str(body.get("name") or "").strip()
        if token:
            curator = store.curator_for(token)
            if curator is None:
                raise HTTPException(403, "unknown token; ask for one (grok review add-curator NAME)")
        elif require_token:
            raise HTTPException(403, "this server needs a curator token (grok review add-curator NAME)")
        elif not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
            raise HTTPException(422, "a curator name: 1-64 letters, digits, '.', '_' or '-'")
        else:
            curator = name
        resp = JSONResponse({"curator": curator})
        resp.set_cookie(COOKIE, auth.sign(curator), httponly=True, samesite="strict", path="/")
        return resp

    @app.post("/api/logout")
    def logout(request: Request):
        auth.check_write(request)
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/", response_class=HTMLResponse)
    def queue(request: Request):
        st.refresh()
        q = query(request)
        me = auth.read(request)[0]
        rows = source.rows
        mask, facets = st.facets(st.parts(q, me))
        positions = st.ordered(mask, q.get("sort", "id"))
        n = len(positions)
        try:
            pg = max(0, int(q.get("page", "0")))
        except ValueError:
            pg = 0
        show = positions[pg * PAGE_SIZE:(pg + 1) * PAGE_SIZE]
        sub = rows.iloc[show]
        items = [{**r, "state": st.state_name(i), "action": st.action_name(i), "double": bool(st.double[i]),
                  "n_curators": int(st.n_curators[i])} for i, r in zip(show, sub.to_dict("records"))]
        states, actions, reasons = facets.pop("states"), facets.pop("actions"), facets.pop("reason")
        keep = {k: v for k, v in q.items() if k != "page"}
        return page(request, "queue.html.j2", items=items, n=n, total=len(rows), page=pg, page_size=PAGE_SIZE,
                    q=q, qs=urlencode(keep), facets=facets, states=states, actions=actions, reasons=reasons,
                    reviewed=int(states.get("reviewed", 0)), filters=COLUMN_FILTERS, all_states=STATES,
                    sorts=list(SORTS), curators=sorted(st.by_curator), double_share=double_share,
                    prev_qs=urlencode({**keep, "page": pg - 1}), next_qs=urlencode({**keep, "page": pg + 1}))

    @app.get("/row/{row_id}", response_class=HTMLResponse)
    def row_page(request: Request, row_id: str):
        st.refresh()
        try:
            r = source.row(row_id)
        except KeyError as exc:
            raise HTTPException(404, f"no row {row_id} in {source.label}") from exc
        i = source.position[row_id]
        rec = r.record or {}
        ev = r.evidence or {}
        anchors = _anchors(rec)
        # what the verifier checked each number, term and name against, to link and flag the text
        claims: dict[int, list[dict[str, Any]]] | None = None
        if r.messages:
            res = verify_row(verifier, source.verify_row(row_id, r.messages), source.records_for_verifier(),
                             facts_cache, source.kb, where=source.label, claims=True)
            if res.claims is not None:
                claims = {}
                for c in res.claims:
                    claims.setdefault(c["turn"], []).append(c)
        messages = [{"role": m["role"], "content": m["content"],
                     "html": render(m["content"], lex, r.reasons, anchors,
                                    None if claims is None else claims.get(i, []))
                     if m["role"] == "assistant" else None}
                    for i, m in enumerate(r.messages)]
        events = store.events(row_id=row_id)
        images = _images(source, r, ev)
        present = {layer["name"] for im in images for layer in im["layers"]}
        return page(request, "row.html.j2", row=r, idx=r.index, messages=messages, images=images,
                    structure_layers=[(n, k, label) for n, k, label in STRUCTURE_LAYERS if n in present],
                    biomarkers=_biomarkers(source, rec), findings=rec.get("findings") or [],
                    differential=rec.get("differential") or [], not_evaluable=rec.get("not_evaluable") or [],
                    events=events, state=st.state_name(i), action=st.action_name(i), double=bool(st.double[i]),
                    n_curators=int(st.n_curators[i]), reject_reasons=REJECT_REASONS,
                    back=request.query_params.get("from", ""), messages_json=json.dumps(r.messages))

    @app.get("/img/{row_id}/{i}")
    def image(row_id: str, i: int):
        try:
            data, mt = source.image(row_id, i)
        except (KeyError, IndexError) as exc:
            raise HTTPException(404, "no such image") from exc
        return Response(data, media_type=mt, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/media/{rel:path}")
    def media(rel: str):
        try:
            data, mt = source.media(rel)
        except KeyError as exc:
            raise HTTPException(404, "no such file") from exc
        return Response(data, media_type=mt, headers={"Cache-Control": "private, max-age=3600"})

    def reverify(row_id: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        res = verify_row(verifier, source.verify_row(row_id, messages), source.records_for_verifier(), facts_cache,
                         source.kb, where=source.label)
        return {"passed": res.passed, "score": res.score, "reasons": list(res.reasons)}

    def _messages(body: dict[str, Any], row_id: str) -> list[dict[str, str]]:
        msgs = body.get("messages")
        orig = source.row(row_id).messages
        if not isinstance(msgs, list) or len(msgs) != len(orig) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs):
            raise HTTPException(422, "messages: the row's turns, each with its content (roles stay as they are)")
        return [{"role": o["role"], "content": m["content"]} for o, m in zip(orig, msgs)]

    @app.post("/api/verify/{row_id}")
    async def verify(request: Request, row_id: str):
        auth.check_write(request)
        if row_id not in source.position:
            raise HTTPException(404, f"no row {row_id}")
        body = await _json_body(request)
        msgs = _messages(body, row_id)
        verdict = reverify(row_id, msgs)
        anchors = _anchors(source.row(row_id).record or {})
        verdict["html"] = [str(render(m["content"], lex, verdict["reasons"], anchors)) if m["role"] == "assistant"
                           else None for m in msgs]
        return verdict

    @app.post("/api/decision/{row_id}")
    async def decide(request: Request, row_id: str):
        curator = auth.check_write(request)
        if row_id not in source.position:
            raise HTTPException(404, f"no row {row_id}")
        body = await _json_body(request)
        action = str(body.get("action") or "")
        idx = source.rows.iloc[source.position[row_id]]
        if body.get("content_hash") != idx["hash"]:
            raise HTTPException(409, "the row changed since this page was loaded; reload it")
        r = source.row(row_id)
        after = verdict = None
        if action in ("edit", "needs_review"):
            after = _messages(body, row_id)
            if after == r.messages:
                raise HTTPException(422, "the edit changes nothing; accept the row instead")
            verdict = reverify(row_id, after)
            if action == "edit" and not verdict["passed"]:
                return JSONResponse({"error": "the edit fails verification; fix it or save it as 'needs clinical "
                                              "review'", "verdict": verdict}, status_code=422)
        try:
            ev = store.record(row_id=row_id, content_hash=idx["hash"], source=source.label, family=idx["task"],
                              curator=curator, action=action, reason_code=body.get("reason_code"),
                              note=str(body.get("note") or "")[:2000] or None, before=r.messages, after=after,
                              verdict=verdict)
        except ReviewError as exc:
            raise HTTPException(422, str(exc)) from exc
        st.refresh()
        return {"event": {k: ev[k] for k in ("id", "action", "reason_code", "curator", "created_at")},
                "verdict": verdict}

    @app.get("/api/next/{row_id}")
    def next_row(request: Request, row_id: str):
        """The row after ``row_id`` in the queue the curator came from (``?from=`` the queue's query)."""
        if row_id not in source.position:
            raise HTTPException(404, f"no row {row_id}")
        st.refresh()
        q = {k: v for k, v in parse_qsl(request.query_params.get("from", "")) if k != "page" and v}
        me = auth.read(request)[0]
        positions = st.ordered(st.mask(q, me), q.get("sort", "id"))
        here = source.position[row_id]
        where = np.flatnonzero(positions == here)
        if len(where):
            after = positions[where[0] + 1:]
        elif q.get("sort", "id") == "id":  # the row left the queue (e.g. reviewed): the next one in source order
            after = positions[positions > here]
        else:
            after = positions
        nxt = next((int(p) for p in after[:2] if p != here), None)
        return {"next": str(source.rows["row_id"].iat[nxt]) if nxt is not None else None}

    @app.get("/api/summary")
    def summary():
        st.refresh()
        rows = dict(zip(source.rows["row_id"], zip(source.rows["hash"], source.rows["task"])))
        return summarise(store.events(), rows)

    @app.get("/summary", response_class=HTMLResponse)
    def summary_page(request: Request):
        return page(request, "summary.html.j2", s=summary(), actions=ACTIONS)

    return app


async def _json_body(request: Request) -> dict[str, Any]:
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise HTTPException(415, "send JSON (Content-Type: application/json)")
    try:
        body = await request.json()
    except ValueError as exc:
        raise HTTPException(400, "the body is not JSON") from exc
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return body


def _anchors(rec: dict[str, Any]) -> set[str]:
    """The anchors of a row page: its biomarker, finding and differential table rows."""
    return ({f"bm-{b['id']}" for b in rec.get("biomarkers") or []}
            | {f"finding-{f['id']}" for f in rec.get("findings") or []}
            | {f"dx-{d['id']}" for d in rec.get("differential") or []})


#: Structure layers the measure stage writes per image (grok.oct.overlay.BSCAN_LAYERS,
#: grok.cfp.overlay.CFP_LAYERS): name, keyboard key, label of the toggle.
STRUCTURE_LAYERS = (
    ("layers", "y", "retinal layer boundaries"),
    ("fluid", "w", "fluid (IRF, SRF, PED)"),
    ("drusen", "s", "drusen and hyperreflective foci"),
    ("vessels", "v", "vessels (arteries red, veins blue)"),
    ("disc_cup", "c", "disc and cup (segmented)"),
)


def _images(source: ReviewSource, r, ev: dict[str, Any]) -> list[dict[str, Any]]:
    """Per image of the row: its URL, the overlay URL, lesion boxes (pixels) and text boxes (0-1000)."""
    overlays = source.overlays(r.index["study_id"])
    keys = {rel.rsplit("/", 1)[-1]: k for k, rel in (ev.get("images") or {}).items()}
    sizes = ev.get("image_sizes") or {}
    text_boxes = [b for m in r.messages if m["role"] == "assistant" for b in parse_boxes(m["content"])[0]]
    out = []
    for i, name in enumerate(r.image_names):
        key = keys.get(name) or (r.image_roles[i] if i < len(r.image_roles) else name.rsplit(".", 1)[0])
        size = sizes.get(key)
        lesions = [les for les in ev.get("lesions") or [] if les.get("image") == key and les.get("box_xyxy_px")]
        out.append({"i": i, "key": key, "url": f"/img/{r.row_id}/{i}",
                    "overlay": f"/media/{overlays[key]}" if key in overlays else None,
                    # one transparent PNG per structure ("<image key>/<layer>" in the study's overlays)
                    "layers": [{"name": k.split("/", 1)[1], "url": f"/media/{rel}"}
                               for k, rel in sorted(overlays.items()) if k.startswith(f"{key}/")],
                    "size": size, "lesions": lesions if size else [],
                    "disc": _disc(ev.get("biomarkers") or {}) if size and key == "cfp" else None,
                    "text_boxes": text_boxes if len(r.image_names) == 1 else []})
    for key, rel in overlays.items():  # overlays that are images of their own (the thickness map)
        if "map" in key and "/" not in key and key not in {im["key"] for im in out}:
            out.append({"i": None, "key": key, "url": f"/media/{rel}", "overlay": None, "layers": [], "size": None,
                        "lesions": [],
                        "text_boxes": [], "standalone": True})
    return out


def _disc(bio: dict[str, Any]) -> dict[str, Any] | None:
    """The optic disc (centre, radius), the cup (radius: vertical cup-to-disc ratio x disc radius) and the
    fovea as measured on a photograph, in its pixels; None when the disc was not found."""
    c, d = bio.get("disc_center_xy_px"), bio.get("disc_diameter_px")
    if not (isinstance(c, list) and len(c) == 2 and isinstance(d, int | float) and d > 0):
        return None
    cdr = bio.get("cup_disc_ratio_vertical")
    fovea = bio.get("fovea_center_xy_px")
    return {"cx": c[0], "cy": c[1], "r": d / 2, "cup_r": d / 2 * cdr if isinstance(cdr, int | float) else None,
            "fovea": fovea if isinstance(fovea, list) and len(fovea) == 2 else None}


def _biomarkers(source: ReviewSource, rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Biomarkers with name, unit, the normal range and the source a finding used (or the catalogue's)."""
    ranges = {}
    for f in rec.get("findings") or []:
        b = f.get("biomarker")
        if b and b not in ranges and (f.get("normal_p5") is not None or f.get("threshold") is not None):
            ranges[b] = f
    out = []
    for b in rec.get("biomarkers") or []:
        meta = source.kb.biomarkers.get(b["id"])
        f = ranges.get(b["id"])
        rng = ""
        if f is not None and f.get("normal_p5") is not None:
            rng = f"{f['normal_p5']:.3g}-{f['normal_p95']:.3g}"
        elif f is not None:
            rng = f"cut-off {f['threshold']:.3g}"
        src = (f.get("normal_range_source") or ", ".join(f.get("sources") or [])) if f else ""
        out.append({"id": b["id"], "name": meta.name if meta else b["id"], "value": b.get("value"),
                    "unit": b.get("unit") or "", "range": rng,
                    "source": src or (", ".join(meta.sources) if meta else "")})
    return out


def wait_until_served(url: str, timeout_s: float = 20.0) -> None:
    """Block until ``url`` answers (for the command line and the tests)."""
    end = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)
