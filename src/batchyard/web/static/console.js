// batchyard console: small enhancements over pages that work without script.
"use strict";

function csrfToken() {
  const main = document.getElementById("main");
  return main ? main.dataset.csrf : "";
}

function setupCopy() {
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const status = button.nextElementSibling;
      source.select();
      try {
        await navigator.clipboard.writeText(source.value);
        if (status) status.textContent = "Copied.";
      } catch (_err) {
        if (status) status.textContent = "Selected: press Ctrl+C to copy.";
      }
    });
  });
}

function setupUploadCheck() {
  document.querySelectorAll("form[data-max-bytes]").forEach((form) => {
    const max = Number(form.dataset.maxBytes);
    const input = form.querySelector("input[type=file]");
    const message = form.querySelector("[data-size-error]");
    const check = () => {
      const file = input.files && input.files[0];
      const tooLarge = file && file.size > max;
      message.textContent = tooLarge
        ? `The file is ${file.size} bytes; the plan allows at most ${max} bytes.` : "";
      return !tooLarge;
    };
    input.addEventListener("change", check);
    form.addEventListener("submit", (event) => { if (!check()) event.preventDefault(); });
  });
}

function setupSchedulePreview() {
  const form = document.querySelector("form[data-preview]");
  if (!form) return;
  const output = form.querySelector("[data-preview-output]");
  const error = form.querySelector("[data-preview-error]");
  const forecast = form.querySelector("[data-preview-forecast]");
  let timer = null;
  let serial = 0;
  // Only the fields of the chosen type are shown (all are, without script).
  const type = form.querySelector("select[name=type]");
  const showFields = () => {
    form.querySelectorAll("[data-for]").forEach((part) => {
      part.hidden = !part.dataset.for.split(" ").includes(type.value);
    });
  };
  type.addEventListener("change", showFields);
  showFields();
  const refresh = async () => {
    const data = new FormData(form);
    data.delete("csrf");
    const mine = ++serial;
    const response = await fetch(`${form.dataset.preview}?${new URLSearchParams(data)}`, {
      headers: { "X-CSRF-Token": csrfToken(), Accept: "application/json" },
      credentials: "same-origin",
    });
    if (mine !== serial || !response.ok) return;
    const body = await response.json();
    output.replaceChildren();
    if (body.error) {
      error.textContent = body.error;
      forecast.textContent = "";
      return;
    }
    error.textContent = "";
    if (body.next_runs.length) {
      const title = document.createElement("p");
      title.textContent = "Next 5 runs:";
      const list = document.createElement("ol");
      list.className = "runs";
      body.next_runs.forEach((run) => {
        const item = document.createElement("li");
        item.textContent = run.local.replace("T", " ");
        list.appendChild(item);
      });
      output.append(title, list);
    }
    forecast.textContent = body.forecast;
  };
  form.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  });
  form.addEventListener("change", () => { clearTimeout(timer); timer = setTimeout(refresh, 50); });
  refresh();
}

function setupTail() {
  const log = document.querySelector("pre.log[data-tail]");
  if (!log || !log.dataset.tail) return;
  const status = document.querySelector("[data-status]");
  const source = new EventSource(log.dataset.tail);
  source.addEventListener("log", (event) => {
    const line = JSON.parse(event.data);
    const span = document.createElement("span");
    span.className = `line ${line.stream} ${line.level || ""}`;
    const at = line.at.replace("T", " ").slice(0, 19);
    span.textContent = `${at} ${line.stream}${line.level ? " " + line.level.toUpperCase() : ""} ${line.message}`;
    log.append(span, "\n");
    log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("end", (event) => {
    source.close();
    const ended = JSON.parse(event.data).status;
    if (status) {
      status.textContent = ended;
      status.className = `badge ${ended}`;
    }
    // The attempts, artifacts and run time are on the server's page: load it again.
    setTimeout(() => window.location.reload(), 300);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupCopy();
  setupUploadCheck();
  setupSchedulePreview();
  setupTail();
});
