// GROK review: keyboard shortcuts, overlay toggles, decisions and re-verification while editing.
// Plain JavaScript, no library. Model text is only ever set with textContent or server-escaped HTML.
"use strict";
(function () {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await r.json(); } catch (e) { data = {}; }
    return {ok: r.ok, status: r.status, data: data};
  }

  function typing(ev) {
    const t = ev.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }

  // -- sign in / out ---------------------------------------------------------------------------
  const login = document.getElementById("login");
  if (login) {
    login.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const name = document.getElementById("login-name");
      const token = document.getElementById("login-token");
      const r = await post("/api/login", {name: name ? name.value : "", token: token.value});
      if (r.ok) { window.location.href = login.dataset.next || "/"; }
      else { document.getElementById("login-error").textContent = r.data.detail || "sign-in failed"; }
    });
  }
  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => { await post("/api/logout", {}); window.location.href = "/login"; });
  }

  // -- queue -----------------------------------------------------------------------------------
  const queue = document.getElementById("queue");
  if (queue) {
    const rows = Array.from(queue.querySelectorAll("tr.qrow"));
    let cur = -1;
    const mark = (i) => {
      if (!rows.length) return;
      cur = Math.max(0, Math.min(rows.length - 1, i));
      rows.forEach((r, k) => r.classList.toggle("cursor", k === cur));
      rows[cur].scrollIntoView({block: "nearest"});
    };
    document.querySelectorAll("#filters select, #f-todo").forEach((s) =>
      s.addEventListener("change", () => document.getElementById("filters").submit()));
    document.addEventListener("keydown", (ev) => {
      if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
      if (ev.key === "j") { mark(cur + 1); ev.preventDefault(); }
      else if (ev.key === "k") { mark(cur - 1); ev.preventDefault(); }
      else if (ev.key === "Enter" && cur >= 0) { window.location.href = rows[cur].dataset.href; }
      else if (ev.key === "/") { document.getElementById("f-q").focus(); ev.preventDefault(); }
    });
  }

  // -- row page --------------------------------------------------------------------------------
  const decide = document.getElementById("decide");
  if (!decide) return;
  const rowId = decide.dataset.row;
  const status = document.getElementById("status");
  const say = (msg, cls) => { status.textContent = msg; status.className = "status " + (cls || ""); };
  const original = JSON.parse(decide.dataset.messages || "[]");
  const editors = Array.from(document.querySelectorAll("textarea.editor"));
  const editBar = document.getElementById("edit-bar");
  let editing = false;
  let rejecting = false;
  let busy = false;

  function toggle(id, cls) {
    const box = document.getElementById(id);
    const apply = () => document.body.classList.toggle(cls, !box.checked);
    box.addEventListener("change", apply);
    apply();
    return box;
  }
  const tOverlay = toggle("t-overlay", "hide-overlay");
  const tDisc = toggle("t-disc", "hide-disc");
  const tLesions = toggle("t-lesions", "hide-lesions");
  const tBoxes = toggle("t-textboxes", "hide-textboxes");
  const flip = (box) => { box.checked = !box.checked; box.dispatchEvent(new Event("change")); };
  // one toggle per structure layer the measure stage wrote (layers, fluid, drusen, vessels, disc_cup)
  const structures = {};
  document.querySelectorAll("input.t-structure").forEach((box) => {
    const apply = () => document.querySelectorAll("img.layer-s-" + box.dataset.layer)
      .forEach((img) => { img.style.display = box.checked ? "" : "none"; });
    box.addEventListener("change", apply);
    apply();
    structures[box.dataset.key] = box;
  });

  function edited() {
    const msgs = original.map((m) => ({role: m.role, content: m.content}));
    editors.forEach((t) => { msgs[Number(t.dataset.turn)].content = t.value; });
    return msgs;
  }

  async function goNext() {
    const from = decide.dataset.from;
    const r = await fetch("/api/next/" + encodeURIComponent(rowId) + "?from=" + encodeURIComponent(from),
                          {credentials: "same-origin"});
    const next = r.ok ? (await r.json()).next : null;
    if (next) { window.location.href = "/row/" + encodeURIComponent(next) + "?from=" + encodeURIComponent(from); }
    else { window.location.href = "/?" + from; }
  }

  async function send(action, extra) {
    if (busy) return;
    busy = true;
    say("saving " + action + "…");
    const body = Object.assign({action: action, content_hash: decide.dataset.hash, from: decide.dataset.from}, extra || {});
    const r = await post("/api/decision/" + encodeURIComponent(rowId), body);
    busy = false;
    if (r.ok) {
      say("saved: " + action + " (event " + r.data.event.id + ")", "ok");
      document.getElementById("row-state").textContent = "review: reviewed · " + action;
      return true;
    }
    if (r.status === 422 && r.data.verdict) {
      say(r.data.error, "bad");
      showVerdict(r.data.verdict);
      document.getElementById("btn-needs-review").classList.remove("hidden");
      return false;
    }
    say("not saved: " + (r.data.detail || r.data.error || r.status), "bad");
    return false;
  }

  function showVerdict(v) {
    const live = document.getElementById("live-verdict");
    live.textContent = (v.passed ? "verifies" : "fails verification") + " (score " + v.score.toFixed(2) + ")";
    live.className = "live " + (v.passed ? "ok" : "bad");
    const ul = document.getElementById("live-reasons");
    ul.replaceChildren();
    (v.reasons || []).forEach((x) => { const li = document.createElement("li"); li.textContent = x; ul.appendChild(li); });
    document.getElementById("btn-needs-review").classList.toggle("hidden", v.passed);
  }

  let timer = null;
  let seq = 0;
  async function reverify() {
    const mine = ++seq;
    const r = await post("/api/verify/" + encodeURIComponent(rowId), {messages: edited()});
    if (mine !== seq || !r.ok) return;
    showVerdict(r.data);
    editors.forEach((t) => {
      const html = r.data.html[Number(t.dataset.turn)];
      const view = t.parentElement.querySelector(".content");
      if (html !== null && view) view.innerHTML = html;  // server-escaped, marks only
    });
  }

  function startEdit() {
    if (!editors.length) return;
    editing = true;
    editors.forEach((t) => t.classList.remove("hidden"));
    editBar.classList.remove("hidden");
    editors[0].focus();
    reverify();
  }
  function stopEdit() {
    editing = false;
    // A hidden editor can keep the focus until the browser's next focus fixup; while it does, the
    // keydown handler reads every shortcut as typing, so "n" right after Ctrl+Enter was lost.
    if (editors.includes(document.activeElement)) document.activeElement.blur();
    editors.forEach((t) => { t.classList.add("hidden"); });
    editBar.classList.add("hidden");
  }
  editors.forEach((t) => t.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(reverify, 250);
  }));

  async function saveEdit(action) {
    const ok = await send(action, {messages: edited()});
    if (ok) stopEdit();
  }

  function startReject() { rejecting = true; document.getElementById("reject-box").classList.remove("hidden"); }
  function stopReject() { rejecting = false; document.getElementById("reject-box").classList.add("hidden"); }
  async function reject(code) {
    const ok = await send("reject", {reason_code: code, note: document.getElementById("note").value});
    if (ok) stopReject();
  }

  document.getElementById("btn-accept").addEventListener("click", () => send("accept"));
  document.getElementById("btn-flag").addEventListener("click", () => send("flag"));
  document.getElementById("btn-reject").addEventListener("click", startReject);
  document.getElementById("btn-edit").addEventListener("click", startEdit);
  document.getElementById("btn-next").addEventListener("click", goNext);
  document.getElementById("btn-save-edit").addEventListener("click", () => saveEdit("edit"));
  document.getElementById("btn-needs-review").addEventListener("click", () => saveEdit("needs_review"));
  const reasons = Array.from(document.querySelectorAll("#reject-box button.reason"));
  reasons.forEach((b) => b.addEventListener("click", () => reject(b.dataset.code)));

  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { if (editing) stopEdit(); if (rejecting) stopReject(); return; }
    if (editing) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); saveEdit("edit"); }
      return;
    }
    if (typing(ev) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (rejecting) {
      const k = Number(ev.key);
      if (k >= 1 && k <= reasons.length) { ev.preventDefault(); reject(reasons[k - 1].dataset.code); }
      return;
    }
    const key = ev.key;
    if (key === "a") send("accept");
    else if (key === "r") startReject();
    else if (key === "e") { ev.preventDefault(); startEdit(); }
    else if (key === "f") send("flag");
    else if (key === "n" || key === "j") goNext();
    else if (key === "o") flip(tOverlay);
    else if (key === "d") flip(tDisc);
    else if (key === "l") flip(tLesions);
    else if (key === "g") flip(tBoxes);
    else if (structures[key]) flip(structures[key]);
    else if (key === "u") window.location.href = "/?" + decide.dataset.from;
  });
})();
