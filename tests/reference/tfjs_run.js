// Runs a TensorFlow.js graph model on the pure-JS CPU backend: the reference
// for the faceres / mobileface parity fixtures.
//
//   node tests/reference/tfjs_run.js MODEL.json INPUT.f32 N,H,W,C OUTPUT_NODE OUT.f32 [REPEATS]
//
// INPUT.f32 holds the network input as little-endian float32 in NHWC order;
// OUT.f32 receives the named node's output the same way, and its shape is
// printed as one JSON line. With REPEATS, the model is also run that many
// more times after the first (warm-up) call and the median seconds per call
// is printed too (benchmarks/extractors.py's TensorFlow.js peer). The weight shards are read from the paths named in
// the model's weightsManifest, beside MODEL.json. Needs `npm install` in
// tests/reference (pins @tensorflow/tfjs).

const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

async function main() {
  const [modelPath, inputPath, shapeArg, outputNode, outPath, repeatsArg] = process.argv.slice(2);
  if (!outPath) throw new Error('usage: tfjs_run.js MODEL.json INPUT.f32 N,H,W,C OUTPUT_NODE OUT.f32');
  // Only the plain JS kernels: no WebGL here, and tfjs-node is not used.
  await tf.setBackend('cpu');
  await tf.ready();

  const model = JSON.parse(fs.readFileSync(modelPath, 'utf8'));
  const dir = path.dirname(modelPath);
  const specs = [];
  const shards = [];
  for (const group of model.weightsManifest) {
    specs.push(...group.weights);
    for (const p of group.paths) shards.push(fs.readFileSync(path.join(dir, p)));
  }
  const all = Buffer.concat(shards);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const graph = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: model.modelTopology, format: model.format, generatedBy: model.generatedBy,
    convertedBy: model.convertedBy, weightSpecs: specs, weightData,
  }));

  const shape = shapeArg.split(',').map(Number);
  const raw = fs.readFileSync(inputPath);
  const values = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const input = tf.tensor(values, shape, 'float32');
  const out = graph.execute(input, outputNode);
  const data = await out.data();
  fs.writeFileSync(outPath, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  const times = [];
  for (let i = 0; i < Number(repeatsArg || 0); i++) {
    const t = process.hrtime.bigint();
    const y = graph.execute(input, outputNode);
    await y.data();
    times.push(Number(process.hrtime.bigint() - t) / 1e9);
    y.dispose();
  }
  times.sort((a, b) => a - b);
  const median = times.length ? times[Math.floor(times.length / 2)] : null;
  console.log(JSON.stringify({
    backend: tf.getBackend(), tfjs: tf.version.tfjs, shape: out.shape, seconds_per_call: median,
  }));
}

main().catch((e) => { console.error(e); process.exit(1); });
