// Drives the official Replicate JavaScript client against a live Kiln and prints what it saw as JSON.
// Usage: node run_kiln.mjs <base URL> <token> <png path>   (NODE_EXTRA_CA_CERTS trusts a test CA)
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import Replicate, { validateWebhook } from "replicate";

const [, , baseUrl, token, imagePath] = process.argv;
const replicate = new Replicate({ auth: token, baseUrl: `${baseUrl}/v1` });
const input = { prompt: "a kiln", num_inference_steps: 4, seed: 1 };
const result = {};

// replicate.run with a Blob input: uploaded through the Files API, outputs as FileOutput streams.
const image = new Blob([readFileSync(imagePath)], { type: "image/png" });
const outputs = await replicate.run("kiln/sd2-depth2img", { input: { ...input, input_image: image } });
const bytes = new Uint8Array(await (await outputs[0].blob()).arrayBuffer());
result.run = { count: outputs.length, pngMagic: Array.from(bytes.slice(1, 4), (c) => String.fromCharCode(c)).join("") };

// Models, versions, create + wait by version id.
const model = await replicate.models.get("kiln", "sd2-depth2img");
const version = await replicate.models.versions.get("kiln", "sd2-depth2img", model.latest_version.id);
const file = await replicate.files.create(image);
const created = await replicate.predictions.create({ version: version.id, input: { ...input, input_image: file.urls.get } });
const finished = await replicate.wait(created);
result.wait = { status: finished.status, outputs: finished.output.length };

// replicate.stream: the signed urls.stream, fetched without a token as the client does.
const streamed = [];
for await (const event of replicate.stream("kiln/sd2-depth2img", { input: { ...input, input_image: file.urls.get } })) {
  streamed.push({ event: event.event, id: event.id, data: String(event.data) });
}
const streamedOutputs = streamed.filter((e) => e.event === "output").map((e) => e.data);
const streamedBytes = new Uint8Array(await (await fetch(streamedOutputs[0])).arrayBuffer());
result.stream = {
  events: [...new Set(streamed.map((e) => e.event))].sort(),
  everyEventHasAnId: streamed.every((e) => typeof e.id === "string" && e.id.length > 0),
  outputs: streamedOutputs.length,
  pngMagic: Array.from(streamedBytes.slice(1, 4), (c) => String.fromCharCode(c)).join(""),
  last: streamed[streamed.length - 1],
};

// Account, hardware, collections and search.
const account = await replicate.accounts.current();
const hardware = await replicate.hardware.list();
const collections = await replicate.collections.list();
const kilnCollection = await replicate.collections.get("kiln");
const found = await replicate.models.search("openpose");
result.catalog = {
  accountType: account.type,
  named: account.username.length > 0 && account.name === account.username,
  hardware: hardware.map((h) => h.sku),
  collections: collections.results.map((c) => c.slug),
  collectionModels: kilnCollection.models.map((m) => `${m.owner}/${m.name}`).sort(),
  search: found.results.map((m) => `${m.owner}/${m.name}`),
};

// Deployments: create, get, update, list, a prediction through one, delete.
const deploymentName = `js-${Date.now()}`;
const deployment = await replicate.deployments.create({
  name: deploymentName, model: "kiln/sd2-depth2img", version: version.id, hardware: hardware[0].sku,
  min_instances: 0, max_instances: 1,
});
const fetched = await replicate.deployments.get(deployment.owner, deploymentName);
const updated = await replicate.deployments.update(deployment.owner, deploymentName, { max_instances: 2 });
const listedDeployments = (await replicate.deployments.list()).results.map((d) => d.name);
const throughDeployment = await replicate.wait(
  await replicate.deployments.predictions.create(deployment.owner, deploymentName, {
    input: { ...input, input_image: file.urls.get },
  })
);
const deleted = await replicate.deployments.delete(deployment.owner, deploymentName);
result.deployments = {
  owner: deployment.owner === account.username,
  releases: [deployment.current_release.number, fetched.current_release.number, updated.current_release.number],
  maxInstances: updated.current_release.configuration.max_instances,
  listed: listedDeployments.includes(deploymentName),
  prediction: [throughDeployment.status, throughDeployment.deployment === `${deployment.owner}/${deploymentName}`],
  deleted,
};

// Files and predictions, every page through the client's paginate.
for (let i = 0; i < 3; i++) await replicate.files.create(new Blob([`file ${i}`], { type: "text/plain" }));
const fileIds = [];
let filePages = 0;
for await (const page of replicate.paginate(() => replicate.files.list())) {
  filePages += 1;
  fileIds.push(...page.map((f) => f.id));
}
const predictionIds = [];
for await (const page of replicate.paginate(() => replicate.predictions.list())) {
  predictionIds.push(...page.map((p) => p.id));
  if (predictionIds.includes(finished.id)) break; // newest first: the rest are older
}
result.paging = {
  filePages,
  filesUnique: new Set(fileIds).size === fileIds.length,
  files: fileIds.length,
  predictionsSeen: predictionIds.includes(throughDeployment.id) && predictionIds.includes(finished.id),
};

// Cancel-After: the client sends no such header of its own; a fetch that adds it does.
const withDeadline = new Replicate({
  auth: token,
  baseUrl: `${baseUrl}/v1`,
  fetch: (url, init) => fetch(url, { ...init, headers: { ...init.headers, "Cancel-After": "5m" } }),
});
const limited = await withDeadline.predictions.create({
  model: "kiln/sd2-depth2img", input: { ...input, input_image: file.urls.get },
});
const limitedDone = await replicate.wait(limited);
result.cancelAfter = {
  deadlineAfterS: (Date.parse(limited.deadline) - Date.parse(limited.created_at)) / 1000,
  status: limitedDone.status,
};

// A webhook, verified with the client's own validateWebhook.
const secret = (await replicate.webhooks.default.secret.get()).key;
const verified = await new Promise((resolve, reject) => {
  const server = createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => (body += chunk));
    request.on("end", async () => {
      response.end();
      const valid = await validateWebhook({ headers: request.headers, body }, secret);
      const prediction = JSON.parse(body);
      server.close();
      resolve({ valid, status: prediction.status });
    });
  });
  server.listen(0, "127.0.0.1", async () => {
    const url = `http://127.0.0.1:${server.address().port}/hook`;
    await replicate.predictions
      .create({ model: "kiln/sd2-depth2img", input: { ...input, input_image: file.urls.get }, webhook: url,
                webhook_events_filter: ["completed"] })
      .catch(reject);
  });
});
result.webhook = verified;
console.log(JSON.stringify(result));
