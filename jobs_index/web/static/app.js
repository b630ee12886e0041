// jobs-index history page. Plain JavaScript, no dependencies, no build step.
// Every value from job data is inserted with textContent / DOM properties, never as HTML.
// The API is reached by URLs relative to this page ("../api/..."), so any mount prefix works.
"use strict";
(() => {
  const API = new URL("../api/", document.baseURI);
  const PAGE = 50;
  const POLL_MS = 3000;
  const STATUSES = ["pending", "in_progress", "completed", "failed", "cancelled"];
  const LABELS = { pending: "pending", in_progress: "running", completed: "completed", failed: "failed", cancelled: "cancelled" };
  const VIEW_KEYS = ["status", "source", "workflow_id", "q", "range", "from", "to", "job"];
  const LIST_KEYS = ["status", "source", "workflow_id", "q", "range", "from", "to"]; // a change reloads the list
  const RANGES = { "1h": 3600e3, "24h": 24 * 3600e3, "7d": 7 * 24 * 3600e3 }; // presets: the last ... (ms)
  const MODEL_FILE = /\.(safetensors|ckpt|pt|pth|bin|gguf|sft|onnx)$/i;
  const MODEL_INPUT = /(ckpt|lora|unet|vae|clip|control_net|controlnet|model|upscale_model|style_model|gligen|hypernetwork|embedding)_?name$/i;

  const $ = (id) => document.getElementById(id);
  const rowsEl = $("rows"), moreEl = $("more"), emptyEl = $("empty"), detailEl = $("detail");

  const state = {
    view: readView(),
    gen: 0,            // bumped on every reset: answers for an older view are dropped
    rows: new Map(),   // id -> {job, tr}
    order: [],         // ids, newest first
    cursor: null,
    hasMore: false,
    loading: false,
    sourceUrl: new Map(),  // source -> ComfyUI base URL (from follow)
    jobSource: new Map(),  // job id -> source (null: none)
    polling: false,
    bounds: {},        // {since, until} epoch ms of the view's time range, fixed at each reset
  };

  // ---- helpers -------------------------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null) continue;
        if (key === "dataset") Object.assign(node.dataset, value);
        else if (key.startsWith("aria") || key === "role" || key === "tabindex") node.setAttribute(key.replace(/^aria([A-Z])/, (m, c) => "aria-" + c.toLowerCase()), String(value));
        else node[key] = value;
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function readView() {
    const params = new URLSearchParams(location.search);
    const view = {};
    for (const key of VIEW_KEYS) view[key] = params.get(key) || "";
    return view;
  }

  function writeView(push) {
    const params = new URLSearchParams();
    for (const key of VIEW_KEYS) if (state.view[key]) params.set(key, state.view[key]);
    const query = params.toString();
    const url = location.pathname + (query ? "?" + query : "");
    if (url !== location.pathname + location.search) history[push ? "pushState" : "replaceState"](null, "", url);
  }

  async function api(path, params) {
    const url = new URL(path, API);
    if (params) for (const [key, value] of params) url.searchParams.append(key, value);
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      const error = new Error((body && typeof body.error === "string") ? body.error : `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function filterParams() {
    const params = [];
    if (state.view.status) params.push(["status", state.view.status]);
    if (state.view.source) params.push(["source", state.view.source]);
    if (state.view.workflow_id) params.push(["workflow_id", state.view.workflow_id]);
    if (state.view.q) params.push(["q", state.view.q]);
    if (state.bounds.since !== undefined) params.push(["since", String(state.bounds.since)]);
    if (state.bounds.until !== undefined) params.push(["until", String(state.bounds.until)]);
    return params;
  }

  // The view's time range as epoch ms: a preset ("range=24h": the last 24 hours, from
  // the moment the list was (re)loaded, so scrolling and polling keep one window) or
  // from/to (datetime-local values in the URL, this browser's local time).
  function timeBounds(view) {
    const bounds = {};
    if (RANGES[view.range]) bounds.since = Date.now() - RANGES[view.range];
    for (const [key, name] of [["from", "since"], ["to", "until"]]) {
      const ms = view[key] ? new Date(view[key]).getTime() : NaN;
      if (!RANGES[view.range] && isFinite(ms)) bounds[name] = ms;
    }
    return bounds;
  }

  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(ms) {
    if (typeof ms !== "number" || !isFinite(ms)) return "—";
    const d = new Date(ms);
    if (isNaN(d)) return "—";
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  const THIS_YEAR = String(new Date().getFullYear());
  function timeCell(ms) { // this year's times without the year, older ones without seconds; the tooltip has all
    const full = fmtTime(ms);
    const short = full === "—" ? full : full.startsWith(THIS_YEAR) ? full.slice(5) : full.slice(0, 16);
    return el("td", { className: "time", title: full }, short);
  }
  function fmtDuration(job) {
    const start = job.execution_start_time, end = job.execution_end_time;
    if (typeof start !== "number" || typeof end !== "number") return "—";
    const ms = Math.max(0, end - start);
    if (ms < 1000) return `${ms} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${Math.round(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} m`;
  }
  const str = (value) => (typeof value === "string" ? value : value === undefined || value === null ? "" : JSON.stringify(value));
  function clip(text, max) { text = str(text); return text.length > max ? text.slice(0, max) + "…" : text; }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // ---- thumbnails ------------------------------------------------------------------
  function httpUrl(text) {
    try { const url = new URL(text); return (url.protocol === "http:" || url.protocol === "https:") ? url : null; }
    catch (e) { return null; }
  }
  // The /api/view URL of an output file on the ComfyUI that made it: the source's URL
  // when `follow` knows it, else this page's own origin (the custom node).
  function viewUrl(jobId, file, preview) {
    if (!file || typeof file.filename !== "string") return null;
    const source = state.jobSource.get(jobId);
    const base = source ? httpUrl(state.sourceUrl.get(source) || "") : null;
    let url;
    if (base) {
      if (!base.pathname.endsWith("/")) base.pathname += "/";
      url = new URL("api/view", base);
    } else {
      url = new URL("view", API);
    }
    url.searchParams.set("filename", file.filename);
    url.searchParams.set("subfolder", str(file.subfolder));
    url.searchParams.set("type", str(file.type) || "output");
    if (preview) url.searchParams.set("preview", "webp;75");
    return url.href;
  }
  function isImage(file, mediaType) {
    const kind = (file && file.mediaType) || mediaType;
    return kind === "images" || (typeof (file && file.filename) === "string" && /\.(png|jpe?g|webp|gif|avif|bmp)$/i.test(file.filename));
  }
  function placeholder(text, big) { return el("div", { className: "ph" + (big ? " big" : ""), title: text }, text); }
  function thumb(jobId, file, mediaType, big) {
    if (!file) return placeholder("no output", big);
    if (!isImage(file, mediaType)) return placeholder(str(file.mediaType || mediaType || "file"), big);
    const src = viewUrl(jobId, file, !big);
    if (!src) return placeholder("no preview", big);
    const source = state.jobSource.get(jobId);
    const img = el("img", { className: big ? "" : "thumb", loading: "lazy", alt: str(file.filename), src, referrerPolicy: "no-referrer" });
    img.addEventListener("error", () => { // the source is down, unreachable from here, or the file is gone
      const why = !source ? "preview unavailable: no ComfyUI here, or the file is gone"
        : state.sourceUrl.has(source) ? `preview unavailable: ${source} unreachable, or the file is gone`
        : `preview unavailable: no ComfyUI URL known for ${source} (not followed)`;
      const ph = placeholder(big ? why : source && !state.sourceUrl.has(source) ? "⚠ no URL" : "⚠ offline", big);
      ph.classList.add("broken");
      ph.title = why;
      img.replaceWith(ph);
    }, { once: true });
    return img;
  }

  // ---- list --------------------------------------------------------------------------
  function statusBadge(status) {
    return el("span", { className: `badge s-${STATUSES.includes(status) ? status : "unknown"}` }, LABELS[status] || str(status));
  }
  function errorText(job) {
    const e = job.execution_error;
    if (!e || typeof e !== "object") return "";
    return [str(e.exception_type), str(e.exception_message)].filter(Boolean).join(": ");
  }
  function renderRow(job) {
    const source = state.jobSource.get(job.id);
    const err = errorText(job);
    const tr = el("tr", { tabindex: 0, dataset: { id: job.id } },
      el("td", null, thumb(job.id, job.preview_output, null, false)),
      el("td", null, statusBadge(job.status)),
      el("td", { title: job.id },
        el("span", { className: "mono" }, clip(job.id, 64)),
        job.workflow_id ? el("span", { className: "sub", title: "workflow " + job.workflow_id }, "workflow " + clip(job.workflow_id, 80)) : null),
      el("td", { title: source || "" }, source ? clip(source, 80) : el("span", { className: "muted" }, "—")),
      timeCell(job.create_time),
      timeCell(job.execution_start_time),
      timeCell(job.execution_end_time),
      el("td", { className: "num" }, fmtDuration(job)),
      el("td", { className: "err", title: clip(err, 2000) }, clip(err, 300)));
    tr.addEventListener("click", () => openJob(job.id, true));
    if (job.id === state.view.job) tr.classList.add("selected");
    return tr;
  }
  function key(job) { return [typeof job.create_time === "number" ? job.create_time : -Infinity, job.id]; }
  function newer(a, b) { // true when a sorts before b (newest first)
    const [ta, ia] = key(a), [tb, ib] = key(b);
    return ta !== tb ? ta > tb : ia > ib;
  }

  const own = (object, key) => Boolean(object) && Object.prototype.hasOwnProperty.call(object, key);
  function noteSources(sources) { // [{source, url, jobs}]: the source filter and each source's ComfyUI URL
    for (const s of sources) if (s.url) state.sourceUrl.set(s.source, s.url); else state.sourceUrl.delete(s.source);
    fillSources(sources);
  }
  function noteJobSources(jobs, map) { // a listing's "job_sources" (include=source)
    for (const job of jobs) state.jobSource.set(job.id, own(map, job.id) ? map[job.id] : null);
  }
  async function learnSources(jobs) { // for a job not from a listing (a linked detail)
    const body = await api("jobs-index/sources", jobs.map((job) => ["id", job.id]));
    noteSources(body.sources);
    noteJobSources(jobs, body.job_sources);
  }

  function fillSources(sources) {
    const select = $("source");
    const want = state.view.source;
    const names = sources.map((s) => s.source);
    if (want && !names.includes(want)) names.push(want);
    const current = [...select.options].slice(1).map((o) => o.value);
    if (current.join("\u0000") === names.join("\u0000")) { select.value = want; return; }
    select.replaceChildren(el("option", { value: "" }, "All sources"),
      ...names.map((name) => {
        const info = sources.find((s) => s.source === name);
        return el("option", { value: name }, info ? `${clip(name, 60)} (${info.jobs})` : clip(name, 60));
      }));
    select.value = want;
  }

  function appendJobs(jobs) {
    const fragment = document.createDocumentFragment();
    for (const job of jobs) {
      if (state.rows.has(job.id)) continue; // never twice
      const tr = renderRow(job);
      state.rows.set(job.id, { job, tr });
      state.order.push(job.id);
      fragment.append(tr);
    }
    rowsEl.append(fragment);
  }

  function updateMore() {
    emptyEl.hidden = state.order.length > 0 || state.loading || state.hasMore;
    moreEl.textContent = state.loading ? "Loading…" : state.hasMore ? "Scroll for more" : (state.order.length ? `All ${state.order.length} jobs shown` : "");
  }

  async function reset() {
    const gen = ++state.gen;
    state.rows.clear(); state.order = []; state.cursor = null; state.hasMore = false;
    rowsEl.replaceChildren();
    showError("");
    state.bounds = timeBounds(state.view);
    syncControls();
    const counts = refreshCounts(gen); // sent alongside; its sources' URLs are needed for thumbnails
    await loadPage(gen, null, counts);
  }

  async function loadPage(gen, after, before) {
    if (state.loading && after) return;
    state.loading = true; updateMore();
    try {
      const params = filterParams();
      params.push(["limit", String(PAGE)], ["include", "source"]);
      if (after) params.push(["after", after]);
      const body = await api("jobs", params);
      if (before) await before;
      if (gen !== state.gen) return;
      noteJobSources(body.jobs, body.job_sources);
      appendJobs(body.jobs);
      state.cursor = body.pagination.next_cursor || null;
      state.hasMore = Boolean(body.pagination.has_more && state.cursor);
    } catch (error) {
      if (gen === state.gen) { showError(error.message); state.hasMore = false; }
    } finally {
      if (gen === state.gen) { state.loading = false; updateMore(); maybeMore(); }
    }
  }

  function maybeMore() { // the sentinel already on screen: load the next page now
    if (!state.hasMore || state.loading) return;
    const rect = moreEl.getBoundingClientRect();
    if (rect.top < window.innerHeight + 400) loadPage(state.gen, state.cursor);
  }

  // ---- counts ------------------------------------------------------------------------
  async function refreshCounts(gen) {
    const params = filterParams().filter(([k]) => k !== "status");
    try {
      const body = await api("jobs-index/counts", params);
      noteSources(body.sources);
      if (gen === state.gen) renderCounts(body);
    } catch (error) { /* the list shows the error */ }
  }
  function renderCounts(body) {
    const nav = $("statuses");
    const selected = state.view.status;
    const button = (value, label, count) => {
      const b = el("button", { type: "button", ariaPressed: String(selected === value), dataset: { status: value } },
        label, el("span", { className: "count" }, typeof count === "number" ? count.toLocaleString("en-US") : ""));
      b.addEventListener("click", () => { state.view.status = value; state.view.job = ""; closeDetail(false); writeView(true); reset(); });
      return b;
    };
    nav.replaceChildren(button("", "All", body && body.total),
      ...STATUSES.map((s) => button(s, LABELS[s], body && body.counts[s])));
  }

  // ---- live: new jobs at the top ---------------------------------------------------
  async function poll() {
    if (state.polling || document.hidden) return;
    state.polling = true;
    const gen = state.gen;
    try {
      const params = filterParams();
      params.push(["limit", String(PAGE)], ["include", "source"]);
      const body = await api("jobs", params);
      if (gen !== state.gen) return;
      const fresh = body.jobs.filter((job) => !state.rows.has(job.id));
      const known = body.jobs.length - fresh.length;
      if (fresh.length && known === 0 && state.order.length && body.pagination.has_more) {
        await reset(); // more new jobs than a page: start over rather than leave a gap
        return;
      }
      noteJobSources(fresh, body.job_sources);
      for (const job of body.jobs) {
        const row = state.rows.get(job.id);
        if (row && JSON.stringify(row.job) !== JSON.stringify(job)) { // status/times changed
          const tr = renderRow(job);
          row.tr.replaceWith(tr);
          Object.assign(row, { job, tr });
        }
      }
      insertFresh(fresh);
      await refreshCounts(gen);
      setLive(true);
    } catch (error) {
      setLive(false, error.message);
    } finally {
      state.polling = false;
    }
  }
  function insertFresh(fresh) {
    const oldest = state.order.length ? state.rows.get(state.order[state.order.length - 1]).job : null;
    for (const job of fresh.sort((a, b) => (newer(a, b) ? 1 : -1))) { // oldest first, each goes above
      if (oldest && state.hasMore && !newer(job, oldest)) continue; // a later page will bring it
      let at = 0;
      while (at < state.order.length && newer(state.rows.get(state.order[at]).job, job)) at++;
      const tr = renderRow(job);
      tr.classList.add("fresh");
      const before = at < state.order.length ? state.rows.get(state.order[at]).tr : null;
      rowsEl.insertBefore(tr, before);
      state.rows.set(job.id, { job, tr });
      state.order.splice(at, 0, job.id);
    }
    updateMore();
  }
  function setLive(ok, message) {
    const live = $("live");
    live.className = "live " + (ok ? "ok" : "down");
    live.textContent = ok ? `live · ${fmtTime(Date.now()).slice(11)}` : "offline";
    live.title = ok ? "new jobs appear at the top" : str(message);
  }

  // ---- detail ------------------------------------------------------------------------
  function section(title, ...content) { return [el("h3", null, title), ...content.flat()].filter(Boolean); }
  function kv(pairs) {
    return el("dl", { className: "kv" }, pairs.filter(Boolean).flatMap(([k, v]) => [el("dt", null, k), el("dd", null, v)]));
  }
  const TEXT_INPUT = /(text|prompt|positive|negative|caption|string|expression|note|tags|wildcard)/i;
  function promptFacts(prompt) { // text inputs (prose), settings (short values), models, node types
    const texts = [], settings = [], models = new Set(), types = new Map();
    if (!prompt || typeof prompt !== "object") return { texts, settings, models, types };
    const ids = Object.keys(prompt).sort((a, b) => (Number(a) - Number(b)) || (a < b ? -1 : a > b ? 1 : 0));
    for (const id of ids) {
      const node = prompt[id];
      if (!node || typeof node !== "object") continue;
      const type = str(node.class_type);
      types.set(type, (types.get(type) || 0) + 1);
      const inputs = node.inputs && typeof node.inputs === "object" ? node.inputs : {};
      for (const [name, value] of Object.entries(inputs)) {
        if (typeof value === "number" || typeof value === "boolean") settings.push({ id, type, name, value: String(value) });
        if (typeof value !== "string" || value === "") continue;
        if (MODEL_FILE.test(value) || MODEL_INPUT.test(name)) models.add(value);
        else if (TEXT_INPUT.test(name) || /\s/.test(value.trim()) || value.length > 40) texts.push({ id, type, name, value });
        else settings.push({ id, type, name, value });
      }
    }
    return { texts, settings, models, types };
  }
  function downloadButton(label, data, filename) {
    const button = el("button", { type: "button", className: "download" }, label);
    button.addEventListener("click", () => {
      const url = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
      const a = el("a", { href: url, download: filename });
      document.body.append(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
    return button;
  }

  function renderDetail(job) {
    const err = job.execution_error && typeof job.execution_error === "object" ? job.execution_error : null;
    const workflow = job.workflow && typeof job.workflow === "object" ? job.workflow : {};
    const facts = promptFacts(workflow.prompt);
    const source = state.jobSource.get(job.id);
    const close = el("button", { type: "button", className: "close", title: "Close (Esc)" }, "✕");
    close.addEventListener("click", () => closeDetail(true));
    const parts = [
      el("h2", null, statusBadge(job.status), el("span", { className: "id mono" }, job.id), close),
      kv([
        ["Source", source || "—"],
        job.workflow_id ? ["Workflow", job.workflow_id] : null,
        ["Queued", fmtTime(job.create_time)],
        ["Started", fmtTime(job.execution_start_time)],
        ["Ended", fmtTime(job.execution_end_time)],
        ["Duration", fmtDuration(job)],
        ["Outputs", String(job.outputs_count ?? 0)],
      ]),
    ];
    if (err) {
      const tb = Array.isArray(err.traceback) ? err.traceback.map(str).join("") : str(err.traceback);
      parts.push(...section("Error",
        el("div", { className: "err" }, [str(err.exception_type), str(err.exception_message)].filter(Boolean).join(": ")),
        (err.node_type || err.node_id) ? el("div", { className: "muted" }, `in node ${str(err.node_id)} (${str(err.node_type)})`) : null,
        tb ? el("pre", { className: "traceback" }, tb) : null));
    }
    const outputs = job.outputs && typeof job.outputs === "object" ? job.outputs : null;
    if (outputs) {
      const cards = [];
      for (const [nodeId, byType] of Object.entries(outputs)) {
        if (!byType || typeof byType !== "object") continue;
        for (const [mediaType, items] of Object.entries(byType)) {
          if (!Array.isArray(items)) continue;
          for (const item of items) {
            if (item && typeof item === "object" && typeof item.filename === "string") {
              const href = viewUrl(job.id, item, false);
              cards.push(el("div", { className: "output" }, thumb(job.id, item, mediaType, true),
                href ? el("a", { href, target: "_blank", rel: "noopener noreferrer" }, item.filename) : item.filename,
                el("div", { className: "muted" }, `node ${nodeId} · ${mediaType}`)));
            } else {
              cards.push(el("div", { className: "output" }, el("div", { className: "muted" }, `node ${nodeId} · ${mediaType}`),
                el("pre", null, clip(item, 4000))));
            }
          }
        }
      }
      parts.push(...section(`Outputs (${cards.length})`, cards.length ? el("div", { className: "outputs" }, cards) : el("p", { className: "muted" }, "none")));
    } else if (job.preview_output) {
      parts.push(...section("Preview", thumb(job.id, job.preview_output, null, true)));
    }
    if (facts.texts.length) {
      parts.push(...section("Text inputs", facts.texts.map((t) => el("div", null,
        el("div", { className: "input-name" }, `${t.type} #${t.id} · ${t.name}`), el("pre", null, t.value)))));
    }
    if (facts.settings.length) {
      parts.push(...section("Settings", el("dl", { className: "kv settings" }, facts.settings.flatMap((t) => [
        el("dt", null, `${t.type} #${t.id} · ${t.name}`), el("dd", { className: "mono" }, t.value)]))));
    }
    if (facts.models.size) parts.push(...section("Models and LoRAs", el("ul", { className: "plain mono" }, [...facts.models].map((m) => el("li", null, m)))));
    if (facts.types.size) {
      parts.push(...section("Node types", el("ul", { className: "plain" },
        [...facts.types].sort((a, b) => b[1] - a[1]).map(([t, n]) => el("li", null, el("span", { className: "mono" }, t), n > 1 ? ` × ${n}` : "")))));
    }
    const extra = workflow.extra_data && typeof workflow.extra_data === "object" ? workflow.extra_data : {};
    const ui = extra.extra_pnginfo && typeof extra.extra_pnginfo === "object" ? extra.extra_pnginfo.workflow : null;
    const safeId = String(job.id).replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 80);
    const downloads = [];
    if (ui && typeof ui === "object") downloads.push(downloadButton("Workflow (drag into ComfyUI)", ui, `workflow-${safeId}.json`));
    if (workflow.prompt && typeof workflow.prompt === "object") downloads.push(downloadButton("Prompt (API format)", workflow.prompt, `prompt-${safeId}.json`));
    if (downloads.length) parts.push(...section("Download", el("div", { className: "outputs" }, downloads)));
    if (!job.workflow) parts.push(el("p", { className: "muted" }, "Queued or running: inputs and outputs appear once it finishes."));
    detailEl.replaceChildren(...parts);
  }

  async function openJob(id, push) {
    state.view.job = id;
    writeView(push);
    for (const { tr } of state.rows.values()) tr.classList.toggle("selected", tr.dataset.id === id);
    detailEl.hidden = false;
    document.body.classList.add("detail-open");
    detailEl.replaceChildren(el("p", { className: "muted" }, "Loading…"));
    try {
      // include=source addresses the request to the index: inside a ComfyUI whose jobs
      // API the node only records, a plain detail would be ComfyUI's (from its memory).
      const job = await api("jobs/" + encodeURIComponent(id) + "?include=source");
      if (state.view.job !== id) return;
      if (!state.jobSource.has(id)) await learnSources([job]);
      renderDetail(job);
    } catch (error) {
      if (state.view.job !== id) return;
      const close = el("button", { type: "button", className: "close" }, "✕");
      close.addEventListener("click", () => closeDetail(true));
      detailEl.replaceChildren(el("h2", null, el("span", { className: "id mono" }, id), close),
        el("p", { className: "err" }, error.status === 404 ? "This job is not in the index." : error.message));
    }
  }
  function closeDetail(write) {
    detailEl.hidden = true;
    document.body.classList.remove("detail-open");
    detailEl.replaceChildren();
    const id = state.view.job;
    state.view.job = "";
    for (const { tr } of state.rows.values()) tr.classList.remove("selected");
    if (write) {
      writeView(true);
      const row = state.rows.get(id);
      if (row) row.tr.focus();
    }
  }

  // ---- controls ------------------------------------------------------------------------
  function syncControls() {
    if (document.activeElement !== $("q")) $("q").value = state.view.q;
    if (document.activeElement !== $("workflow")) $("workflow").value = state.view.workflow_id;
    $("source").value = state.view.source;
    const custom = !RANGES[state.view.range] && (state.view.from || state.view.to);
    $("range").value = RANGES[state.view.range] ? state.view.range : custom ? "custom" : "";
    if (document.activeElement !== $("from")) $("from").value = state.view.from;
    if (document.activeElement !== $("to")) $("to").value = state.view.to;
  }
  function debounce(fn, ms) { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; }
  const onText = debounce(() => {
    const q = $("q").value.trim(), wf = $("workflow").value.trim();
    if (q === state.view.q && wf === state.view.workflow_id) return;
    Object.assign(state.view, { q, workflow_id: wf });
    writeView(false);
    reset();
  }, 300);
  $("q").addEventListener("input", onText);
  $("workflow").addEventListener("input", onText);
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("source").addEventListener("change", () => { state.view.source = $("source").value; writeView(true); reset(); });
  $("range").addEventListener("change", () => {
    const value = $("range").value;
    if (value === "custom") { $("from").focus(); return; } // the from/to fields set the range
    Object.assign(state.view, { range: value, from: "", to: "" });
    writeView(true);
    reset();
  });
  for (const id of ["from", "to"]) {
    $(id).addEventListener("change", () => {
      const from = $("from").value, to = $("to").value;
      if (from === state.view.from && to === state.view.to && !state.view.range) return;
      Object.assign(state.view, { range: "", from, to });
      writeView(true);
      reset();
    });
  }

  window.addEventListener("popstate", () => {
    const before = state.view;
    state.view = readView();
    // Back/Forward between jobs of the same list keeps the list (and where it was scrolled to)
    if (LIST_KEYS.some((key) => before[key] !== state.view[key])) reset();
    if (state.view.job) openJob(state.view.job, false); else closeDetail(false);
  });

  document.addEventListener("keydown", (e) => {
    const typing = e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement;
    if (e.key === "Escape") {
      if (typing) { e.target.blur(); return; }
      if (!detailEl.hidden) closeDetail(true);
      return;
    }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "/") { e.preventDefault(); $("q").focus(); return; }
    const current = document.activeElement && document.activeElement.closest ? document.activeElement.closest("tbody tr") : null;
    if (e.key === "j" || e.key === "ArrowDown" || e.key === "k" || e.key === "ArrowUp") {
      e.preventDefault();
      const down = e.key === "j" || e.key === "ArrowDown";
      const next = current ? (down ? current.nextElementSibling : current.previousElementSibling) : rowsEl.firstElementChild;
      if (next) { next.focus(); next.scrollIntoView({ block: "nearest" }); }
      maybeMore();
    } else if ((e.key === "Enter" || e.key === "o") && current) {
      e.preventDefault();
      openJob(current.dataset.id, true);
    }
  });

  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) maybeMore();
  }, { rootMargin: "400px" }).observe(moreEl);
  window.addEventListener("scroll", maybeMore, { passive: true });

  renderCounts(null);
  reset().then(() => setLive(true));
  if (state.view.job) openJob(state.view.job, false);
  setInterval(poll, POLL_MS);
})();
