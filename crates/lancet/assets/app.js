// lancet dashboard. The pages are complete without this script (tables
// rendered by the agent); it adds the live alert feed, the graph of the
// map, and the buttons that change things. Changes are sent with the API
// token the operator pastes once: it is kept in this tab's sessionStorage
// only (gone when the tab closes) and sent as `Authorization: Bearer`,
// never in a URL or a cookie. Over the root-only control socket no token
// is needed.
"use strict";
(function () {
  document.documentElement.classList.add("js");
  const KEY = "lancet-token";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function flash(msg, isError) {
    const f = $("#flash");
    if (!f) return;
    f.textContent = msg;
    f.className = "show" + (isError ? " error" : "");
    clearTimeout(flash.t);
    flash.t = setTimeout(() => (f.className = ""), 6000);
  }

  // ---- the token ----
  function token() {
    try { return sessionStorage.getItem(KEY) || ""; } catch (e) { return ""; }
  }
  function showAuth() {
    const state = $("#auth-state");
    if (!state) return;
    const t = token();
    state.textContent = t ? "changes enabled (token set)" : "read-only";
    $("#token-forget").hidden = !t;
  }
  const save = $("#token-save");
  if (save) {
    save.addEventListener("click", () => {
      const v = $("#token").value.trim();
      if (v) { try { sessionStorage.setItem(KEY, v); } catch (e) { flash("this browser refuses sessionStorage", true); } }
      $("#token").value = "";
      showAuth();
    });
    $("#token-forget").addEventListener("click", () => { try { sessionStorage.removeItem(KEY); } catch (e) {} showAuth(); });
    showAuth();
  }

  async function post(url, body) {
    const headers = { "Content-Type": "application/json" };
    const t = token();
    if (t) headers["Authorization"] = "Bearer " + t;
    const r = await fetch(url, { method: "POST", headers, body: JSON.stringify(body || {}) });
    let j = null;
    try { j = await r.json(); } catch (e) {}
    if (!r.ok) throw Object.assign(new Error((j && j.error) || ("HTTP " + r.status)), { status: r.status });
    return j;
  }

  // ---- promote / demote ----
  $$("button[data-mode]").forEach((b) => b.addEventListener("click", async () => {
    const w = b.dataset.workload, mode = b.dataset.mode;
    try {
      await post("/v1/profiles/" + encodeURIComponent(w) + "/promote", { mode });
      flash(w + " is now in " + mode + " mode");
      setTimeout(() => location.reload(), 600);
    } catch (e) {
      if (e.status === 409 && confirm(e.message + "\n\nPromote anyway?")) {
        try { await post("/v1/profiles/" + encodeURIComponent(w) + "/promote", { mode, force: true }); location.reload(); }
        catch (e2) { flash(e2.message, true); }
      } else {
        flash(e.message, true);
      }
    }
  }));

  // ---- add to profile, from an alert ----
  async function addToProfile(b) {
    try {
      const j = await post("/v1/alerts/" + encodeURIComponent(b.dataset.alert) + "/add-to-profile");
      flash(j.added ? "added to the profile of " + j.workload : "already in the profile of " + j.workload);
      b.disabled = true;
      b.textContent = "added";
    } catch (e) { flash(e.message, true); }
  }
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-alert]");
    if (b) addToProfile(b);
  });

  // ---- the live alert feed ----
  const live = $("#live tbody");
  if (live && window.EventSource) {
    const state = $("#live-state");
    const es = new EventSource("/v1/events");
    es.addEventListener("open", () => { if (state) state.textContent = "live"; });
    es.addEventListener("error", () => { if (state) state.textContent = "reconnecting…"; });
    es.addEventListener("lagged", (m) => flash(m.data + " alerts were too fast to show; reload for all"));
    es.addEventListener("alert", (m) => {
      let a;
      try { a = JSON.parse(m.data); } catch (e) { return; }
      const f = a.output_fields || {};
      const tr = el("tr", { class: "new", "data-rule": a.rule || "", "data-container": f["container.name"] || "" });
      tr.appendChild(el("td", {}, (a.time || "").replace("T", " ").slice(0, 19)));
      tr.appendChild(el("td", { class: "prio-" + (a.priority || "") }, a.priority || ""));
      tr.appendChild(el("td", {}, f["container.name"] || ""));
      tr.appendChild(el("td", {}, a.rule || ""));
      tr.appendChild(el("td", {}, f["lancet.action"] || ""));
      tr.appendChild(el("td", {}, a.output || ""));
      const act = el("td");
      if (f["lancet.deviation"] && a.id !== undefined) act.appendChild(el("button", { "data-alert": String(a.id) }, "add to profile"));
      tr.appendChild(act);
      live.insertBefore(tr, live.firstChild);
      while (live.rows.length > 100) live.deleteRow(live.rows.length - 1);
      const empty = $("#live-empty");
      if (empty) empty.remove();
    });
  }

  // ---- the map ----
  const mapDiv = $("#map");
  if (mapDiv && window.cytoscape) {
    const details = $("#edge-details");
    const colour = { learning: "#1b7f3b", allowed: "#1b7f3b", unlisted: "#c25e00", refused: "#b3261e" };
    const fmtBytes = (n) => { const u = ["B", "KiB", "MiB", "GiB"]; let i = 0; while (n >= 1024 && i < 3) { n /= 1024; i++; } return (i ? n.toFixed(1) : n) + " " + u[i]; };
    const when = (ns) => ns ? new Date(ns / 1e6).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "";
    const LAYOUT = { name: "cose", animate: false, padding: 30, idealEdgeLength: 160, nodeRepulsion: 600000, nodeOverlap: 40, componentSpacing: 120, nestingFactor: 1.2, randomize: false };
    let cy = null, last = "";
    function elements(g) {
      const nodes = g.nodes.map((n) => ({ group: "nodes", data: { id: n.id, label: n.label, kind: n.kind, parent: n.parent || undefined, workload: n.workload } }));
      const edges = g.edges.map((e) => ({ group: "edges", data: Object.assign({}, e, { label: e.port + "/" + e.proto + " ×" + e.connections, colour: colour[e.verdict] || "#5f6368" }) }));
      return nodes.concat(edges);
    }
    function show(e) {
      const d = e.data();
      const rows = [
        ["from", e.source().data("label")], ["to", e.target().data("label")], ["port", d.port + "/" + d.proto],
        ["verdict", d.verdict], ["decided by", d.rule || "—"], ["connections", String(d.connections)],
        ["failed", String(d.failed)], ["refused", String(d.refused)],
        ["bytes out / in", fmtBytes(d.bytesOut) + " / " + fmtBytes(d.bytesIn)],
        ["first seen", when(d.firstNs)], ["last seen", when(d.lastNs)],
      ];
      const t = el("table", { id: "edge-table" });
      for (const [k, v] of rows) { const tr = el("tr"); tr.appendChild(el("th", {}, k)); tr.appendChild(el("td", { "data-field": k }, v)); t.appendChild(tr); }
      details.replaceChildren(t);
    }
    async function refresh() {
      let g;
      try {
        const r = await fetch(mapDiv.dataset.src);
        if (!r.ok) throw new Error("HTTP " + r.status);
        g = await r.json();
      } catch (e) { flash("map: " + e.message, true); return; }
      const text = JSON.stringify(g);
      if (text === last) return;
      last = text;
      if (!cy) {
        cy = window.cytoscape({
          container: mapDiv,
          elements: elements(g),
          wheelSensitivity: 0.3,
          style: [
            { selector: "node", style: { label: "data(label)", "font-size": 10, "text-valign": "bottom", "text-margin-y": 4, "text-wrap": "ellipsis", "text-max-width": "170px", "background-color": "#4a6fa5", width: 20, height: 20 } },
            { selector: "node[kind = 'host']", style: { "background-color": "#5f6368", shape: "round-rectangle" } },
            { selector: "node[kind = 'external']", style: { "background-color": "#9aa0a6", shape: "diamond" } },
            { selector: "node[kind = 'others']", style: { "background-color": "#c25e00", shape: "octagon" } },
            { selector: ":parent", style: { "background-opacity": 0.06, "border-color": "#9aa0a6", "border-style": "dashed", "text-valign": "top", "font-weight": "bold", shape: "round-rectangle", padding: 12 } },
            { selector: "edge", style: { width: 2, "line-color": "data(colour)", "target-arrow-color": "data(colour)", "target-arrow-shape": "triangle", "curve-style": "bezier", label: "data(label)", "font-size": 9, "text-rotation": "autorotate", color: "data(colour)", "text-background-color": "#fff", "text-background-opacity": 0.85, "text-background-padding": "2px" } },
            { selector: "edge:selected", style: { width: 4 } },
          ],
          layout: LAYOUT,
        });
        cy.on("tap", "edge", (ev) => show(ev.target));
        window.lancetMap = cy;
      } else {
        cy.json({ elements: elements(g) });
        cy.layout(LAYOUT).run();
      }
      mapDiv.dataset.edges = String(g.edges.length);
    }
    refresh();
    setInterval(refresh, 10000);
  }
})();
