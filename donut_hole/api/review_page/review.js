// The review page: one document at a time, the scan with a box around each field, the fields low
// confidence first; edit, approve, next. Every value read from a document is shown as text (textContent,
// input.value), never as markup.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "donut-hole-review-key";
  let key = sessionStorage.getItem(KEY) || "";
  let current = null; // {doc, rows}
  let imageUrl = null;
  const skipped = new Set();

  function say(text) { $("status").textContent = text; }

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {}, { Authorization: "Bearer " + key });
    const response = await fetch(path, Object.assign({}, options, { headers }));
    if (response.status === 401) {
      sessionStorage.removeItem(KEY);
      showLogin("That key is not accepted.");
      throw new Error("not signed in");
    }
    if (!response.ok) {
      let detail = response.status + " " + response.statusText;
      try { const body = await response.json(); if (body.detail) detail = String(body.detail); } catch (e) { /* not JSON */ }
      throw new Error(detail);
    }
    return response;
  }

  function showLogin(message) {
    $("work").hidden = true;
    $("empty").hidden = true;
    $("login").hidden = false;
    say(message || "");
  }

  function rowsOf(doc) {
    // one row per stored field, in the reading's order; a repeated key path is a list in `fields`
    const rows = [];
    for (const [name, value] of Object.entries(doc.fields)) {
      const many = Array.isArray(value);
      const values = many ? value : [value];
      const confidences = doc.field_confidence[name];
      const boxes = doc.field_boxes ? doc.field_boxes[name] : null;
      values.forEach((v, i) => {
        rows.push({
          name, value: String(v), order: rows.length,
          confidence: many ? (confidences || [])[i] : confidences,
          box: many ? (boxes || [])[i] : boxes,
        });
      });
    }
    return rows;
  }

  function band(confidence) {
    if (confidence === null || confidence === undefined) return "low";
    return confidence < 0.5 ? "low" : confidence < 0.9 ? "mid" : "high";
  }

  function render() {
    const { doc, rows } = current;
    $("doc").textContent = doc.uri + (doc.page > 1 ? " · page " + doc.page : "") + " · " + doc.status;
    const body = document.querySelector("#fields tbody");
    const boxes = $("boxes");
    body.replaceChildren();
    boxes.replaceChildren();
    const ordered = rows.slice().sort((a, b) => (a.confidence ?? -1) - (b.confidence ?? -1));
    for (const row of ordered) {
      const tr = document.createElement("tr");
      tr.className = band(row.confidence);
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = row.name;
      const cell = document.createElement("td");
      const input = document.createElement("input");
      input.value = row.value;
      input.dataset.order = String(row.order);
      input.setAttribute("aria-label", row.name);
      input.addEventListener("input", () => input.classList.toggle("edited", input.value !== row.value));
      input.addEventListener("keydown", (event) => {
        if (event.key === "Escape") { input.value = row.value; input.classList.remove("edited"); }
      });
      cell.appendChild(input);
      const confidence = document.createElement("td");
      confidence.className = "confidence";
      confidence.textContent = row.confidence === null || row.confidence === undefined
        ? "–" : row.confidence.toFixed(3);
      tr.append(th, cell, confidence);
      body.appendChild(tr);
      if (Array.isArray(row.box) && row.box.length === 4) {
        const [x0, y0, x1, y1] = row.box.map(Number);
        const div = document.createElement("div");
        div.className = "box " + band(row.confidence);
        div.dataset.order = String(row.order);
        div.style.left = (100 * x0) + "%";
        div.style.top = (100 * y0) + "%";
        div.style.width = (100 * Math.max(0, x1 - x0)) + "%";
        div.style.height = (100 * Math.max(0, y1 - y0)) + "%";
        boxes.appendChild(div);
      }
      input.addEventListener("focus", () => {
        for (const box of boxes.children) box.classList.toggle("active", box.dataset.order === String(row.order));
      });
    }
    const first = body.querySelector("input");
    if (first) first.focus();
  }

  async function openDocument(id) {
    const doc = await (await api("v1/reviews/" + encodeURIComponent(id))).json();
    const image = await (await api("v1/reviews/" + encodeURIComponent(id) + "/image")).blob();
    if (imageUrl) URL.revokeObjectURL(imageUrl);
    imageUrl = URL.createObjectURL(image);
    $("scan").src = imageUrl;
    current = { doc, rows: rowsOf(doc) };
    render();
  }

  async function next() {
    const list = await (await api("v1/reviews?limit=100")).json();
    $("queue").textContent = list.total + " waiting";
    const item = list.reviews.find((r) => !skipped.has(r.document_id));
    $("login").hidden = true;
    if (!item) {
      current = null;
      $("work").hidden = true;
      $("empty").hidden = false;
      return;
    }
    $("empty").hidden = true;
    $("work").hidden = false;
    await openDocument(item.document_id);
  }

  async function approve() {
    if (!current) return;
    const values = new Map();
    for (const input of document.querySelectorAll("#fields tbody input")) values.set(Number(input.dataset.order), input.value);
    const fields = current.rows.map((row) => ({ name: row.name, value: values.get(row.order) ?? row.value }));
    say("saving…");
    await api("v1/reviews/" + encodeURIComponent(current.doc.id), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ fields }),
    });
    say("saved");
    await next();
  }

  function guard(action) {
    return () => action().catch((error) => { if (error.message !== "not signed in") say(error.message); });
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    key = $("key").value.trim();
    sessionStorage.setItem(KEY, key);
    say("");
    guard(next)();
  });
  $("approve").addEventListener("click", guard(approve));
  $("skip").addEventListener("click", guard(async () => { if (current) skipped.add(current.doc.id); await next(); }));
  document.addEventListener("keydown", (event) => {
    if (!(event.ctrlKey || event.metaKey) || $("work").hidden) return;
    if (event.key === "Enter") { event.preventDefault(); guard(approve)(); }
    if (event.key === "ArrowRight") { event.preventDefault(); $("skip").click(); }
  });
  if (key) guard(next)(); else showLogin("");
})();
