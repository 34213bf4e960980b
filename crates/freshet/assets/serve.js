// The serve page: a form that asks GET /recommend and lists the answer.
// `#user=u1&k=5&head=click&features=device=ios` in the address fills the
// form and asks at once (a link to a user's recommendations).
"use strict";
(() => {
  const form = document.getElementById("ask");
  const asked = document.getElementById("asked");
  const body = document.querySelector("#results tbody");

  function query() {
    const data = new FormData(form);
    const params = new URLSearchParams();
    params.set("user", data.get("user").trim());
    if (data.get("k")) params.set("k", data.get("k"));
    if (data.get("head")) params.set("head", data.get("head"));
    for (const pair of String(data.get("features") || "").split(",")) {
      const at = pair.indexOf("=");
      if (at > 0) params.set(`f.${pair.slice(0, at).trim()}`, pair.slice(at + 1).trim());
    }
    return params;
  }

  async function ask() {
    const params = query();
    body.replaceChildren();
    asked.className = "";
    asked.textContent = `GET /recommend?${params} …`;
    try {
      const response = await fetch(`/recommend?${params}`, { cache: "no-store" });
      const answer = await response.json();
      if (!response.ok) {
        asked.className = "error";
        asked.textContent = `${response.status}: ${answer.error || response.statusText}`;
        return;
      }
      asked.textContent = `${answer.items.length} items for ${answer.user} at version ${answer.version} (${answer.head} head)`;
      asked.dataset.version = String(answer.version);
      answer.items.forEach((item, rank) => {
        const row = body.insertRow();
        row.dataset.item = item.item;
        row.dataset.score = String(item.score);
        row.insertCell().textContent = String(rank + 1);
        row.insertCell().textContent = item.item;
        const score = row.insertCell();
        score.className = "number";
        score.textContent = item.score.toFixed(4);
      });
      document.body.dataset.answered = "true";
    } catch (error) {
      asked.className = "error";
      asked.textContent = `no answer: ${error.message}`;
    }
  }

  async function version() {
    const status = document.getElementById("status");
    try {
      const response = await fetch("/version", { cache: "no-store" });
      const answer = await response.json();
      status.textContent = response.ok ? `serving version ${answer.info.version}` : answer.error;
    } catch (error) {
      status.textContent = `no answer: ${error.message}`;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ask();
  });
  const preset = new URLSearchParams(location.hash.slice(1));
  for (const [name, value] of preset) if (form.elements[name]) form.elements[name].value = value;
  if (preset.get("user")) ask();
  version();
  setInterval(version, 2000);
})();
