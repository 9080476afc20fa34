// A form generated from a model's OpenAPI input schema (components.schemas.Input): the same
// schema the API validates requests with, so defaults, ranges and choices always match it.
import { api, el } from "./common.js";

// Integer ranges wider than this get a number field only: a slider over 2^32 seeds helps no one.
const MAX_SLIDER_STEPS = 1000;

// Flattens one property: anyOf [X, null] -> nullable X; allOf [$ref] / $ref -> the referenced
// schema (enums), with the property's own keys (default, description) taking precedence.
export function resolveProperty(property, components) {
  let schema = { ...property };
  let nullable = false;
  if (schema.anyOf) {
    const { anyOf, ...own } = schema;
    const options = anyOf.filter((option) => option.type !== "null");
    nullable = options.length < anyOf.length;
    schema = { ...options[0], ...own };
  }
  if (schema.allOf?.length === 1) {
    const { allOf, ...own } = schema;
    schema = { ...allOf[0], ...own };
  }
  if (schema.$ref) {
    const { $ref, ...own } = schema;
    schema = { ...components[$ref.split("/").pop()], ...own };
  }
  return { ...schema, nullable };
}

// Slots shown for a list input without maxItems.
const DEFAULT_LIST_SLOTS = 4;

function kindOf(schema) {
  if (schema.type === "array") return schema.items?.format === "uri" ? "image-list" : "number-list";
  if (schema["x-kiln-accept"]) return "file";
  if (schema.format === "uri") return "image";
  if (Array.isArray(schema.enum)) return "select";
  if (schema.type === "boolean") return "checkbox";
  if (schema.type === "integer" || schema.type === "number") return "number";
  return "text";
}

function sliderStep(schema) {
  if (schema.type === "integer") return 1;
  const span = schema.maximum - schema.minimum;
  return span <= 2 ? 0.01 : 0.1;
}

function hasSlider(schema) {
  if (schema.minimum === undefined || schema.maximum === undefined) return false;
  return schema.type !== "integer" || schema.maximum - schema.minimum <= MAX_SLIDER_STEPS;
}

function numberControl(name, schema, id) {
  const value = schema.default ?? "";
  const number = el("input", {
    id, name, type: "number", value, min: schema.minimum, max: schema.maximum,
    step: schema.type === "integer" ? 1 : "any",
    placeholder: name === "seed" ? "random" : null,
  });
  const parts = [number];
  if (hasSlider(schema)) {
    const slider = el("input", {
      id: `${id}-slider`, type: "range", min: schema.minimum, max: schema.maximum, step: sliderStep(schema),
      value: value === "" ? schema.minimum : value, "aria-label": `${name} (slider)`, tabindex: -1,
    });
    slider.addEventListener("input", () => { number.value = slider.value; });
    number.addEventListener("input", () => { if (number.value !== "") slider.value = number.value; });
    parts.unshift(slider);
  }
  if (name === "seed") {
    parts.push(el("button", {
      type: "button", onclick: () => { number.value = Math.floor(Math.random() * 2 ** 31); },
    }, "Random seed"));
  }
  return el("div", { class: "number-control" }, ...parts);
}

function imageControl(name, id, required, accept = "image/*") {
  const isImage = accept === "image/*";
  const preview = el("img", { class: "preview", alt: `Preview of ${name}`, hidden: true });
  const file = el("input", { id, name, type: "file", accept });
  file.addEventListener("change", () => {
    preview.hidden = !isImage || !file.files.length;
    if (isImage && file.files.length) preview.src = URL.createObjectURL(file.files[0]);
  });
  return el("div", { class: "image-control" },
    file,
    el("label", { for: `${id}-url`, class: "sub-label" }, isImage ? "or an image URL" : `or the URL of a ${accept} file`),
    el("input", { id: `${id}-url`, type: "url", placeholder: isImage ? "https://… or data:image/…" : "https://…",
                  required: false, "aria-required": required ? "true" : null }),
    preview);
}

// The element id of slot i of a list input: slot 0 carries the field's own id (its label points there).
function slotId(id, index) {
  return index === 0 ? id : `${id}-${index}`;
}

function listSlots(schema) {
  return schema.maxItems ?? DEFAULT_LIST_SLOTS;
}

// A list input as a few slots, one per item: image pickers, or number fields; empty slots are left out.
function listControl(field) {
  const { name, schema, id } = field;
  const slots = Array.from({ length: listSlots(schema) }, (_, index) => {
    const slot = slotId(id, index);
    const label = el("span", { class: "sub-label" }, `${index + 1}.`);
    if (field.kind === "image-list") {
      return el("div", { class: "list-slot" }, label, imageControl(`${name}[${index}]`, slot, false));
    }
    const items = schema.items || {};
    return el("div", { class: "list-slot" }, label, el("input", {
      id: slot, name: `${name}[${index}]`, type: "number", min: items.minimum, max: items.maximum,
      step: items.type === "integer" ? 1 : "any", "aria-label": `${name} ${index + 1}`,
    }));
  });
  return el("div", { class: "list-control" }, ...slots);
}

function control(field) {
  const { name, schema, id } = field;
  switch (field.kind) {
    case "image": return imageControl(name, id, field.required);
    case "file": return imageControl(name, id, field.required, schema["x-kiln-accept"]);
    case "image-list":
    case "number-list": return listControl(field);
    case "select":
      return el("select", { id, name },
        ...(schema.nullable ? [el("option", { value: "" }, "(none)")] : []),
        ...schema.enum.map((value) => el("option", { value, selected: value === schema.default }, String(value))));
    case "checkbox": return el("input", { id, name, type: "checkbox", checked: schema.default === true });
    case "number": return numberControl(name, schema, id);
    default: {
      const value = schema.default ?? "";
      return name.includes("prompt")
        ? el("textarea", { id, name, rows: 2, required: field.required }, value)
        : el("input", { id, name, type: "text", value, required: field.required });
    }
  }
}

// The fields of an Input schema, in x-order.
export function fieldsOf(openapiSchema) {
  const components = openapiSchema.components.schemas;
  const input = components.Input;
  const required = new Set(input.required || []);
  return Object.entries(input.properties)
    .map(([name, property]) => {
      const schema = resolveProperty(property, components);
      return { name, schema, kind: kindOf(schema), required: required.has(name), id: `input-${name}` };
    })
    .sort((a, b) => (a.schema["x-order"] ?? 1e9) - (b.schema["x-order"] ?? 1e9));
}

function describeRange(schema) {
  const bounds = [];
  if (schema.minimum !== undefined) bounds.push(`min ${schema.minimum}`);
  if (schema.maximum !== undefined) bounds.push(`max ${schema.maximum}`);
  if (schema.default !== undefined && schema.default !== null && schema.default !== "") {
    bounds.push(`default ${schema.default}`);
  }
  return bounds.length ? ` (${bounds.join(", ")})` : "";
}

export function renderFields(container, fields) {
  container.replaceChildren(...fields.map((field) => {
    const descriptionId = `${field.id}-description`;
    const built = control(field);
    const focusable = built.matches("input, select, textarea") ? built : built.querySelector(`#${CSS.escape(field.id)}`);
    focusable.setAttribute("aria-describedby", descriptionId);
    const label = el("label", { for: field.id }, el("code", {}, field.name),
      field.required ? el("span", { class: "required" }, " (required)") : null);
    const typeNote = {
      image: "image", file: `${field.schema["x-kiln-accept"]} file`,
      "image-list": `up to ${listSlots(field.schema)} images`,
      "number-list": `up to ${listSlots(field.schema)} numbers`,
    }[field.kind] || field.schema.type || "string";
    return el("div", { class: `field field-${field.kind}` }, label, built,
      el("p", { id: descriptionId, class: "description" },
        `${field.schema.description || ""} `, el("span", { class: "muted" }, typeNote + describeRange(field.schema))));
  }));
}

async function uploadImage(file) {
  const body = new FormData();
  body.append("content", file, file.name);
  const record = await api("/v1/files", { method: "POST", body });
  return record.urls.get;
}

function numberOrUndefined(text) {
  return text === "" ? undefined : Number(text);
}

// A picked file (uploaded now through the Files API) or the URL typed beside it; undefined when neither.
async function pickedFile(form, id, label, onProgress) {
  const element = form.querySelector(`#${CSS.escape(id)}`);
  const url = form.querySelector(`#${CSS.escape(id)}-url`).value.trim();
  if (element.files.length) {
    onProgress(`Uploading ${label}…`);
    return uploadImage(element.files[0]);
  }
  return url || undefined;
}

// The input object for a create request; picked files are uploaded through the Files API first.
export async function collectInput(form, fields, onProgress) {
  const input = {};
  for (const field of fields) {
    const element = form.querySelector(`#${CSS.escape(field.id)}`);
    let value;
    if (field.kind === "image" || field.kind === "file") {
      value = await pickedFile(form, field.id, field.name, onProgress);
      if (value === undefined && field.required) {
        throw new Error(`${field.name}: choose a file or enter a URL`);
      }
    } else if (field.kind === "image-list" || field.kind === "number-list") {
      const items = [];
      for (let index = 0; index < listSlots(field.schema); index++) {
        const slot = slotId(field.id, index);
        const item = field.kind === "image-list"
          ? await pickedFile(form, slot, `${field.name} ${index + 1}`, onProgress)
          : numberOrUndefined(form.querySelector(`#${CSS.escape(slot)}`).value);
        if (item !== undefined) items.push(item);
      }
      value = items.length ? items : undefined;
    } else if (field.kind === "checkbox") {
      value = element.checked;
    } else if (field.kind === "number") {
      value = element.value === "" ? undefined : Number(element.value);
    } else {
      value = element.value;
      if (value === "" && (field.kind === "select" || field.schema.nullable)) value = undefined;
    }
    if (value !== undefined) input[field.name] = value;
  }
  return input;
}
