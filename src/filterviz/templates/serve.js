// filterviz serve: the page's behaviour. Everything it shows comes from the server's API (/api/...);
// a job's progress comes as server-sent events. No external scripts: the page works offline.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);
  const LAYER_TERMS = ["channel", "neuron", "layer", "diversity"];  // terms whose first argument is a layer
  let layers = [];
  let job = null;
  let source = null;
  let suggestion = -1;

  async function api(path, options) {
    const response = await fetch(path, options);
    let data = {};
    try { data = await response.json(); } catch (ignored) { /* an empty or non-JSON body */ }
    if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
    return data;
  }

  function showError(message) {
    $("error").textContent = message || "";
    $("error").hidden = !message;
  }

  function option(select, value, label) {
    const item = document.createElement("option");
    item.value = value;
    item.textContent = label || value;
    select.appendChild(item);
  }

  // -- model and layers ------------------------------------------------------------------------------
  async function loadLayers() {
    const model = $("model").value;
    $("layers-model").textContent = model;
    $("layer-count").textContent = "…";
    const size = $("size").value;
    const query = new URLSearchParams({ model: model });
    if (size) query.set("size", size);
    try {
      const data = await api(`/api/layers?${query}`);
      layers = data.layers;
      $("input-spec").textContent = `input: ${data.input}; outputs at ${data.size} px`;
    } catch (error) {
      layers = [];
      showError(error.message);
    }
    $("layer-count").textContent = String(layers.length);
    const body = $("layers").tBodies[0];
    body.textContent = "";
    const select = $("layer");
    select.textContent = "";
    for (const info of layers) {
      const row = body.insertRow();
      for (const text of [info.name, info.kind + (info.calls > 1 ? ` (${info.calls} calls)` : ""), info.output,
                          info.aliases.join(", ")]) {
        row.insertCell().textContent = text;
      }
      if (info.channels) {
        option(select, info.name, `${info.name} (${info.channels})`);
        row.addEventListener("click", () => { select.value = info.name; useUnit(); });
      }
    }
  }

  function channelsOf(name) {
    const info = layers.find((item) => item.name === name);
    return info ? info.channels : null;
  }

  function useUnit() {
    const layer = $("layer").value;
    if (!layer) return;
    const channels = channelsOf(layer);
    $("filter").max = channels ? String(channels - 1) : "";
    $("objective").value = `channel:${layer}:${$("filter").value || 0}`;
  }

  // -- recipes ---------------------------------------------------------------------------------------
  function preset() { return config.recipes[$("recipe").value]; }

  function showFields() {
    const recipe = preset();
    const body = $("fields").tBodies[0];
    body.textContent = "";
    for (const [name, value] of Object.entries(recipe.fields)) {
      if (name === "name" || name === "size" || name === "steps" || recipe.unused.includes(name)) continue;
      const row = body.insertRow();
      row.insertCell().textContent = name;
      const input = document.createElement("input");
      input.dataset.field = name;
      input.value = JSON.stringify(value);
      input.spellcheck = false;
      row.insertCell().appendChild(input);
    }
    $("size").placeholder = recipe.fields.size === null ? "model's" : String(recipe.fields.size);
    $("steps").placeholder = String(recipe.fields.steps);
  }

  function changedFields() {
    const recipe = preset();
    const changed = {};
    for (const input of $("fields").querySelectorAll("input[data-field]")) {
      const name = input.dataset.field;
      let value;
      try { value = JSON.parse(input.value); } catch (ignored) {
        throw new Error(`recipe field ${name}: ${input.value} is not a JSON value (numbers, true/false, null, ` +
                        "\"text\", [lists])");
      }
      if (JSON.stringify(value) !== JSON.stringify(recipe.fields[name])) changed[name] = value;
    }
    return changed;
  }

  // -- completion of layer names in the objective ----------------------------------------------------
  function partial() {
    const input = $("objective");
    const before = input.value.slice(0, input.selectionStart);
    const match = before.match(new RegExp(`(?:^|[\\s+*-])(${LAYER_TERMS.join("|")}):([^:\\s+*]*)$`));
    return match ? { kind: match[1], text: match[2], end: input.selectionStart } : null;
  }

  function suggest() {
    const list = $("suggestions");
    list.textContent = "";
    suggestion = -1;
    const found = partial();
    if (!found) { list.hidden = true; return; }
    const names = layers.map((info) => info.name);
    const starts = names.filter((name) => name.startsWith(found.text));
    const inside = names.filter((name) => !name.startsWith(found.text) && name.includes(found.text));
    const shown = starts.concat(inside).slice(0, 12);
    if (!shown.length) { list.hidden = true; return; }
    shown.forEach((name, index) => {
      const item = document.createElement("li");
      item.textContent = name;
      item.setAttribute("role", "option");
      item.addEventListener("mousedown", (event) => { event.preventDefault(); accept(index); });
      list.appendChild(item);
    });
    list.hidden = false;
  }

  function accept(index) {
    const found = partial();
    const item = $("suggestions").children[index];
    if (!found || !item) return;
    const input = $("objective");
    const name = item.textContent;
    const tail = found.kind === "layer" || found.kind === "diversity" ? "" : ":";
    const start = found.end - found.text.length;
    input.value = input.value.slice(0, start) + name + tail + input.value.slice(found.end);
    const cursor = start + name.length + tail.length;
    input.setSelectionRange(cursor, cursor);
    $("suggestions").hidden = true;
  }

  function moveSuggestion(event) {
    const list = $("suggestions");
    if (list.hidden) return;
    const count = list.children.length;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      suggestion = (suggestion + (event.key === "ArrowDown" ? 1 : count - 1)) % count;
      Array.from(list.children).forEach((item, index) => item.setAttribute("aria-selected", String(index === suggestion)));
    } else if ((event.key === "Enter" || event.key === "Tab") && count) {
      event.preventDefault();
      accept(Math.max(suggestion, 0));
    } else if (event.key === "Escape") {
      list.hidden = true;
    }
  }

  // -- a job -----------------------------------------------------------------------------------------
  function drawCurve(curve) {
    const points = curve.filter((point) => point[1] !== null);
    const line = $("curve-line");
    if (!points.length) { line.setAttribute("points", ""); $("curve-range").textContent = ""; return; }
    const last = Math.max(job ? job.steps : 1, 1);
    const values = points.map((point) => point[1]);
    const low = Math.min(...values);
    const high = Math.max(...values);
    const span = high - low || 1;
    line.setAttribute("points", points.map(([step, value]) =>
      `${(320 * step / last).toFixed(1)},${(115 - 110 * (value - low) / span).toFixed(1)}`).join(" "));
    $("curve-range").textContent = `objective: ${values[values.length - 1].toPrecision(4)} at step ` +
      `${points[points.length - 1][0]} (from ${low.toPrecision(4)} to ${high.toPrecision(4)})`;
  }

  function show(state) {
    job = state;
    const running = state.state === "queued" || state.state === "running";
    const words = {
      queued: "waiting in the queue",
      running: `step ${state.step} of ${state.steps}`,
      done: `done${state.cached ? " (from the cache)" : ""}: ${state.objective}`,
      failed: "failed",
      cancelled: "cancelled",
    };
    $("status").textContent = `Job ${state.id.slice(0, 8)}: ${words[state.state]}`;
    $("progress").value = state.progress;
    $("cancel").disabled = !running;
    $("start").disabled = running;
    if (state.preview_url && $("preview").getAttribute("src") !== state.preview_url) {
      $("preview").src = state.preview_url;
      $("preview").hidden = false;
    }
    drawCurve(state.curve);
    const download = $("download");
    download.hidden = !state.image_url;
    if (state.image_url) {
      download.href = `${state.image_url}?download=1`;
      download.setAttribute("download", `filterviz-${state.id.slice(0, 8)}.png`);
    }
    showError(state.error);
    const notes = $("notes");
    notes.textContent = "";
    for (const note of state.notes) {
      const item = document.createElement("li");
      item.textContent = note;
      notes.appendChild(item);
    }
  }

  function follow(state) {
    if (source) source.close();
    source = null;
    show(state);
    if (state.state !== "queued" && state.state !== "running") return;
    source = new EventSource(`/api/jobs/${state.id}/events`);
    source.addEventListener("job", (event) => {
      const next = JSON.parse(event.data);
      show(next);
      if (next.state !== "queued" && next.state !== "running") { source.close(); source = null; }
    });
  }

  async function start(event) {
    event.preventDefault();
    showError("");
    try {
      const body = { model: $("model").value, objective: $("objective").value, recipe: $("recipe").value,
                     seed: Number($("seed").value || 0), fields: changedFields() };
      for (const key of ["size", "steps"]) if ($(key).value) body[key] = Number($(key).value);
      const state = await api("/api/render", { method: "POST", headers: { "Content-Type": "application/json" },
                                               body: JSON.stringify(body) });
      $("download").hidden = true;
      follow(state);
    } catch (error) {
      showError(error.message);
    }
  }

  async function cancel() {
    if (!job) return;
    try { show(await api(`/api/jobs/${job.id}/cancel`, { method: "POST" })); } catch (error) { showError(error.message); }
  }

  // -- start: fill the controls, from the address's parameters where given ----------------------------
  async function init() {
    for (const name of config.models) option($("model"), name);
    for (const name of Object.keys(config.recipes)) option($("recipe"), name);
    const model = params.get("model");
    if (model && !config.models.includes(model)) {
      showError(`model ${model} is not one this server serves; pick one of the list`);
    }
    $("model").value = model && config.models.includes(model) ? model : config.model;
    const recipe = params.get("recipe");
    if (recipe && config.recipes[recipe]) $("recipe").value = recipe;
    for (const key of ["size", "steps", "seed"]) if (params.get(key)) $(key).value = params.get(key);
    showFields();
    await loadLayers();
    const layer = params.get("layer");
    if (layer && channelsOf(layer) !== null) {
      $("layer").value = layer;
      $("filter").value = params.get("filter") || "0";
    }
    if (params.get("objective")) $("objective").value = params.get("objective");
    else useUnit();

    $("model").addEventListener("change", async () => { await loadLayers(); useUnit(); });
    $("recipe").addEventListener("change", showFields);
    $("layer").addEventListener("change", useUnit);
    $("filter").addEventListener("change", useUnit);
    $("use-unit").addEventListener("click", useUnit);
    $("objective").addEventListener("input", suggest);
    $("objective").addEventListener("keydown", moveSuggestion);
    $("objective").addEventListener("blur", () => { $("suggestions").hidden = true; });
    $("form").addEventListener("submit", start);
    $("cancel").addEventListener("click", cancel);
    document.body.dataset.ready = "true";
  }

  init();
})();
