// One model's page: its input form, generated from the schema, and the create call.
import { api, apiPath, el, predictionPagePath, startPage } from "./common.js";
import { collectInput, fieldsOf, renderFields } from "./form.js";

const ref = location.pathname.replace(/^\/playground\/models\//, "").replace(/\/$/, "");
let fields = [];

async function loadModel() {
  const status = document.getElementById("model-status");
  const form = document.getElementById("prediction-form");
  document.getElementById("model-name").textContent = ref;
  document.title = `${ref} · Kiln playground`;
  status.textContent = "Loading the model's schema…";
  try {
    const model = await api(`/v1/models/${ref}`);
    document.getElementById("model-description").textContent = model.description || "";
    fields = fieldsOf(model.latest_version.openapi_schema);
    renderFields(document.getElementById("fields"), fields);
    form.hidden = false;
    status.textContent = "";
  } catch (error) {
    status.textContent = error.status === 404 ? `Model ${ref} not found.` : `Could not load the model: ${error.message}`;
  }
}

async function submit(event) {
  event.preventDefault();
  const form = event.target;
  const button = document.getElementById("run");
  const status = document.getElementById("submit-status");
  const problem = document.getElementById("submit-error");
  problem.textContent = "";
  button.disabled = true;
  try {
    const input = await collectInput(form, fields, (message) => { status.textContent = message; });
    status.textContent = "Creating the prediction…";
    const prediction = await api(`/v1/models/${ref}/predictions`, { method: "POST", json: { input } });
    status.textContent = "Created.";
    location.assign(prediction.urls.web ? apiPath(prediction.urls.web) : predictionPagePath(prediction.id));
  } catch (error) {
    status.textContent = "";
    problem.replaceChildren(el("strong", {}, "Not created: "), error.message);
    button.disabled = false;
  }
}

document.getElementById("prediction-form").addEventListener("submit", submit);
startPage(loadModel);
