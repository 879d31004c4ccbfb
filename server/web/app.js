// CheXray's browser app: a hash router and one function per page. No build step, no
// framework; DOM built with h() (text is always text: nothing from the API becomes HTML).

import { ApiError, call, humanMessage, upload } from "./api.js";
import { combined, compose, draw, normalise } from "./heatmap.js";

const FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"];
const slug = (f) => f.toLowerCase().replace(/ /g, "_");
// authRequired: the server analyses X-rays for signed-in users only (CHEXRAY_REQUIRE_AUTH).
const state = { user: null, models: null, authRequired: false };
const main = document.getElementById("main");

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

function page(title, ...children) {
  document.title = `${title} · CheXray`;
  main.replaceChildren(h("h1", { text: title }), ...children.flat().filter((c) => c != null && c !== false && c !== ""));
  main.focus({ preventScroll: true });
}

function alertBox() {
  return h("p", { class: "error", role: "alert", hidden: true });
}

function showError(box, err) {
  box.textContent = humanMessage(err);
  box.hidden = false;
}

function formatDate(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function pct(p) {
  return `${(100 * p).toFixed(1)}%`;
}

// -- session ---------------------------------------------------------------------------

async function refreshUser() {
  try {
    const session = await call("GET", "/api/v1/auth/session");
    state.user = session.user;
    state.authRequired = Boolean(session.auth_required);
  } catch (err) {
    // A stale or revoked session cookie: treat as signed out.
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
    state.user = null;
  }
  for (const el of document.querySelectorAll("[data-auth]")) {
    el.hidden = (el.dataset.auth === "in") !== Boolean(state.user);
  }
}

document.getElementById("logout").addEventListener("click", async () => {
  try { await call("POST", "/api/v1/auth/logout"); } catch { /* already gone */ }
  await refreshUser();
  location.hash = "#/";
});

// -- the result of one analysis (a fresh prediction or a stored study) -----------------

function findingsList(study) {
  return h("ul", { class: "findings" }, study.findings.map((f) => {
    const fill = h("span", { class: "fill" });
    fill.style.width = pct(f.probability);
    const mark = h("span", { class: "threshold", title: `threshold ${pct(f.threshold)}` });
    mark.style.left = pct(f.threshold);
    return h("li", { class: f.present ? "present" : "absent", "data-finding": f.name },
      h("div", { class: "row" },
        h("span", { class: "name", text: f.name }),
        h("span", { class: "badge", text: f.present ? "Present" : "Absent" })),
      h("div", {
        class: "bar", role: "meter", "aria-label": `${f.name} probability`,
        "aria-valuemin": "0", "aria-valuemax": "100",
        "aria-valuenow": (100 * f.probability).toFixed(1),
      }, fill, mark),
      h("div", { class: "nums", text: `${pct(f.probability)} · threshold ${pct(f.threshold)}` }));
  }));
}

// A study analysed from a DICOM: what the source said it is, its results as DICOM objects
// (downloads) and where their transfer to the PACS stands.
function dicomSection(study) {
  const urls = study.urls;
  if (!urls || !urls.dicom_sr) return null;
  const d = study.image.dicom || {};
  const said = ["Modality", "BodyPartExamined", "ViewPosition"].filter((k) => d[k]).map((k) => `${k} ${d[k]}`);
  const links = h("ul", { class: "dicom-links" },
    h("li", {}, h("a", { href: urls.dicom_sr, download: "", text: "Structured Report (DICOM SR)" })),
    Object.entries(urls.dicom_heatmaps).map(([name, href]) =>
      h("li", {}, h("a", { href, download: "", text: `Heatmap: ${name} (DICOM)` }))));
  const parts = [h("h3", { text: "DICOM" })];
  if (said.length) parts.push(h("p", { class: "meta", text: said.join(" · ") }));
  parts.push(links);
  if (study.pacs) {
    const p = study.pacs;
    const text = p.status === "sent" ? `Sent to the PACS (${formatDate(p.sent_at)})`
      : p.status === "failed" ? `Not sent to the PACS: ${p.detail}`
        : `Waiting to be sent to the PACS${p.detail ? `: ${p.detail}` : ""}`;
    parts.push(h("p", { class: p.status === "failed" ? "warn small" : "meta", "data-pacs": p.status, text }));
  }
  return h("section", { class: "dicom", "aria-label": "DICOM results" }, parts);
}

function resultView(study, imageSrc) {
  const img = h("img", { class: "xray", alt: `X-ray${study.title ? `: ${study.title}` : ""}` });
  const heat = h("canvas", { class: "heat", role: "img", "aria-label": "Heatmap of the findings present" });
  const select = h("select", { id: "heat-finding" },
    h("option", { value: "", text: "Findings present (combined)" }),
    FINDINGS.map((f) => h("option", { value: f, text: f })));
  const opacity = h("input", { type: "range", id: "heat-opacity", min: "0", max: "100", value: "60" });
  const download = h("button", { type: "button", class: "secondary", text: "Download heatmap PNG" });
  const maps = study.cam_maps;

  function redraw() {
    if (!img.naturalWidth || !maps.length) return;
    const finding = select.value;
    const map = finding ? normalise(maps[FINDINGS.indexOf(finding)]) : combined(maps, study.findings);
    const scale = Math.min(1, 1024 / Math.max(img.naturalWidth, img.naturalHeight));
    draw(heat, map, Math.round(img.naturalWidth * scale), Math.round(img.naturalHeight * scale));
    heat.setAttribute("aria-label", `Heatmap: ${finding || "findings present, combined"}`);
  }
  img.addEventListener("load", redraw);
  select.addEventListener("change", redraw);
  opacity.addEventListener("input", () => { heat.style.opacity = opacity.value / 100; });
  heat.style.opacity = 0.6;
  download.addEventListener("click", async () => {
    const blob = await compose(img, heat, opacity.value / 100);
    const a = h("a", {
      href: URL.createObjectURL(blob),
      download: `chexray-heatmap-${select.value ? slug(select.value) : "combined"}.png`,
    });
    document.body.append(a);
    a.click();
    a.remove();
  });
  img.src = imageSrc;

  const info = [
    h("p", { class: "meta", text: `Model ${study.model_version} · ${study.image.width}×${study.image.height} ${study.image.format.toUpperCase()}` }),
    ...study.image.notes.map((n) => h("p", { class: "meta", text: n })),
  ];
  if (!study.trained) {
    info.push(h("p", { class: "warn small", text: "Untrained models: these numbers are meaningless." }));
  }
  const dicom = dicomSection(study);
  if (dicom) info.push(dicom);
  return h("div", { class: "result", id: "result" },
    h("figure", { class: "viewer" },
      h("div", { class: "stack" }, img, heat),
      h("figcaption", {},
        h("label", { for: "heat-finding", text: "Heatmap" }), select,
        h("label", { for: "heat-opacity", text: "Opacity" }), opacity,
        download)),
    h("section", { class: "panel", "aria-label": "Findings" },
      h("h2", { text: "Findings" }), findingsList(study), info));
}

// -- pages -----------------------------------------------------------------------------

function home() {
  page("Chest X-ray findings in seconds",
    h("p", { class: "lead", text: "CheXray reads a chest X-ray (PNG, JPEG or DICOM) and estimates, for five findings, how likely each is, whether it is present, and where in the image the evidence lies." }),
    h("ul", { class: "chips" }, FINDINGS.map((f) => h("li", { text: f }))),
    h("p", {}, h("a", { class: "button", href: "#/analyse", text: "Analyse an X-ray" })),
    h("p", { class: "muted", text: state.authRequired
      ? "Five neural networks vote as a weighted ensemble; a sixth draws the heatmaps. This server analyses X-rays for signed-in users only: log in or register first."
      : "Five neural networks vote as a weighted ensemble; a sixth draws the heatmaps. Sign in to keep a history of your studies; anonymous analyses are not stored." }),
    h("p", { class: "notice" }, h("strong", { text: "Research use only. " }),
      "CheXray is not a medical device: it does not diagnose, and its output must not guide care."));
}

function analyse() {
  if (state.authRequired && !state.user) {
    return login("This server analyses X-rays for signed-in users only. Log in, or register, to analyse an X-ray.");
  }
  const input = h("input", { type: "file", id: "file", accept: ".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom" });
  const title = h("input", { type: "text", id: "title", maxlength: "200", placeholder: "e.g. follow-up, left side" });
  const button = h("button", { type: "submit", id: "analyse", disabled: true, text: "Analyse" });
  const chosen = h("p", { class: "muted", id: "chosen", text: "No file chosen." });
  const preview = h("img", { class: "preview", alt: "Preview of the chosen X-ray", hidden: true });
  const progress = h("progress", { max: "100", value: "0" });
  const status = h("div", { class: "status", role: "status", "aria-live": "polite", hidden: true },
    progress, h("span", { id: "status-text" }));
  const error = alertBox();
  const out = h("div", { id: "analysis" });
  let file = null;
  let previewUrl = null;

  async function choose(f) {
    file = f;
    error.hidden = true;
    out.replaceChildren();
    button.disabled = !f;
    chosen.textContent = f ? `${f.name} (${(f.size / 1024).toFixed(0)} KB)` : "No file chosen.";
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    preview.hidden = true;
    if (!f) return;
    const head = new Uint8Array(await f.slice(0, 132).arrayBuffer());
    const isDicom = head.length >= 132 && String.fromCharCode(...head.slice(128, 132)) === "DICM";
    if (!isDicom) {
      previewUrl = URL.createObjectURL(f);
      preview.src = previewUrl;
      preview.hidden = false;
    } else {
      chosen.textContent += " · DICOM: the server shows the decoded image after analysis.";
    }
  }

  const drop = h("div", { class: "drop", tabindex: "0", role: "button", "aria-label": "Choose or drop an X-ray file",
    onclick: () => input.click(),
    onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } },
    ondragover: (e) => { e.preventDefault(); drop.classList.add("over"); },
    ondragleave: () => drop.classList.remove("over"),
    ondrop: (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0] || null); },
  }, h("strong", { text: "Drop an X-ray here" }), h("span", { text: " or click to choose (PNG, JPEG, DICOM)" }));
  input.addEventListener("change", () => choose(input.files[0] || null));

  const form = h("form", { class: "upload", onsubmit: async (e) => {
    e.preventDefault();
    if (!file) return;
    button.disabled = true;
    error.hidden = true;
    status.hidden = false;
    const text = status.querySelector("#status-text");
    const data = new FormData();
    data.append("image", file);
    data.append("title", title.value.trim());
    const params = new URLSearchParams({ heatmap: "none" });
    if (!state.user) params.set("image", "inline");
    try {
      const study = await upload(`/api/v1/predictions?${params}`, data, (phase, frac) => {
        if (phase === "upload") { progress.value = Math.round(frac * 100); text.textContent = ` Uploading… ${Math.round(frac * 100)}%`; }
        else { progress.removeAttribute("value"); text.textContent = " Analysing…"; }
      });
      const src = study.urls ? study.urls.image
        : study.image_png_base64 ? `data:image/png;base64,${study.image_png_base64}` : previewUrl;
      out.replaceChildren(resultView(study, src));
      if (study.stored && study.id) {
        out.append(h("p", {}, h("a", { href: `#/study/${study.id}`, text: "Saved to your history" })));
      }
    } catch (err) {
      showError(error, err);
    } finally {
      status.hidden = true;
      progress.value = 0;
      button.disabled = !file;
    }
  } },
  drop, input, chosen, preview,
  h("label", { for: "title", text: "Title (optional)" }), title,
  h("div", { class: "actions" }, button), status, error);
  input.classList.add("visually-hidden");
  const note = state.user
    ? h("p", { class: "muted", text: "Signed in: this analysis will be saved to your history." })
    : h("p", { class: "muted", text: "You are not signed in: this analysis will not be stored." });
  page("Analyse an X-ray", note, form, out);
}

function field(id, label, attrs = {}) {
  const input = h("input", { id, name: id, required: true, type: "text", ...attrs });
  const msg = h("span", { class: "field-error", id: `${id}-error`, "aria-live": "polite" });
  input.setAttribute("aria-describedby", `${id}-error`);
  return { input, msg, el: h("div", { class: "field" }, h("label", { for: id, text: label }), input, msg) };
}

function fieldErrors(fields, err, box) {
  for (const f of Object.values(fields)) f.msg.textContent = "";
  const name = err?.detail?.field;
  if (name && fields[name]) {
    fields[name].msg.textContent = humanMessage(err);
    fields[name].input.focus();
  } else {
    showError(box, err);
  }
}

// Go to a page, rendering it again when it is the one shown (no hashchange then).
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function loginWith(username, password) {
  await call("POST", "/api/v1/auth/login", { username, password, cookie: true });
  await refreshUser();
}

// `note`: why the page asks to sign in, when another page sent the visitor here.
function login(note = null) {
  const f = {
    username: field("username", "Username", { autocomplete: "username" }),
    password: field("password", "Password", { type: "password", autocomplete: "current-password" }),
  };
  const error = alertBox();
  page("Log in", note && h("p", { class: "notice", id: "sign-in-required", text: note }), h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    error.hidden = true;
    try {
      await loginWith(f.username.input.value.trim(), f.password.input.value);
      go("#/analyse");
    } catch (err) { fieldErrors({}, err, error); }
  } }, f.username.el, f.password.el, error,
  h("div", { class: "actions" }, h("button", { type: "submit", text: "Log in" })),
  h("p", { class: "muted" }, "No account yet? ", h("a", { href: "#/register", text: "Register" }))));
}

function register() {
  const f = {
    username: field("username", "Username", { autocomplete: "username", maxlength: "150", pattern: "[\\w.@+\\-]+" }),
    email: field("email", "Email", { type: "email", autocomplete: "email" }),
    password: field("password", "Password (10 characters or more)", { type: "password", autocomplete: "new-password", minlength: "10" }),
    password2: field("password2", "Password again", { type: "password", autocomplete: "new-password" }),
  };
  const error = alertBox();
  page("Register", h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    error.hidden = true;
    if (f.password.input.value !== f.password2.input.value) {
      f.password2.msg.textContent = "The two passwords do not match.";
      f.password2.input.focus();
      return;
    }
    const body = {
      username: f.username.input.value.trim(), email: f.email.input.value.trim(),
      password: f.password.input.value, password2: f.password2.input.value,
    };
    try {
      await call("POST", "/api/v1/auth/register", body);
      await loginWith(body.username, body.password);
      go("#/analyse");
    } catch (err) { fieldErrors(f, err, error); }
  } }, Object.values(f).map((x) => x.el), error,
  h("div", { class: "actions" }, h("button", { type: "submit", text: "Create account" })),
  h("p", { class: "muted" }, "Already registered? ", h("a", { href: "#/login", text: "Log in" }))));
}

async function history(params) {
  if (!state.user) return login();
  const pageNo = Number(params.get("page") || 1);
  const finding = params.get("finding") || "";
  const filter = h("select", { id: "filter", onchange: () => {
    location.hash = `#/history?${new URLSearchParams(filter.value ? { finding: filter.value } : {})}`;
  } }, h("option", { value: "", text: "All studies" }),
  FINDINGS.map((f) => h("option", { value: slug(f), text: `${f} present`, selected: slug(f) === finding })));
  const error = alertBox();
  const list = h("ul", { class: "studies", "aria-label": "Studies" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  page("History", h("div", { class: "toolbar" }, h("label", { for: "filter", text: "Show" }), filter), error, list, pager);
  try {
    const q = new URLSearchParams({ page: pageNo, per_page: 12 });
    if (finding) q.set("finding", finding);
    const data = await call("GET", `/api/v1/studies?${q}`);
    if (!data.items.length) list.replaceWith(h("p", { class: "muted", id: "empty", text: finding ? "No study with that finding." : "No studies yet: analyse an X-ray while signed in." }));
    for (const s of data.items) {
      const del = h("button", { type: "button", class: "danger small", text: "Delete", "aria-label": `Delete study ${s.title || formatDate(s.created_at)}` });
      del.addEventListener("click", async () => {
        if (!confirm(`Delete the study "${s.title || formatDate(s.created_at)}"? This cannot be undone.`)) return;
        try { await call("DELETE", `/api/v1/studies/${encodeURIComponent(s.id)}`); history(params); }
        catch (err) { showError(error, err); }
      });
      list.append(h("li", { class: "study", "data-id": s.id },
        h("a", { href: `#/study/${s.id}`, class: "thumb" },
          h("img", { src: s.urls.image, alt: `X-ray ${s.title || formatDate(s.created_at)}`, loading: "lazy" })),
        h("div", {},
          h("a", { href: `#/study/${s.id}`, class: "title", text: s.title || "Untitled study" }),
          h("p", { class: "meta", text: formatDate(s.created_at) }),
          h("ul", { class: "chips small" }, s.present.length ? s.present.map((f) => h("li", { text: f })) : h("li", { class: "none", text: "Nothing present" })),
          del)));
    }
    const link = (n, label) => {
      const q2 = new URLSearchParams({ page: n });
      if (finding) q2.set("finding", finding);
      return h("a", { href: `#/history?${q2}`, text: label });
    };
    pager.append(pageNo > 1 ? link(pageNo - 1, "← Newer") : "", h("span", { text: ` Page ${data.page} of ${data.pages} ` }), pageNo < data.pages ? link(pageNo + 1, "Older →") : "");
  } catch (err) { showError(error, err); }
}

async function studyPage(id) {
  const error = alertBox();
  page("Study", error);
  try {
    const s = await call("GET", `/api/v1/studies/${encodeURIComponent(id)}`);
    const del = h("button", { type: "button", class: "danger", text: "Delete study" });
    del.addEventListener("click", async () => {
      if (!confirm("Delete this study? This cannot be undone.")) return;
      try { await call("DELETE", `/api/v1/studies/${encodeURIComponent(id)}`); location.hash = "#/history"; }
      catch (err) { showError(error, err); }
    });
    const parts = [h("p", { class: "meta", text: formatDate(s.created_at) }), error, resultView(s, s.urls.image)];
    if (state.user) parts.push(h("div", { class: "actions" }, del));
    page(s.title || "Study", ...parts);
  } catch (err) { showError(error, err); }
}

async function profile() {
  if (!state.user) return login();
  const u = state.user;
  const error = alertBox();
  const done = h("p", { class: "ok", role: "status", hidden: true });
  const pw = {
    current_password: field("current_password", "Current password", { type: "password", autocomplete: "current-password" }),
    new_password: field("new_password", "New password (10 characters or more)", { type: "password", autocomplete: "new-password", minlength: "10" }),
    new_password2: field("new_password2", "New password again", { type: "password", autocomplete: "new-password" }),
  };
  const del = h("button", { type: "button", class: "danger", text: "Delete my account" });
  del.addEventListener("click", async () => {
    if (!confirm("Delete your account, all your studies and their images? This cannot be undone.")) return;
    try { await call("DELETE", "/api/v1/me"); await refreshUser(); location.hash = "#/"; }
    catch (err) { showError(error, err); }
  });
  page("Profile",
    h("dl", { class: "profile" },
      h("dt", { text: "Username" }), h("dd", { text: u.username }),
      h("dt", { text: "Email" }), h("dd", { text: u.email || "—" }),
      h("dt", { text: "Full name" }), h("dd", { text: u.full_name || "—" }),
      h("dt", { text: "Joined" }), h("dd", { text: formatDate(u.date_joined) }),
      h("dt", { text: "Studies" }), h("dd", { text: String(u.study_count) })),
    h("h2", { text: "Change password" }),
    h("form", { class: "card", onsubmit: async (e) => {
      e.preventDefault();
      error.hidden = true;
      done.hidden = true;
      try {
        const r = await call("POST", "/api/v1/me/password", Object.fromEntries(Object.entries(pw).map(([k, f]) => [k, f.input.value])));
        for (const f of Object.values(pw)) { f.input.value = ""; f.msg.textContent = ""; }
        done.textContent = `Password changed. ${r.revoked_tokens} other session(s) signed out.`;
        done.hidden = false;
      } catch (err) { fieldErrors(pw, err, error); }
    } }, Object.values(pw).map((f) => f.el), h("div", { class: "actions" }, h("button", { type: "submit", text: "Change password" }))),
    done, error,
    apiKeys(),
    h("h2", { text: "Delete account" }),
    h("p", { class: "muted", text: "Removes your account, your studies and their images for good." }), del);
}

// API keys for services: inference only (predictions, /v2, gRPC); each shown once.
function apiKeys() {
  const error = alertBox();
  const list = h("ul", { class: "keys", id: "keys", "aria-label": "API keys" });
  const fresh = h("div", { class: "ok", id: "new-key", role: "status", hidden: true });
  const name = field("key_name", "A new key's name", { maxlength: "100", placeholder: "e.g. nightly batch" });
  const count = h("p", { class: "muted", id: "key-count" });

  async function load() {
    try {
      const data = await call("GET", "/api/v1/me/keys");
      count.textContent = `${data.keys.length} of at most ${data.limit} keys.`;
      list.replaceChildren(...data.keys.map((k) => {
        const revoke = h("button", { type: "button", class: "danger small", text: "Revoke", "aria-label": `Revoke the key ${k.name}` });
        revoke.addEventListener("click", async () => {
          if (!confirm(`Revoke the key "${k.name}"? Services using it stop working at once.`)) return;
          try { await call("DELETE", `/api/v1/me/keys/${k.id}`); fresh.hidden = true; await load(); }
          catch (err) { showError(error, err); }
        });
        return h("li", { class: "key", "data-id": String(k.id) },
          h("div", {},
            h("strong", { class: "title", text: k.name }), " ",
            h("code", { text: `${k.prefix}…` }),
            h("p", { class: "meta", text: `Created ${formatDate(k.created_at)} · ${k.last_used_at ? `last used ${formatDate(k.last_used_at)}` : "never used"}` })),
          revoke);
      }));
      if (!data.keys.length) list.append(h("li", { class: "muted", text: "No API keys yet." }));
    } catch (err) { showError(error, err); }
  }

  const form = h("form", { class: "card", id: "key-form", onsubmit: async (e) => {
    e.preventDefault();
    error.hidden = true;
    name.msg.textContent = "";
    try {
      const k = await call("POST", "/api/v1/me/keys", { name: name.input.value.trim() });
      name.input.value = "";
      fresh.replaceChildren(
        h("p", { text: `Your new key "${k.name}". Copy it now: it is not shown again.` }),
        h("code", { class: "secret", id: "new-key-value", text: k.key }));
      fresh.hidden = false;
      await load();
    } catch (err) { fieldErrors({ name: name }, err, error); }
  } }, name.el, h("div", { class: "actions" }, h("button", { type: "submit", text: "Create key" })));
  load();
  return h("section", { "aria-labelledby": "keys-title" },
    h("h2", { id: "keys-title", text: "API keys" }),
    h("p", { class: "muted", text: "For services and scripts: a key runs analyses (Authorization: Bearer <key> or X-API-Key) and nothing else. It is shown once, when created." }),
    count, list, fresh, error, form);
}

// -- router ----------------------------------------------------------------------------

async function route() {
  const [path, query] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", a.getAttribute("href") === `#${path}`);
  }
  try {
    if (!path || path === "/") return home();
    if (path === "/analyse") return analyse();
    if (path === "/login") return state.user ? (location.hash = "#/analyse") : login();
    if (path === "/register") return register();
    if (path === "/history") return await history(params);
    if (path === "/profile") return await profile();
    if (path.startsWith("/study/")) return await studyPage(decodeURIComponent(path.slice(7)));
    page("Not found", h("p", { text: "There is no such page. " }, h("a", { href: "#/", text: "Go home" })));
  } catch (err) {
    const box = alertBox();
    page("Something went wrong", box);
    showError(box, err);
  }
}

async function boot() {
  try {
    await refreshUser();
    state.models = await call("GET", "/api/v1/models").catch(() => null);
    document.getElementById("untrained").hidden = !state.models || state.models.trained;
  } catch (err) {
    const box = alertBox();
    page("CheXray", box);
    showError(box, err);
  }
  window.addEventListener("hashchange", route);
  await route();
  document.body.dataset.ready = "true";
}

boot();
