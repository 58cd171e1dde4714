// The page of `mobilenets serve`: send the picked image to POST /v1/predict and draw the
// top-5 as bars; fill the model card from GET /v1/model. No framework, no network but this server.
"use strict";

const $ = (id) => document.getElementById(id);

function fmt(n) {
  if (n === null || n === undefined) return "–";
  if (n >= 1e6) return (n / 1e6).toFixed(2) + " M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " k";
  return String(n);
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function drawResults(data, roundTripMs) {
  const list = $("results");
  list.replaceChildren();
  for (const item of data.top) {
    const li = document.createElement("li");
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = item["class"];
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = (item.probability * 100).toFixed(1) + " %";
    prob.dataset.value = String(item.probability);
    row.append(name, prob);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = Math.max(0.5, item.probability * 100).toFixed(1) + "%";
    bar.append(fill);
    li.append(row, bar);
    list.append(li);
  }
  const t = data.time_ms;
  $("latency").textContent = `server ${t.total.toFixed(1)} ms (decode ${t.decode.toFixed(1)}, ` +
    `queue ${t.queue.toFixed(1)}, inference ${t.inference.toFixed(1)}, batch of ${data.batch_size}); ` +
    `round trip ${roundTripMs.toFixed(1)} ms`;
}

async function classify(file) {
  showError("");
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("latency").textContent = "classifying…";
  const start = performance.now();
  try {
    const response = await fetch("/v1/predict?top_k=5", {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    drawResults(data, performance.now() - start);
    document.body.dataset.state = "done";
  } catch (err) {
    $("results").replaceChildren();
    $("latency").textContent = "";
    showError(String(err.message || err));
    document.body.dataset.state = "error";
  }
}

async function loadCard() {
  const response = await fetch("/v1/model");
  const m = await response.json();
  const acc = m.accuracy ? `${m.accuracy.top1.toFixed(1)} % top-1, ${m.accuracy.source}` : "not recorded";
  const rows = [
    ["variant", m.name], ["width", m.width_mult], ["resolution", m.resolution ? `${m.resolution}×${m.resolution}` : "–"],
    ["params", fmt(m.params)], ["MAdds", fmt(m.madds)], ["accuracy", acc],
    ["classes", m.classes.length], ["backend", m.backend], ["file", m.source],
  ];
  const body = $("card").tBodies[0];
  body.replaceChildren();
  for (const [k, v] of rows) {
    const tr = body.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = String(v);
  }
  $("model-name").textContent = `${m.name}, ${m.backend}`;
}

$("file").addEventListener("change", (e) => { if (e.target.files[0]) classify(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]);
});
loadCard().catch((err) => showError("model card: " + err));
