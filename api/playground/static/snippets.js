// Ready-to-copy code that creates the same prediction again: same version, same input, and the
// seed the worker used when the original left it to chance.

// The API's base URL as the prediction's own links name it (it may sit behind a public URL).
export function apiBase(prediction) {
  return prediction.urls.get.replace(/\/v1\/predictions\/[^/]+$/, "");
}

// The input with the seed pinned to the one the worker logged ("Using seed: N").
export function reproducibleInput(prediction) {
  const input = { ...prediction.input };
  const logged = /Using seed: (\d+)/.exec(prediction.logs || "");
  if ((input.seed === undefined || input.seed === null) && logged) input.seed = Number(logged[1]);
  return input;
}

function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

export function curlSnippet(prediction) {
  const body = JSON.stringify({ version: prediction.version, input: reproducibleInput(prediction) }, null, 2);
  return [
    `curl -s -X POST ${shellQuote(`${apiBase(prediction)}/v1/predictions`)} \\`,
    `  -H "Authorization: Bearer $KILN_API_TOKEN" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -H "Prefer: wait" \\`,
    `  -d ${shellQuote(body)}`,
  ].join("\n");
}

// A JSON value as a Python literal (True/False/None; JSON string escapes are valid Python).
export function pythonLiteral(value, indent = "") {
  const inner = `${indent}    `;
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((item) => inner + pythonLiteral(item, inner)).join(",\n")},\n${indent}]`;
  }
  if (typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    const lines = entries.map(([key, item]) => `${inner}${JSON.stringify(key)}: ${pythonLiteral(item, inner)}`);
    return `{\n${lines.join(",\n")},\n${indent}}`;
  }
  return JSON.stringify(value);
}

export function pythonSnippet(prediction) {
  return [
    "import os",
    "",
    "import replicate",
    "",
    `client = replicate.Client(api_token=os.environ["KILN_API_TOKEN"], base_url=${JSON.stringify(apiBase(prediction))})`,
    "output = client.run(",
    `    ${JSON.stringify(`${prediction.model}:${prediction.version}`)},`,
    `    input=${pythonLiteral(reproducibleInput(prediction), "    ")},`,
    ")",
    "print(output)",
  ].join("\n");
}
