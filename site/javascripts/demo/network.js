// Running an exported network in the browser with onnxruntime-web (WebAssembly).
//
// Everything comes from this site: the runtime is vendored under
// assets/vendor/onnxruntime-web/ (see its README.md) and the networks are exported by
// site_hooks.py to assets/demo/models/ when the site is built.

const VENDOR = new URL("../../assets/vendor/onnxruntime-web/", import.meta.url);
export const MODELS = new URL("../../assets/demo/models/", import.meta.url);

let runtime = null; // the onnxruntime-web module, imported once

/** Import onnxruntime-web and configure its WebAssembly backend; once. */
export async function loadRuntime() {
  if (runtime) return runtime;
  if (typeof WebAssembly !== "object") {
    throw new Error("this browser does not run WebAssembly");
  }
  const ort = await import(new URL("ort.wasm.min.mjs", VENDOR).href);
  // Threads need SharedArrayBuffer, which browsers give only to cross-origin isolated
  // pages (special HTTP headers a static site host may not send). A small CNN on one
  // 28 x 28 image takes milliseconds on one thread anyway.
  ort.env.wasm.numThreads = 1;
  // Load the loader, ort-wasm-simd-threaded.mjs, from our copy, never from a CDN...
  ort.env.wasm.wasmPaths = VENDOR.href;
  // ...and hand it the WebAssembly binary ourselves: we keep it gzipped (3.7 MB instead
  // of 14 MB in the repository), and a static file server would not tell the browser
  // to unzip it, so the page does.
  ort.env.wasm.wasmBinary = await gunzip(new URL("ort-wasm-simd-threaded.wasm.gz", VENDOR));
  runtime = ort;
  return ort;
}

/** Fetch a gzipped file and return its unzipped bytes (DecompressionStream, built in). */
async function gunzip(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url.pathname}: HTTP ${response.status}`);
  const unzipped = response.body.pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(unzipped).arrayBuffer());
}

/** The list of exported networks (index.json, written by site_hooks.py). */
export async function listNetworks() {
  const response = await fetch(new URL("index.json", MODELS));
  if (!response.ok) throw new Error(`index.json: HTTP ${response.status}`);
  return (await response.json()).networks;
}

/** An inference session for one network of the index. */
export async function openNetwork(network) {
  const ort = await loadRuntime();
  return ort.InferenceSession.create(new URL(network.file, MODELS).href, {
    executionProviders: ["wasm"],
  });
}

/**
 * Run one 28 x 28 image (784 floats in [0, 1], ink 1, as mnistify gives it).
 *
 * @returns {Promise<{probabilities: Float32Array, features: {data: Float32Array, dims: number[]}}>}
 */
export async function classify(session, image) {
  const ort = await loadRuntime();
  // NHWC, batch of one; the graph standardizes the pixels itself.
  const input = new ort.Tensor("float32", image, [1, 28, 28, 1]);
  const outputs = await session.run({ image: input }, ["probabilities", "features"]);
  input.dispose();
  const result = {
    probabilities: Float32Array.from(outputs.probabilities.data),
    features: { data: Float32Array.from(outputs.features.data), dims: outputs.features.dims },
  };
  for (const tensor of Object.values(outputs)) tensor.dispose();
  return result;
}

/**
 * An inference session for a network's gradient graph (`<name>.grad.onnx`): the same
 * network followed by our hand-written backward pass, exported node by node by
 * scratchcnn.export.build_gradient_onnx. Loaded when the reader first attacks.
 */
export async function openGradient(network) {
  const ort = await loadRuntime();
  return ort.InferenceSession.create(new URL(network.gradient_file, MODELS).href, {
    executionProviders: ["wasm"],
  });
}

/**
 * d loss / d image for one 28 x 28 image, the loss being the cross-entropy at `label`.
 *
 * @returns {Promise<{loss: number, gradient: Float32Array}>} the gradient row by row (784)
 */
export async function lossGradient(session, image, label) {
  const ort = await loadRuntime();
  const input = new ort.Tensor("float32", image, [1, 28, 28, 1]);
  const target = new ort.Tensor("int64", BigInt64Array.from([BigInt(label)]), [1]);
  const outputs = await session.run({ image: input, label: target }, ["loss", "gradient"]);
  input.dispose();
  target.dispose();
  const result = {
    loss: outputs.loss.data[0],
    gradient: Float32Array.from(outputs.gradient.data),
  };
  for (const tensor of Object.values(outputs)) tensor.dispose();
  return result;
}

/**
 * FGSM (Goodfellow et al. 2015): x' = clip(x + eps * sign(gradient), 0, 1), pixel by
 * pixel, as scratchcnn.attacks.fgsm computes it (sign(0) = 0: such a pixel stays).
 */
export function fgsmStep(image, gradient, eps) {
  const adversarial = new Float32Array(image.length);
  for (let i = 0; i < image.length; i++) {
    adversarial[i] = Math.min(Math.max(image[i] + eps * Math.sign(gradient[i]), 0), 1);
  }
  return adversarial;
}
