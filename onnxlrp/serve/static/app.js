// The onnxlrp page: pick a model and an image, see the scores, click a class to explain it.
"use strict";
const $ = (id) => document.getElementById(id);
const PARAMS = { epsilon: "epsilon", gamma: "gamma", low: "low (input minimum)", high: "high (input maximum)" };
let models = {}, file = null, target = null;

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));   // every error of the API is {"error": ...}
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// "class 4", or for a language model the token too: "class 1037 (\"the\")"
function classLabel(reply) {
  const score = reply.scores.find((s) => s.class === reply.target);
  return `class ${reply.target}` + (score && score.token ? ` ("${score.token}")` : "");
}

// A result that no longer matches the input (a new image or model, a failed request) leaves the screen
function clearResult() {
  $("result").hidden = true;
  for (const id of ["input", "heatmap"]) $(id).removeAttribute("src");
  $("scores").innerHTML = ""; $("tokens").innerHTML = ""; $("summary").textContent = "";
  $("explained").textContent = "";
  $("download-png").removeAttribute("href");
}

function clearComparison() {
  $("comparison").hidden = true;
  $("grid").innerHTML = "";
}

function clearAnswer() {
  $("answer-result").hidden = true;
  for (const id of ["answer-prompt", "answer-tokens", "answer-detail", "answer-meta"]) $(id).textContent = "";
}

const kind = () => models[$("model").value].kind;
const isText = () => kind() === "text";
const ready = () => ({ text: () => $("sentence").value.trim() !== "", generation: () => $("prompt").value.trim() !== "",
                       image: () => file !== null })[kind()]();

function busy(on, what) {
  $("progress").hidden = !on;
  $("progress-text").textContent = what || "explaining…";
  for (const id of ["explain", "compare", "generate"]) $(id).disabled = on || !ready();
}

function showComposites() {
  const model = models[$("model").value];
  const generation = model.kind === "generation";
  $("drop").hidden = model.kind !== "image";
  $("text-input").hidden = model.kind !== "text";
  $("prompt-input").hidden = !generation;
  for (const id of ["explain", "compare", "mode-label"]) $(id).hidden = generation;
  $("generate").hidden = !generation;
  if (generation) $("max-new-tokens").max = model.max_new_tokens;
  busy(false);
  $("composite").innerHTML = "";
  for (const name of model.composites) $("composite").add(new Option(name.replaceAll("_", " "), name));
  $("composite").value = model.default_composite;
  showParams();
}

function showParams() {
  const wanted = models[$("model").value].params[$("composite").value] || {};
  $("params").innerHTML = "";
  for (const [key, value] of Object.entries(wanted)) {
    const label = document.createElement("label");
    label.textContent = PARAMS[key] + " ";
    const input = document.createElement("input");
    input.type = "number"; input.step = "any"; input.value = value; input.dataset.param = key;
    label.appendChild(input);
    $("params").appendChild(label);
  }
}

function params() {
  const values = {};
  for (const input of $("params").querySelectorAll("input")) values[input.dataset.param] = Number(input.value);
  return values;
}

function request(composite, raw) {
  if (!isText()) return { method: "POST", body: form(composite, raw) };
  const body = { model: $("model").value, text: $("sentence").value, composite: composite || $("composite").value,
                 params: composite ? {} : params(), mode: $("mode").value };
  if (target !== null) body.target = target;
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}

function form(composite, raw) {
  const data = new FormData();
  data.append("image", file);
  data.append("model", $("model").value);
  data.append("composite", composite || $("composite").value);
  data.append("params", JSON.stringify(composite ? {} : params()));
  data.append("mode", $("mode").value);
  if (target !== null) data.append("target", String(target));
  if (raw) data.append("raw", "true");
  return data;
}

async function explain() {
  if (!ready()) return;
  busy(true); $("error").textContent = "";
  try {
    const reply = await api("/v1/explain", request());
    show(reply);
  } catch (error) {
    clearResult();
    $("error").textContent = error.message;
  } finally { busy(false); }
}

function show(reply) {
  $("result").hidden = false;
  $("scores").innerHTML = "";
  for (const score of reply.scores) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    const label = score.token ? `"${score.token}"` : `class ${score.class}`;
    button.textContent = `${label}: ${(100 * score.probability).toFixed(1)} %  (logit ${score.logit.toFixed(2)})`;
    button.dataset.class = score.class;
    if (score.class === reply.target) button.classList.add("chosen");
    button.onclick = () => { target = score.class; explain(); };
    item.appendChild(button);
    $("scores").appendChild(item);
  }
  $("explained").textContent = classLabel(reply);
  const text = Boolean(reply.tokens);
  for (const id of ["stack", "opacity-label", "downloads"]) $(id).hidden = text;
  $("tokens").hidden = !text;
  if (text) {
    const scale = Math.max(...reply.tokens.map((t) => Math.abs(t.relevance))) || 1;
    $("tokens").innerHTML = "";
    for (const t of reply.tokens) {
      const span = document.createElement("span");
      const a = Math.min(Math.abs(t.relevance) / scale, 1).toFixed(3);
      span.style.background = t.relevance >= 0 ? `rgba(220, 40, 40, ${a})` : `rgba(40, 90, 220, ${a})`;
      span.textContent = t.token; span.title = t.relevance.toPrecision(4);
      $("tokens").append(span, " ");
    }
  } else {
    // the overlay, not the bare heatmap: white where relevance is zero, that one washes the input out
    $("input").src = reply.input;
    $("heatmap").src = reply.overlay;
    $("heatmap").style.opacity = $("opacity").value;
  }
  const r = reply.relevance;
  $("summary").textContent = `relevance sum ${r.sum.toFixed(4)} (positive ${r.positive.toFixed(4)}, negative ` +
    `${r.negative.toFixed(4)})` + (r.conservation !== null ? `; conservation: ${(100 * r.conservation).toFixed(1)} % ` +
    `of the explained logit ${r.explained_score.toFixed(4)}` : "");
  if (!text) $("download-png").href = reply.heatmap;
}

async function downloadNpy(event) {
  event.preventDefault();
  busy(true);
  try {
    const reply = await api("/v1/explain", { method: "POST", body: form(null, true) });
    const bytes = Uint8Array.from(atob(reply.relevance_npy), (c) => c.charCodeAt(0));
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
    link.download = `relevance_class${reply.target}.npy`;
    link.click();
  } catch (error) { $("error").textContent = error.message; } finally { busy(false); }
}

async function compare() {
  busy(true); $("error").textContent = "";
  clearComparison(); $("comparison").hidden = false;
  $("comparison-title").textContent = "Composites side by side";
  try {
    for (const name of models[$("model").value].composites.slice(0, 5)) {
      const reply = await api("/v1/explain", request(name));
      $("comparison-title").textContent = `Composites side by side, explaining ${classLabel(reply)}`;
      $("grid").appendChild(figure(name, reply));
    }
  } catch (error) { $("error").textContent = error.message; } finally { busy(false); }
}

// built node by node: token text comes from the user's sentence and is never parsed as HTML
function figure(name, reply) {
  const box = document.createElement("figure");
  if (reply.overlay) {
    const picture = document.createElement("img");
    picture.alt = `${name}, ${classLabel(reply)}`; picture.src = reply.overlay;
    box.appendChild(picture);
  } else {
    const lines = document.createElement("p");
    for (const t of reply.tokens) lines.append(`${t.token} ${t.relevance.toFixed(2)}`, document.createElement("br"));
    box.appendChild(lines);
  }
  const caption = document.createElement("figcaption");
  caption.append(name.replaceAll("_", " "), document.createElement("br"), classLabel(reply));
  if (reply.relevance.conservation !== null) {
    caption.append(document.createElement("br"), `${(100 * reply.relevance.conservation).toFixed(0)} % conserved`);
  }
  box.appendChild(caption);
  return box;
}

// A language model: its greedy answer to the prompt, every word of it clickable (answer.js)
async function generate() {
  if (!ready()) return;
  busy(true, "generating and explaining…"); $("error").textContent = "";
  try {
    const body = { model: $("model").value, prompt: $("prompt").value, composite: $("composite").value,
                   max_new_tokens: Number($("max-new-tokens").value) };
    const reply = await api("/v1/generate", { method: "POST", headers: { "Content-Type": "application/json" },
                                              body: JSON.stringify(body) });
    clearResult(); clearComparison();
    $("answer-result").hidden = false;
    renderAnswer(reply, $("answer-prompt"), $("answer-tokens"), $("answer-detail"));
    $("answer-meta").textContent = `${reply.generated.length} new tokens with ${reply.composite.replaceAll("_", " ")}; ` +
      (reply.stopped === "eos" ? "the model ended its answer" : "stopped at the limit of new tokens") + ".";
  } catch (error) {
    clearAnswer();
    $("error").textContent = error.message;
  } finally { busy(false); }
}

function choose(chosen) {
  if (!chosen) return;
  file = chosen; target = null;
  clearResult(); clearComparison();
  $("thumb").src = URL.createObjectURL(chosen); $("thumb").hidden = false;
  explain();
}

async function start() {
  const listing = await api("/v1/models");
  for (const model of listing.models) {
    models[model.name] = model;
    const what = model.kind === "generation" ? "language model" : `${model.classes} classes`;
    $("model").add(new Option(`${model.name} (${what})`, model.name));
  }
  showComposites();
  $("model").onchange = () => {
    showComposites(); target = null; clearResult(); clearComparison(); clearAnswer();
    if (kind() !== "generation") explain();
  };
  $("composite").onchange = () => { showParams(); if (kind() !== "generation") explain(); };
  $("mode").onchange = explain;
  $("sentence").oninput = () => { target = null; busy(false); };
  $("prompt").oninput = () => busy(false);
  $("prompt").onkeydown = (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); };
  $("generate").onclick = generate;
  $("file").onchange = (e) => choose(e.target.files[0]);
  $("thumb").onerror = () => { $("thumb").hidden = true; };   // not a picture the browser can show either
  $("explain").onclick = explain;
  $("compare").onclick = compare;
  $("download-npy").onclick = downloadNpy;
  $("opacity").oninput = () => { $("heatmap").style.opacity = $("opacity").value; };
  const drop = $("drop");
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); };
}

start().catch((error) => { $("error").textContent = error.message; });
