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
