// The front page: every model the API serves, each linking to its form.
import { api, el, startPage } from "./common.js";

async function listModels() {
  const status = document.getElementById("models-status");
  const list = document.getElementById("models");
  status.textContent = "Loading models…";
  try {
    const models = [];
    for (let url = "/v1/models"; url; ) {
      const page = await api(url);
      models.push(...page.results);
      url = page.next;
    }
    list.replaceChildren(...models.map((model) => {
      const ref = `${model.owner}/${model.name}`;
      return el("li", { class: "card" },
        el("h2", {}, el("a", { href: `/playground/models/${ref}` }, ref)),
        el("p", {}, model.description || ""),
        el("p", { class: "muted" }, `${model.run_count} runs`));
    }));
    status.textContent = models.length ? "" : "This API serves no models.";
  } catch (error) {
    status.textContent = `Could not load the models: ${error.message}`;
  }
}

startPage(listModels);
