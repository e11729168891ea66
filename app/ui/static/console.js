/* The DR4SR console: a thin client of the service's REST API.
 *
 * The API key lives in sessionStorage and goes with every request; the pages
 * the server renders are empty shells, so everything shown here is what the
 * API answers to that key. Forms for uploads and jobs are generated from
 * /openapi.json (types, ranges, defaults, choices and help come from the
 * typed request models), charts use the vendored Chart.js.
 *
 * No user data is ever inserted as HTML: every text goes through
 * textContent (see el()).
 */
"use strict";

(() => {
  const KEY = "dr4sr.apiKey";
  const POLL_MS = 1000;
  const LIST_POLL_MS = 2000;
  const ACTIVE = new Set(["queued", "running"]);

  // ---------------------------------------------------------------- helpers
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  /** el("a", {href: "/x", class: "b"}, "text", child) — text is never parsed as HTML. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name in node && typeof value !== "string") node[name] = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const fmtInt = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
  const fmtNum = (v, digits = 4) =>
    v === null || v === undefined || Number.isNaN(Number(v)) ? "–" : Number(v).toFixed(digits);
  const fmtPct = (f) => `${Math.round((f || 0) * 100)} %`;
  const fmtP = (p) => (p === undefined || p === null ? "–" : Number(p).toPrecision(2));
  function fmtTime(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
  }
  function fmtDuration(a, b) {
    if (!a || !b) return "–";
    const s = (new Date(b) - new Date(a)) / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
  }
  const humanize = (name) => name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  const shortId = (id) => (id ? id.slice(0, 8) : "");
  const query = (name) => new URLSearchParams(location.search).get(name);

  function showAlert(message, kind = "error") {
    const box = $("#alert");
    box.textContent = message;
    box.className = `alert alert-${kind}`;
    box.hidden = !message;
  }

  // ---------------------------------------------------------------- the API
  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.code = error.code;
      this.field = error.field;
    }
  }

  const authHeaders = () => ({ Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` });

  async function api(path, { method = "GET", json, raw = false } = {}) {
    const headers = authHeaders();
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, cache: "no-store" });
    } catch (exc) {
      throw new ApiError(0, { error: { code: "network", message: `the service cannot be reached (${exc.message})` } });
    }
    if (!response.ok) {
      let payload = null;
      try {
        payload = await response.json();
      } catch (_) {
        /* not JSON */
      }
      const err = new ApiError(response.status, payload);
      if (response.status === 401) rejectKey(err.message);
      throw err;
    }
    if (raw) return response;
    if (response.status === 204) return null;
    return response.json();
  }

  let openapi = null;
  async function schema() {
    if (!openapi) {
      const r = await fetch("/openapi.json");
      openapi = await r.json();
    }
    return openapi;
  }

  /** Fetch with the key and hand the bytes to the browser as a download. */
  async function download(path, filename, button) {
    const label = button ? button.textContent : "";
    if (button) {
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      button.textContent = "Downloading…";
    }
    try {
      const response = await api(path, { raw: true });
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const a = el("a", { href: url, download: filename, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      showAlert(`Download failed: ${err.message}`);
    } finally {
      if (button) {
        button.disabled = false;
        button.removeAttribute("aria-busy");
        button.textContent = label;
      }
    }
  }

  // ------------------------------------------------------------- the API key
  function rejectKey(message) {
    sessionStorage.removeItem(KEY);
    stopPolling();
    $("#main").hidden = true;
    $("#key-state").hidden = true;
    $("#key-panel").hidden = false;
    const text = `This API key was not accepted (${message}). Enter a valid key.`;
    $("#api-key-error").textContent = text;
    showAlert(text);
    $("#api-key").focus();
  }

  async function useKey(event) {
    event.preventDefault();
    const input = $("#api-key");
    const key = input.value.trim();
    $("#api-key-error").textContent = "";
    if (!key) {
      $("#api-key-error").textContent = "Paste an API key first.";
      input.focus();
      return;
    }
    sessionStorage.setItem(KEY, key);
    try {
      await api("/datasets?limit=1");
    } catch (err) {
      if (err.status !== 401) {
        $("#api-key-error").textContent = `The key could not be checked: ${err.message}`;
      }
      return;
    }
    input.value = "";
    showAlert("");
    if (entered) location.reload(); // a page whose key was rejected starts afresh
    else enter();
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY);
    location.reload();
  }

  // --------------------------------------------------------------- polling
  const timers = new Set();
  function every(ms, fn) {
    let stopped = false;
    let handle = null;
    const tick = async () => {
      if (stopped) return;
      let again = true;
      try {
        if (!document.hidden) again = (await fn()) !== false;
      } catch (err) {
        if (err.status === 401) return;
        showAlert(err.message);
      }
      if (again && !stopped) handle = setTimeout(tick, ms);
    };
    const timer = { stop: () => ((stopped = true), clearTimeout(handle)) };
    timers.add(timer);
    tick();
    return timer;
  }
  function stopPolling() {
    for (const t of timers) t.stop();
    timers.clear();
  }

  // ---------------------------------------------------------------- charts
  const PALETTE = ["#2f6db5", "#e07b39", "#3a9d5d", "#b5446e", "#7a5bb5", "#9a8b2f", "#3aa3b5", "#666"];

  function chart(canvas, config) {
    if (!window.Chart || !canvas) return null;
    const old = window.Chart.getChart(canvas);
    if (old) old.destroy();
    config.options = Object.assign(
      { animation: false, responsive: true, maintainAspectRatio: false },
      config.options || {}
    );
    return new window.Chart(canvas, config);
  }

  function chartFigure(title, id) {
    const canvas = el("canvas", { id, role: "img", "aria-label": title });
    const figure = el("figure", { class: "chart" }, el("div", { class: "canvas-box" }, canvas), el("figcaption", {}, title));
    return { figure, canvas };
  }

  /** {length: count} -> [labels, counts], binned when there are many lengths. */
  function histogram(counts, maxBars = 40) {
    const pairs = Object.entries(counts || {})
      .map(([k, v]) => [Number(k), Number(v)])
      .sort((a, b) => a[0] - b[0]);
    if (pairs.length <= maxBars) return [pairs.map((p) => String(p[0])), pairs.map((p) => p[1])];
    const lo = pairs[0][0];
    const hi = pairs[pairs.length - 1][0];
    const width = Math.ceil((hi - lo + 1) / maxBars);
    const bins = new Map();
    for (const [k, v] of pairs) {
      const start = lo + Math.floor((k - lo) / width) * width;
      bins.set(start, (bins.get(start) || 0) + v);
    }
    const starts = [...bins.keys()].sort((a, b) => a - b);
    return [starts.map((s) => `${s}–${s + width - 1}`), starts.map((s) => bins.get(s))];
  }

  function barChart(canvas, labels, data, label, xTitle) {
    return chart(canvas, {
      type: "bar",
      data: { labels, datasets: [{ label, data, backgroundColor: PALETTE[0] }] },
      options: {
        plugins: { legend: { display: false } },
        scales: { x: { title: { display: !!xTitle, text: xTitle } }, y: { beginAtZero: true } },
      },
    });
  }

  // ------------------------------------------- forms from the OpenAPI schema
  function lookup(root, ref) {
    return ref
      .replace(/^#\//, "")
      .split("/")
      .reduce((node, part) => (node ? node[part.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined), root);
  }

  function resolve(s, root) {
    let seen = 0;
    while (s && (s.$ref || (s.allOf && s.allOf.length === 1)) && seen++ < 20) {
      const { $ref, allOf, ...rest } = s;
      const target = $ref ? lookup(root, $ref) : allOf[0];
      s = Object.assign({}, resolve(target, root), rest);
    }
    return s || {};
  }

  const SIBLINGS = ["description", "default", "title", "examples"];

  /** Unwrap `X | None` (anyOf with null) and unions of constants. */
  function unwrap(raw, root) {
    const s = resolve(raw, root);
    const alts = s.anyOf || s.oneOf;
    if (!alts) return { s, nullable: s.type === "null" };
    const keep = {};
    for (const k of SIBLINGS) if (k in s) keep[k] = s[k];
    const options = alts.map((a) => resolve(a, root));
    const nonNull = options.filter((a) => a.type !== "null");
    const nullable = nonNull.length < options.length;
    if (nonNull.length === 1) return { s: Object.assign({}, nonNull[0], keep), nullable };
    if (nonNull.every((a) => "const" in a || (a.enum && a.enum.length))) {
      const values = nonNull.flatMap((a) => ("const" in a ? [a.const] : a.enum));
      return { s: Object.assign({ enum: values }, keep), nullable };
    }
    return { s: Object.assign({ _json: true }, keep), nullable };
  }

  function choicesOf(s) {
    if (s.enum) return s.enum;
    if ("const" in s) return [s.const];
    return null;
  }

  function describe(s, nullable) {
    const bits = [];
    const lo = s.minimum ?? s.exclusiveMinimum;
    const hi = s.maximum ?? s.exclusiveMaximum;
    if (s.type === "integer" || s.type === "number") {
      bits.push(s.type);
      if (lo !== undefined && hi !== undefined) bits.push(`${s.exclusiveMinimum !== undefined ? ">" : ""}${lo} … ${s.exclusiveMaximum !== undefined ? "<" : ""}${hi}`);
      else if (lo !== undefined) bits.push(s.exclusiveMinimum !== undefined ? `> ${lo}` : `≥ ${lo}`);
      else if (hi !== undefined) bits.push(s.exclusiveMaximum !== undefined ? `< ${hi}` : `≤ ${hi}`);
    }
    if (s.maxLength !== undefined) bits.push(`at most ${s.maxLength} characters`);
    if ("default" in s && s.default !== null && typeof s.default !== "object") bits.push(`default ${s.default}`);
    if ("default" in s && s.default === null && nullable) bits.push("optional");
    return bits.join(", ");
  }

  const fieldId = (path) => `f-${path.replace(/[^A-Za-z0-9_-]/g, "-")}`;

  /** Append the control(s) for one schema property to `parent`. */
  function renderField(parent, ctx, name, raw, path, required, depth, example) {
    const { s, nullable } = unwrap(raw, ctx.root);
    if (s.readOnly) return;
    if (s.type === "string" && s.format === "binary") return; // the upload's file: its own control
    const id = fieldId(path);
    const help = s.description || "";
    const facts = describe(s, nullable);

    if (s.type === "object" && s.properties && !s._json) {
      const fs = el("fieldset", { class: `group depth-${depth}`, "data-group": path });
      fs.append(el("legend", {}, humanize(name), " ", el("code", {}, name)));
      if (help) fs.append(el("p", { class: "help" }, help));
      const req = new Set(s.required || []);
      for (const [prop, sub] of Object.entries(s.properties)) {
        const ex = example && typeof example === "object" ? example[prop] : undefined;
        renderField(fs, ctx, prop, sub, `${path}.${prop}`, req.has(prop), depth + 1, ex);
      }
      fs.append(el("p", { class: "field-error", "data-error-for": path, role: "alert" }));
      if (depth >= 2) {
        fs.querySelector("legend").classList.add("sr-only"); // the summary shows the name
        const details = el("details", {}, el("summary", {}, `${humanize(name)} (${name})`), fs);
        parent.append(details);
      } else parent.append(fs);
      return;
    }

    const wrap = el("div", { class: "field", "data-field": path });
    const label = el("label", { for: id }, humanize(name), " ", el("code", {}, name));
    if (required) label.append(el("span", { class: "required", "aria-hidden": "true" }, " *"));
    const helpId = `${id}-help`;
    const errId = `${id}-error`;
    const common = {
      id,
      name: path,
      "data-path": path,
      "aria-describedby": `${helpId} ${errId}`,
      required: required || undefined,
    };
    const def = "default" in s ? s.default : undefined;
    let control;
    let kind;
    const choices = choicesOf(s);
    const items = s.type === "array" ? unwrap(s.items || {}, ctx.root).s : null;
    const itemChoices = items ? choicesOf(items) : null;

    if (ctx.widgets[name]) {
      kind = "string";
      control = ctx.widgets[name](common, s, required);
    } else if (choices && !s._json) {
      kind = "choice";
      control = el("select", common);
      if (nullable || !required || def === undefined) {
        control.append(el("option", { value: "" }, def === undefined || def === null ? "(not set)" : `(default: ${def})`));
      }
      for (const c of choices) control.append(el("option", { value: JSON.stringify(c) }, String(c)));
      if (def !== undefined && def !== null && !nullable && required) control.value = JSON.stringify(def);
    } else if (s.type === "boolean" && !(nullable && (def === null || def === undefined))) {
      kind = "boolean";
      control = el("input", Object.assign({}, common, { type: "checkbox", required: undefined }));
      control.checked = def === true;
      wrap.classList.add("checkbox");
    } else if (s.type === "boolean") {
      kind = "choice";
      control = el("select", common);
      control.append(el("option", { value: "" }, "(automatic)"), el("option", { value: "true" }, "yes"), el("option", { value: "false" }, "no"));
    } else if (s.type === "integer" || s.type === "number") {
      kind = s.type;
      const attrs = Object.assign({}, common, { type: "number", step: s.type === "integer" ? "1" : "any", inputmode: s.type === "integer" ? "numeric" : "decimal" });
      if (s.minimum !== undefined) attrs.min = s.minimum;
      if (s.maximum !== undefined) attrs.max = s.maximum;
      control = el("input", attrs);
      if (def !== undefined && def !== null) control.value = String(def);
    } else if (items && itemChoices) {
      kind = "multi";
      control = el("fieldset", { class: "checks", id, "data-path": path, "data-kind": "multi", "aria-describedby": `${helpId} ${errId}` });
      control.append(el("legend", { class: "sr-only" }, humanize(name)));
      const chosen = new Set(Array.isArray(def) ? def.map((v) => JSON.stringify(v)) : []);
      itemChoices.forEach((c, i) => {
        const cid = `${id}-${i}`;
        const box = el("input", { type: "checkbox", id: cid, value: JSON.stringify(c), name: path });
        box.checked = chosen.has(JSON.stringify(c));
        control.append(el("span", { class: "check" }, box, el("label", { for: cid }, String(c))));
      });
    } else if (items && ["string", "integer", "number"].includes(items.type)) {
      kind = `list-${items.type}`;
      control = el("input", Object.assign({}, common, { type: "text" }));
      if (Array.isArray(def)) control.value = def.join(", ");
      else if (Array.isArray(example)) control.placeholder = example.join(", ");
    } else if (s.type === "string" && !s._json) {
      kind = "string";
      const attrs = Object.assign({}, common, { type: "text" });
      if (s.maxLength !== undefined) attrs.maxlength = s.maxLength;
      control = el("input", attrs);
      if (typeof def === "string") control.value = def;
      else if (typeof example === "string") control.placeholder = example;
    } else {
      kind = "json";
      control = el("textarea", Object.assign({}, common, { rows: 4, spellcheck: "false", "data-json": "true" }));
      if (def !== undefined && def !== null && !(typeof def === "object" && Object.keys(def).length === 0)) {
        control.value = JSON.stringify(def, null, 1);
      }
      if (example !== undefined) control.placeholder = `e.g. ${JSON.stringify(example)}`;
    }
    control.dataset.kind = control.dataset.kind || kind;
    if (def !== undefined) control.dataset.default = JSON.stringify(def);
    if (required) control.dataset.required = "true";

    const factsText = kind === "json" ? ["JSON", facts].filter(Boolean).join(", ") : facts;
    wrap.append(
      label,
      control,
      el("p", { class: "help", id: helpId }, help, help && factsText ? " · " : "", el("span", { class: "facts" }, factsText)),
      el("p", { class: "field-error", id: errId, "data-error-for": path, role: "alert" })
    );
    parent.append(wrap);
  }

  function renderForm(container, requestSchema, root, widgets = {}, skip = [], prefix = "") {
    const s = resolve(requestSchema, root);
    const example = (s.examples && s.examples[0]) || s.example || {};
    const ctx = { root, widgets };
    container.replaceChildren();
    const req = new Set(s.required || []);
    for (const [name, sub] of Object.entries(s.properties || {})) {
      if (skip.includes(name)) continue;
      renderField(container, ctx, name, sub, prefix + name, req.has(name), 1, example[name]);
    }
    return s;
  }

  class FieldError extends Error {
    constructor(field, message) {
      super(message);
      this.field = field;
    }
  }

  function setPath(obj, path, value) {
    const parts = path.split(".");
    let node = obj;
    for (const p of parts.slice(0, -1)) node = node[p] = node[p] || {};
    node[parts[parts.length - 1]] = value;
  }

  /** The form's values as the request body: only what differs from the defaults. */
  function collect(form) {
    const body = {};
    for (const control of $$("[data-path]", form)) {
      const path = control.dataset.path;
      const kind = control.dataset.kind;
      const def = control.dataset.default !== undefined ? JSON.parse(control.dataset.default) : undefined;
      const required = control.dataset.required === "true";
      let value;
      if (kind === "boolean") value = control.checked;
      else if (kind === "multi") value = $$("input:checked", control).map((b) => JSON.parse(b.value));
      else {
        const text = control.value.trim();
        if (text === "") {
          if (required) throw new FieldError(path, "required");
          continue;
        }
        if (kind === "choice") value = JSON.parse(text); // option values are JSON
        else if (kind === "integer" || kind === "number") {
          value = Number(text);
          if (!Number.isFinite(value) || (kind === "integer" && !Number.isInteger(value))) {
            throw new FieldError(path, `must be ${kind === "integer" ? "an integer" : "a number"}`);
          }
          if (control.min !== "" && value < Number(control.min)) throw new FieldError(path, `must be ≥ ${control.min}`);
          if (control.max !== "" && value > Number(control.max)) throw new FieldError(path, `must be ≤ ${control.max}`);
        } else if (kind.startsWith("list-")) {
          value = text.split(",").map((v) => v.trim()).filter(Boolean);
          if (kind !== "list-string") value = value.map(Number);
        } else if (kind === "json") {
          try {
            value = JSON.parse(text);
          } catch (exc) {
            throw new FieldError(path, `not valid JSON (${exc.message})`);
          }
        } else value = text;
      }
      if (kind === "multi" && required && value.length === 0) throw new FieldError(path, "choose at least one");
      if (!required && def !== undefined && JSON.stringify(value) === JSON.stringify(def)) continue;
      if (kind === "multi" && !required && value.length === 0 && (def === undefined || def === null)) continue;
      setPath(body, path, value);
    }
    return body;
  }

  function clearErrors(form) {
    for (const p of $$(".field-error", form)) p.textContent = "";
    for (const c of $$("[aria-invalid]", form)) c.removeAttribute("aria-invalid");
  }

  /** Show `message` next to the control of `field` (or its closest parent group). */
  function showFieldError(form, field, message) {
    let path = field || "";
    for (;;) {
      const target = $$("[data-error-for]", form).find((p) => p.dataset.errorFor === path);
      if (target) {
        target.textContent = message;
        const control = $$("[data-path]", form).find((c) => c.dataset.path === path) || (path === "file" ? $("#upload-file") : null);
        if (control) {
          control.setAttribute("aria-invalid", "true");
          control.focus();
          const group = control.closest("details");
          if (group) group.open = true;
        }
        return;
      }
      if (!path) break;
      path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
    }
    showAlert(message);
  }

  // ------------------------------------------------------------ the widgets
  async function datasetOptions(select, selected) {
    const list = await api("/datasets?limit=500");
    select.replaceChildren(el("option", { value: "" }, "(choose a dataset)"));
    for (const d of list.items) {
      const opt = el("option", { value: d.id, disabled: d.status !== "ready" }, `${d.name} — ${fmtInt(d.num_users)} users${d.status !== "ready" ? ` (${d.status})` : ""}`);
      select.append(opt);
    }
    if (selected) select.value = selected;
  }

  async function regenerationOptions(select, datasetId) {
    select.replaceChildren(el("option", { value: "" }, "(the latest successful one)"));
    if (!datasetId) return;
    const list = await api(`/jobs?kind=regenerate&state=succeeded&dataset_id=${encodeURIComponent(datasetId)}`);
    for (const j of list.items) {
      select.append(el("option", { value: j.id }, `${shortId(j.id)} — ${fmtTime(j.finished_at)}`));
    }
  }

  // -------------------------------------------------------------- job views
  const STAGE_LABELS = {
    prepare: "Validation",
    mine: "Mining patterns",
    pairs: "Sequence–pattern pairs",
    pretrain: "Pre-training (batches)",
    "pretrain:valid": "Pre-training epochs",
    "pretrain:test": "Pre-training test",
    regenerator: "Regenerator epochs",
    decode: "Decoding",
    train: "Training (batches)",
    valid: "Training epochs (validation)",
    test: "Test evaluation",
    compare: "Runs",
    children: "Train jobs",
    aggregate: "Aggregation",
  };
  const stagePlans = () => JSON.parse($("#stage-plans").textContent || "{}");

  /** The planned stages and those reported, in pipeline order: the order of
   * STAGE_LABELS, then other names (compare's runs) grouped by run. */
  function stageOrder(job) {
    const plan = stagePlans()[job.kind] || [];
    const names = [...new Set([...plan, ...Object.keys(job.progress.stages || {})])];
    const known = Object.keys(STAGE_LABELS);
    const suffix = (n) => ({ "": 0, valid: 1, test: 2 })[n.includes(":") ? n.split(":").pop() : ""] ?? 3;
    const key = (n) => [known.includes(n) ? known.indexOf(n) : known.length, n.split(":")[0], suffix(n)];
    return names.sort((a, b) => {
      const [x, y] = [key(a), key(b)];
      return x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0) || x[2] - y[2];
    });
  }

  function stageDetail(entry, finished) {
    if (!entry) return finished ? "not run" : "pending";
    const bits = [];
    if (entry.total) bits.push(`${fmtInt(entry.done)} / ${fmtInt(entry.total)}`);
    else if (entry.epoch !== null && entry.epoch !== undefined) bits.push(`epoch ${entry.epoch + 1}`);
    const metrics = entry.metrics || {};
    const shown = ["ndcg@20", "recall@20", "loss", "patterns", "sources"].filter((m) => m in metrics);
    for (const m of shown) bits.push(`${m} ${Number.isInteger(metrics[m]) ? fmtInt(metrics[m]) : fmtNum(metrics[m])}`);
    if (entry.message) bits.push(entry.message);
    return bits.join(" · ");
  }

  function renderStages(job) {
    const list = $("#stages");
    const order = stageOrder(job);
    const stages = job.progress.stages || {};
    const plan = stagePlans()[job.kind] || [];
    const currentIndex = plan.indexOf(job.progress.stage);
    const finished = !ACTIVE.has(job.state);
    list.replaceChildren();
    order.forEach((name, i) => {
      const entry = stages[name];
      let fraction = entry ? entry.fraction : 0;
      const planned = plan.indexOf(name);
      if (job.state === "succeeded" && entry) fraction = 1;
      else if (planned >= 0 && currentIndex >= 0 && planned < currentIndex && entry) fraction = 1;
      const label = STAGE_LABELS[name] || name;
      const state = fraction === 1 ? "done" : entry ? "running" : "pending";
      const id = `stage-${i}`;
      const bar = el("progress", { id, max: 100, "aria-label": label });
      if (fraction !== null && fraction !== undefined) bar.value = Math.round(fraction * 100);
      list.append(
        el(
          "li",
          { class: `stage stage-${state}`, "data-stage": name, "data-state": state },
          el("label", { for: id, class: "stage-name" }, label),
          bar,
          el("span", { class: "pct" }, !entry && finished ? "–" : fraction === null || fraction === undefined ? "…" : fmtPct(fraction)),
          el("span", { class: "detail" }, stageDetail(entry, finished))
        )
      );
    });
  }

  /** A compare's train jobs, one link each (model/variant/seed). */
  function childLinks(job) {
    const kids = (job.parameters && job.parameters.children) || [];
    if (!kids.length) return undefined;
    const list = el("ul", { class: "children", id: "child-jobs" });
    for (const k of kids) {
      list.append(el("li", {}, el("a", { href: `/ui/jobs/${k.job_id}` }, `${k.model} / ${k.variant} / seed ${k.seed}`)));
    }
    return list;
  }

  function stateBadge(state) {
    return el("span", { class: `badge state-${state}` }, state);
  }

  function dl(target, rows) {
    target.replaceChildren();
    for (const [k, v] of rows) {
      if (v === undefined) continue;
      target.append(el("div", {}, el("dt", {}, k), el("dd", {}, v instanceof Node ? v : String(v))));
    }
  }

  async function exportFormats() {
    const doc = await schema();
    const op = (doc.paths["/datasets/{dataset_id}/regenerated"] || {}).get || {};
    const param = (op.parameters || []).find((p) => p.name === "format");
    const s = param ? unwrap(param.schema, doc).s : {};
    return choicesOf(s) || ["parquet"];
  }

  function downloadButton(label, path, filename) {
    const b = el("button", { type: "button", class: "download" }, label);
    b.addEventListener("click", () => download(path, filename, b));
    return b;
  }

  async function renderDownloads(job) {
    const box = $("#downloads");
    box.replaceChildren();
    const links = job.links || {};
    if (links.regenerated) {
      for (const fmt of await exportFormats()) {
        box.append(
          downloadButton(`Regenerated data (${fmt})`, `/datasets/${job.dataset_id}/regenerated?job=${job.id}&format=${fmt}`, `${job.dataset_id}-regenerated.${fmt}`)
        );
      }
    }
    if (links.checkpoint) box.append(downloadButton("Checkpoint (.tar)", links.checkpoint, `${job.id}-checkpoint.tar`));
    if (links.topk) box.append(downloadButton("Top-k per user (.parquet)", links.topk, `${job.id}-topk.parquet`));
    if (links["report.html"]) {
      box.append(downloadButton("HTML report", links["report.html"], `${job.id}-report.html`));
      const open = el("button", { type: "button", id: "open-report" }, "Open the HTML report");
      open.addEventListener("click", () => openReport(job));
      box.append(open);
    }
    if (links.report) box.append(downloadButton("Report (JSON)", links.report, `${job.id}-report.json`));
  }

  async function openReport(job) {
    const response = await api(job.links["report.html"], { raw: true });
    const html = await response.text();
    let frame = $("#report-frame");
    if (!frame) {
      frame = el("iframe", { id: "report-frame", title: "HTML report", sandbox: "" });
      $("#result-views").prepend(el("section", { class: "report" }, el("h3", {}, "HTML report"), frame));
    }
    frame.srcdoc = html;
    frame.scrollIntoView();
    frame.focus();
  }

  function section(title, ...children) {
    return el("section", { class: "result" }, el("h3", {}, title), ...children);
  }

  function renderRegenerationResult(report, views) {
    const regen = report.regenerated || {};
    const patterns = report.patterns || {};
    const rows = report.rows || regen.rows || {};
    const facts = el("dl", { class: "stats" });
    dl(facts, [
      ["Patterns mined", fmtInt(patterns.patterns)],
      ["Sequence–pattern pairs", fmtInt(patterns.pairs)],
      ["Sequences decoded", fmtInt(regen.decoded)],
      ["Duplicates removed", fmtInt(regen.duplicates_removed)],
      ["Generative share", regen.generative_share !== undefined ? fmtPct(regen.generative_share) : undefined],
      ["Memories used", regen.memories_used !== undefined ? fmtInt(regen.memories_used) : undefined],
      ["Total time", report.timings ? `${fmtNum(report.timings.total_s, 1)} s` : undefined],
    ]);
    views.append(section("Regeneration", facts));
    const grid = el("div", { class: "charts" });
    views.append(grid);

    const a = chartFigure("Rows per source", "chart-rows");
    grid.append(a.figure);
    barChart(a.canvas, Object.keys(rows), Object.values(rows), "rows", "source");

    if (patterns.patterns_per_length) {
      const b = chartFigure("Patterns per length", "chart-patterns");
      grid.append(b.figure);
      const [labels, data] = histogram(patterns.patterns_per_length);
      barChart(b.canvas, labels, data, "patterns", "pattern length");
    }
    const c = chartFigure("Regenerated rows by length", "chart-lengths");
    grid.append(c.figure);
    const [labels, data] = histogram(regen.length_histogram);
    if (labels.length) barChart(c.canvas, labels, data, "rows", "sequence length");
    else {
      c.figure.querySelector(".canvas-box").hidden = true;
      c.figure.append(el("p", { class: "muted" }, "No regenerated rows."));
    }

    const d = chartFigure("Regenerated rows per memory", "chart-memories");
    grid.append(d.figure);
    const mem = regen.rows_per_memory || {};
    if (Object.keys(mem).length) barChart(d.canvas, Object.keys(mem), Object.values(mem), "rows", "memory");
    else {
      d.figure.querySelector(".canvas-box").hidden = true;
      d.figure.append(el("p", { class: "muted" }, "No regenerated rows."));
    }

    if (regen.generative_share !== undefined && (rows.regenerated || 0) > 0) {
      const e = chartFigure("Regenerated items: generative share", "chart-generative");
      grid.append(e.figure);
      chart(e.canvas, {
        type: "doughnut",
        data: {
          labels: ["absent from the source (generative)", "copied from the source"],
          datasets: [{ data: [regen.generative_share, 1 - regen.generative_share], backgroundColor: [PALETTE[1], PALETTE[0]] }],
        },
      });
    }
  }

  function curves(canvas, history) {
    const epochs = history.map((h) => (h.epoch ?? 0) + 1);
    const metricNames = ["ndcg@20", "recall@20", "ndcg@10"].filter((m) => history.some((h) => m in h));
    const datasets = metricNames.map((m, i) => ({
      label: `valid ${m}`,
      data: history.map((h) => h[m] ?? null),
      borderColor: PALETTE[i + 1],
      backgroundColor: PALETTE[i + 1],
      yAxisID: "metric",
    }));
    if (history.some((h) => "loss" in h)) {
      datasets.unshift({ label: "training loss", data: history.map((h) => h.loss ?? null), borderColor: PALETTE[0], backgroundColor: PALETTE[0], yAxisID: "loss" });
    }
    chart(canvas, {
      type: "line",
      data: { labels: epochs, datasets },
      options: {
        scales: {
          x: { title: { display: true, text: "epoch" } },
          loss: { position: "left", title: { display: true, text: "loss" } },
          metric: { position: "right", title: { display: true, text: "validation metric" }, grid: { drawOnChartArea: false } },
        },
      },
    });
  }

  function weightCharts(weights, grid, prefix) {
    for (const [source, h] of Object.entries(weights || {})) {
      if (!h || typeof h !== "object") continue;
      if (!Array.isArray(h.counts)) {
        weightCharts(h, grid, `${prefix}${source} · `); // nested per run
        continue;
      }
      const f = chartFigure(`DR4SR+ weights · ${prefix}${source} (mean ${fmtNum(h.mean, 3)}, sd ${fmtNum(h.std, 3)}${h.weighted === false ? ", not weighted" : ""})`, `chart-weights-${prefix}${source}`.replace(/[^A-Za-z0-9-]/g, "-"));
      grid.append(f.figure);
      const edges = h.edges || [];
      const labels = h.counts.map((_, i) => (edges.length > i + 1 ? `${fmtNum(edges[i], 2)}–${fmtNum(edges[i + 1], 2)}` : String(i)));
      barChart(f.canvas, labels, h.counts, "positions", "weight");
    }
  }

  function metricsTable(rows, metricNames) {
    const table = el("table", { class: "list metrics" });
    table.append(el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "split"), metricNames.map((m) => el("th", { scope: "col" }, m)))));
    const body = el("tbody");
    for (const [name, values] of rows) {
      if (!values) continue;
      body.append(el("tr", {}, el("th", { scope: "row" }, name), metricNames.map((m) => el("td", {}, fmtNum(values[m])))));
    }
    table.append(body);
    return table;
  }

  const METRICS = ["ndcg@10", "ndcg@20", "recall@10", "recall@20"];

  function renderTrainResult(report, views) {
    const facts = el("dl", { class: "stats" });
    dl(facts, [
      ["Model", report.model],
      ["Training data", report.variant],
      ["Best epoch", report.best_epoch],
      ["Epochs run", report.epochs_run],
      ["Seconds", report.seconds],
    ]);
    views.append(section(report.title || "Training", facts, metricsTable([["valid", report.valid], ["test", report.test]], METRICS)));
    const grid = el("div", { class: "charts" });
    views.append(grid);
    if (Array.isArray(report.history) && report.history.length) {
      const f = chartFigure("Training curves", "chart-curves");
      grid.append(f.figure);
      curves(f.canvas, report.history);
    }
    weightCharts(report.weights, grid, "");
  }

  function stars(p) {
    if (p === undefined || p === null) return "";
    if (p < 0.001) return "***";
    if (p < 0.01) return "**";
    if (p < 0.05) return "*";
    return "";
  }

  function renderCompareResult(report, views) {
    const runs = report.runs || [];
    // several seeds: one row per model x variant, mean ± sd over the seeds
    const seeds = report.seeds || [];
    const multi = seeds.length > 1 && Array.isArray(report.summary);
    const rows = multi ? report.summary : runs;
    const testOf = (r) => r.test_mean || r.test || {};
    const table = el("table", { class: "list compare", id: "compare-table" });
    table.append(
      el(
        "caption",
        {},
        multi ? `Test metrics, mean ± sd over seeds ${seeds.join(", ")}. ` : "Test metrics. ",
        "Marks compare a variant with the original data on the same model, per-user NDCG@20",
        multi ? " averaged over seeds" : "",
        ": * p < 0.05, ** p < 0.01, *** p < 0.001 (paired t-test); ▲/▼ the direction of the mean difference."
      ),
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "model"), el("th", { scope: "col" }, "variant"), METRICS.map((m) => el("th", { scope: "col" }, m)), el("th", { scope: "col" }, "p (t / Wilcoxon)")))
    );
    const body = el("tbody");
    for (const row of rows) {
      const sig = row.significance || null;
      const mark = sig ? `${sig.mean_diff > 0 ? " ▲" : sig.mean_diff < 0 ? " ▼" : ""}${stars(sig.t_p)}` : "";
      const test = testOf(row);
      const sd = multi ? row.test_sd || {} : {};
      body.append(
        el(
          "tr",
          { "data-model": row.model, "data-variant": row.variant },
          el("th", { scope: "row" }, row.model),
          el("td", {}, row.variant),
          METRICS.map((m) =>
            el(
              "td",
              {},
              fmtNum(test[m]),
              m in sd ? el("span", { class: "sd" }, ` ± ${fmtNum(sd[m])}`) : null,
              m === "ndcg@20" && mark ? el("span", { class: `mark ${sig.mean_diff >= 0 ? "up" : "down"}` }, mark) : null
            )
          ),
          el("td", {}, sig ? `${fmtP(sig.t_p)} / ${fmtP(sig.wilcoxon_p)}` : "–")
        )
      );
    }
    table.append(body);
    views.append(section(report.title || "Comparison", table));
    const grid = el("div", { class: "charts" });
    views.append(grid);
    if (rows.length) {
      const f = chartFigure(`Test NDCG@20 per ${multi ? "model × variant (mean over seeds)" : "run"}`, "chart-compare");
      grid.append(f.figure);
      barChart(f.canvas, rows.map((r) => `${r.model} / ${r.variant}`), rows.map((r) => testOf(r)["ndcg@20"] ?? null), "ndcg@20", "");
    }
    for (const run of runs) {
      if (!Array.isArray(run.history) || !run.history.length) continue;
      const name = `${run.model} / ${run.variant}${multi && run.seed !== undefined ? ` / seed ${run.seed}` : ""}`;
      const g = chartFigure(`Curves · ${name}`, `chart-curves-${name}`.replace(/[^A-Za-z0-9-]/g, "-"));
      grid.append(g.figure);
      curves(g.canvas, run.history);
    }
    weightCharts(report.weights, grid, "");
  }

  async function renderResults(job) {
    $("#results").hidden = false;
    await renderDownloads(job);
    const views = $("#result-views");
    views.replaceChildren();
    let report = job.result || {};
    if (job.links.report) {
      try {
        report = await api(job.links.report);
      } catch (err) {
        showAlert(`The report could not be loaded: ${err.message}`);
      }
    }
    if (job.kind === "regenerate") renderRegenerationResult(report, views);
    else if (job.kind === "train") renderTrainResult(report, views);
    else if (job.kind === "compare") renderCompareResult(report, views);
  }

  function progressCell(job) {
    const f = job.progress ? job.progress.fraction : 0;
    return el("td", { class: "progress-cell" }, el("progress", { max: 100, value: Math.round(f * 100), "aria-label": `progress of job ${shortId(job.id)}` }), el("span", { class: "pct" }, fmtPct(f)));
  }

  // ------------------------------------------------------------------ pages
  const pages = {};

  pages.datasets = async () => {
    const doc = await schema();
    const op = doc.paths["/datasets"].post;
    const content = op.requestBody.content["multipart/form-data"];
    renderForm($("#upload-fields"), content.schema, doc);
    const form = $("#upload-form");
    const fileInput = $("#upload-file");
    const zone = $("#drop-zone");
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer.files.length) fileInput.files = e.dataTransfer.files;
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      upload(form, fileInput);
    });
    every(LIST_POLL_MS, refreshDatasets);
  };

  async function refreshDatasets() {
    const list = await api("/datasets?limit=500");
    const body = $("#datasets-table tbody");
    body.replaceChildren();
    for (const d of list.items) {
      body.append(
        el(
          "tr",
          { "data-id": d.id },
          el("th", { scope: "row" }, el("a", { href: `/ui/datasets/${d.id}` }, d.name)),
          el("td", {}, stateBadge(d.status)),
          el("td", {}, fmtInt(d.num_users)),
          el("td", {}, fmtInt(d.num_items)),
          el("td", {}, fmtInt(d.stats ? d.stats.interactions : null)),
          el("td", {}, fmtTime(d.created_at))
        )
      );
    }
    $("#datasets-empty").hidden = list.items.length > 0;
    $("#datasets-table").hidden = list.items.length === 0;
    return true;
  }

  function upload(form, fileInput) {
    clearErrors(form);
    showAlert("");
    const status = $("#upload-status");
    const bar = $("#upload-progress");
    if (!fileInput.files.length) {
      showFieldError(form, "file", "Choose a file to upload.");
      return;
    }
    let fields;
    try {
      fields = collect(form);
    } catch (err) {
      showFieldError(form, err.field, `${err.field}: ${err.message}`);
      return;
    }
    const data = new FormData();
    data.append("file", fileInput.files[0]);
    for (const [k, v] of Object.entries(fields)) data.append(k, typeof v === "string" ? v : JSON.stringify(v));
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/datasets");
    xhr.setRequestHeader("Authorization", authHeaders().Authorization);
    bar.hidden = false;
    bar.value = 0;
    status.textContent = "Uploading…";
    $("#upload-submit").disabled = true;
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        bar.value = Math.round((100 * e.loaded) / e.total);
        status.textContent = e.loaded < e.total ? `Uploading… ${bar.value} %` : "Uploaded; validating…";
      }
    });
    xhr.addEventListener("load", () => {
      $("#upload-submit").disabled = false;
      let payload = null;
      try {
        payload = JSON.parse(xhr.responseText);
      } catch (_) {
        /* not JSON */
      }
      if (xhr.status === 201 || xhr.status === 202) {
        bar.value = 100;
        status.replaceChildren(
          xhr.status === 201 ? `Uploaded “${payload.name}”: ${fmtInt(payload.num_users)} users, ${fmtInt(payload.num_items)} items. ` : `Stored “${payload.name}”; it is being validated. `,
          el("a", { href: `/ui/datasets/${payload.id}`, id: "uploaded-link" }, "Open the dataset")
        );
        form.reset();
        refreshDatasets();
        return;
      }
      bar.hidden = true;
      status.textContent = "";
      const err = new ApiError(xhr.status, payload);
      if (xhr.status === 401) return rejectKey(err.message);
      showFieldError(form, err.field || "", err.message);
    });
    xhr.addEventListener("error", () => {
      $("#upload-submit").disabled = false;
      bar.hidden = true;
      status.textContent = "";
      showAlert("The upload failed: the service could not be reached.");
    });
    xhr.send(data);
  }

  pages.dataset = async () => {
    const id = document.body.dataset.id;
    $("#start-regenerate").href = `/ui/jobs/new/regenerate?dataset_id=${encodeURIComponent(id)}`;
    $("#start-train").href = `/ui/jobs/new/train?dataset_id=${encodeURIComponent(id)}`;
    $("#start-compare").href = `/ui/jobs/new/compare?dataset_id=${encodeURIComponent(id)}`;
    $("#delete-dataset").addEventListener("click", async () => {
      if (!window.confirm("Delete this dataset, its jobs and all their files?")) return;
      try {
        await api(`/datasets/${id}`, { method: "DELETE" });
        location.href = "/ui/";
      } catch (err) {
        showAlert(`Not deleted: ${err.message}`);
      }
    });
    let shown = false;
    every(LIST_POLL_MS, async () => {
      let d;
      try {
        d = await api(`/datasets/${encodeURIComponent(id)}`);
      } catch (err) {
        if (err.status === 404) {
          $("#dataset-missing").hidden = false;
          return false;
        }
        throw err;
      }
      $("#dataset-body").hidden = false;
      $("#dataset-title").textContent = d.name;
      document.title = `${d.name} · DR4SR console`;
      const st = d.stats || {};
      dl($("#dataset-stats"), [
        ["Status", stateBadge(d.status)],
        ["File", `${d.filename} (${d.format || "?"}, ${fmtInt(d.size_bytes)} bytes)`],
        ["Users", fmtInt(d.num_users)],
        ["Items", fmtInt(d.num_items)],
        ["Interactions", fmtInt(st.interactions)],
        ["Mean / max length", st.mean_length !== undefined ? `${fmtNum(st.mean_length, 2)} / ${fmtInt(st.max_length)}` : undefined],
        ["Density", st.density !== undefined ? fmtNum(st.density, 4) : undefined],
        ["Before k-core", st.users_before !== undefined ? `${fmtInt(st.users_before)} users, ${fmtInt(st.items_before)} items, ${fmtInt(st.interactions_before)} interactions` : undefined],
        ["k-core (users / items)", st.user_core !== undefined ? `${st.user_core} / ${st.item_core}` : undefined],
        ["Uploaded", fmtTime(d.created_at)],
      ]);
      const errBox = $("#dataset-error");
      errBox.hidden = !d.error;
      if (d.error) errBox.textContent = d.error.message || JSON.stringify(d.error);
      if (!shown && st.length_histogram) {
        const [labels, data] = histogram(st.length_histogram);
        barChart($("#length-chart"), labels, data, "users", "sequence length");
        shown = true;
      }
      $("#length-missing").hidden = !!st.length_histogram || d.status === "validating";
      const jobs = await api(`/jobs?dataset_id=${encodeURIComponent(id)}&limit=500`);
      fillJobs($("#jobs-table tbody"), jobs.items, false);
      $("#jobs-empty").hidden = jobs.items.length > 0;
      const regen = jobs.items.find((j) => j.kind === "regenerate" && j.state === "succeeded");
      const box = $("#regenerated-buttons");
      if (regen && !box.childElementCount) {
        for (const fmt of await exportFormats()) {
          box.append(downloadButton(`Regenerated data (${fmt})`, `/datasets/${id}/regenerated?format=${fmt}`, `${id}-regenerated.${fmt}`));
        }
      }
      $("#regenerated-downloads").hidden = !regen;
      return d.status === "validating" || jobs.items.some((j) => ACTIVE.has(j.state));
    });
  };

  function fillJobs(body, items, withDataset, names = {}) {
    body.replaceChildren();
    for (const j of items) {
      body.append(
        el(
          "tr",
          { "data-id": j.id, "data-state": j.state },
          el("th", { scope: "row" }, el("a", { href: `/ui/jobs/${j.id}` }, shortId(j.id))),
          el("td", {}, j.kind),
          withDataset ? el("td", {}, el("a", { href: `/ui/datasets/${j.dataset_id}` }, names[j.dataset_id] || shortId(j.dataset_id))) : null,
          el("td", {}, stateBadge(j.state)),
          progressCell(j),
          el("td", {}, fmtTime(j.created_at))
        )
      );
    }
  }

  pages.jobs = async () => {
    let names = {};
    every(LIST_POLL_MS, async () => {
      const list = await api("/jobs?limit=200");
      if (list.items.some((j) => !(j.dataset_id in names))) {
        const ds = await api("/datasets?limit=500");
        names = Object.fromEntries(ds.items.map((d) => [d.id, d.name]));
      }
      fillJobs($("#jobs-table tbody"), list.items, true, names);
      $("#jobs-empty").hidden = list.items.length > 0;
      $("#jobs-table").hidden = list.items.length === 0;
      return true;
    });
  };

  pages["new-job"] = async () => {
    const kind = document.body.dataset.kind;
    const doc = await schema();
    const op = doc.paths[`/jobs/${kind}`].post;
    $("#job-form-description").textContent = op.description || op.summary || "";
    const form = $("#job-form");
    const preselected = query("dataset_id");
    const widgets = {
      dataset_id: (common) => {
        const select = el("select", common);
        datasetOptions(select, preselected).then(() => select.dispatchEvent(new Event("change")));
        return select;
      },
      regeneration_job_id: (common) => el("select", common),
    };
    renderForm($("#job-fields"), op.requestBody.content["application/json"].schema, doc, widgets);
    const dsSelect = $("#job-fields [data-path='dataset_id']");
    const regenSelect = $("#job-fields [data-path='regeneration_job_id']");
    if (dsSelect && regenSelect) {
      dsSelect.addEventListener("change", () => regenerationOptions(regenSelect, dsSelect.value).catch((e) => showAlert(e.message)));
    }
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      clearErrors(form);
      showAlert("");
      let body;
      try {
        body = collect(form);
      } catch (err) {
        showFieldError(form, err.field, `${err.field}: ${err.message}`);
        return;
      }
      const button = $("#job-submit");
      button.disabled = true;
      $("#job-status").textContent = "Submitting…";
      try {
        const job = await api(`/jobs/${kind}`, { method: "POST", json: body });
        location.href = `/ui/jobs/${job.id}`;
      } catch (err) {
        $("#job-status").textContent = "";
        if (err.status !== 401) showFieldError(form, err.field || "", err.message);
      } finally {
        button.disabled = false;
      }
    });
  };

  pages.job = async () => {
    const id = document.body.dataset.id;
    let resultsShown = false;
    $("#cancel-job").addEventListener("click", async () => {
      if (!window.confirm("Cancel this job?")) return;
      try {
        await api(`/jobs/${id}/cancel`, { method: "POST" });
      } catch (err) {
        showAlert(`Not cancelled: ${err.message}`);
      }
    });
    every(POLL_MS, async () => {
      let job;
      try {
        job = await api(`/jobs/${encodeURIComponent(id)}`);
      } catch (err) {
        if (err.status === 404) {
          $("#job-missing").hidden = false;
          return false;
        }
        throw err;
      }
      $("#job-body").hidden = false;
      $("#job-title").textContent = `${humanize(job.kind)} job ${shortId(job.id)}`;
      document.title = `${job.kind} ${shortId(job.id)} · DR4SR console`;
      dl($("#job-summary"), [
        ["State", stateBadge(job.state + (job.cancel_requested && ACTIVE.has(job.state) ? " (cancelling)" : ""))],
        ["Dataset", el("a", { href: `/ui/datasets/${job.dataset_id}` }, shortId(job.dataset_id))],
        ["Regeneration", job.regeneration_job_id ? el("a", { href: `/ui/jobs/${job.regeneration_job_id}` }, shortId(job.regeneration_job_id)) : undefined],
        ["Part of", job.parent_job_id ? el("a", { href: `/ui/jobs/${job.parent_job_id}` }, `compare ${shortId(job.parent_job_id)}`) : undefined],
        ["Train jobs", childLinks(job)],
        ["Queue", job.queue],
        ["Attempts", `${job.attempts} of ${job.max_attempts}`],
        ["Created", fmtTime(job.created_at)],
        ["Started", fmtTime(job.started_at)],
        ["Finished", fmtTime(job.finished_at)],
        ["Run time", job.finished_at || !job.started_at ? fmtDuration(job.started_at, job.finished_at) : `${fmtDuration(job.started_at, new Date().toISOString())} so far`],
      ]);
      $("#overall-progress").value = Math.round(job.progress.fraction * 100);
      $("#overall-pct").textContent = fmtPct(job.progress.fraction);
      const errBox = $("#job-error");
      errBox.hidden = !job.error;
      if (job.error) errBox.textContent = `${job.error.type || "Error"}: ${job.error.message || ""}`;
      $("#cancel-job").hidden = !job.links.cancel || job.cancel_requested;
      renderStages(job);
      $("#job-parameters").textContent = JSON.stringify(job.parameters, null, 2);
      if (job.state === "succeeded" && !resultsShown) {
        resultsShown = true;
        await renderResults(job);
      }
      return ACTIVE.has(job.state);
    });
  };

  pages.missing = async () => {};

  // ------------------------------------------------------------------ start
  let entered = false;
  function enter() {
    $("#key-panel").hidden = true;
    $("#main").hidden = false;
    const key = sessionStorage.getItem(KEY) || "";
    $("#key-label").textContent = `Key …${key.slice(-4)}`;
    $("#key-state").hidden = false;
    if (entered) return;
    entered = true;
    const page = pages[document.body.dataset.page];
    if (page) page().catch((err) => err.status !== 401 && showAlert(err.message));
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#key-form").addEventListener("submit", useKey);
    $("#forget-key").addEventListener("click", forgetKey);
    if (sessionStorage.getItem(KEY)) enter();
    else {
      $("#key-panel").hidden = false;
      $("#api-key").focus();
    }
  });
})();
