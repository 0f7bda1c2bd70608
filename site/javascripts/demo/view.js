// What the page shows: the 28 x 28 input, the ten probabilities, the feature maps.
// Plain DOM and 2D canvases; every function accepts `null` for "no digit drawn".

/** Paint gray levels in [0, 1] (row by row) into a canvas of the same size, or black. */
export function paintGray(canvas, values) {
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(canvas.width, canvas.height);
  for (let i = 0; i < canvas.width * canvas.height; i++) {
    const level = values ? Math.round(255 * Math.min(Math.max(values[i], 0), 1)) : 0;
    pixels.data.set([level, level, level, 255], 4 * i);
  }
  ctx.putImageData(pixels, 0, 0);
}

/**
 * Ten bars, one per digit, in `container`.
 *
 * @returns {(probabilities: ArrayLike<number> | null) => void} sets their heights
 *   (null: all empty) and highlights the largest.
 */
export function createBars(container) {
  container.replaceChildren();
  const bars = [];
  for (let digit = 0; digit < 10; digit++) {
    const column = document.createElement("div");
    column.className = "digit-demo__bar";
    const fill = document.createElement("div");
    fill.className = "digit-demo__bar-fill";
    const label = document.createElement("span");
    label.className = "digit-demo__bar-label";
    label.textContent = String(digit);
    column.append(fill, label);
    container.append(column);
    bars.push({ column, fill });
  }
  return (probabilities) => {
    const best = probabilities ? argmax(probabilities) : -1;
    bars.forEach(({ column, fill }, digit) => {
      const p = probabilities ? probabilities[digit] : 0;
      fill.style.height = `${(100 * p).toFixed(1)}%`;
      column.title = probabilities ? `${digit}: ${(100 * p).toFixed(1)}%` : String(digit);
      column.classList.toggle("digit-demo__bar--best", digit === best);
    });
  };
}

export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * One small grayscale image per channel of an NHWC feature tensor (batch 1), each
 * scaled to its own maximum: the channels' ranges differ a lot, and we want to see
 * where each one responds, not which one is loudest. null: the maps go black.
 */
export function paintFeatures(container, features) {
  if (features === null) {
    for (const canvas of container.querySelectorAll("canvas")) paintGray(canvas, null);
    return;
  }
  const [, height, width, channels] = features.dims;
  const canvases = featureCanvases(container, channels, height, width);
  const map = new Float32Array(height * width);
  for (let c = 0; c < channels; c++) {
    let top = 0;
    for (let i = 0; i < map.length; i++) {
      map[i] = features.data[i * channels + c]; // NHWC: channels vary fastest
      top = Math.max(top, map[i]);
    }
    if (top > 0) for (let i = 0; i < map.length; i++) map[i] /= top;
    paintGray(canvases[c], top > 0 ? map : null); // a channel silent everywhere: black
  }
}

/** The container's canvases, (re)made when the network's channel count or size differ. */
function featureCanvases(container, channels, height, width) {
  let canvases = [...container.querySelectorAll("canvas")];
  const fits =
    canvases.length === channels &&
    canvases.every((c) => c.width === width && c.height === height);
  if (!fits) {
    canvases = Array.from({ length: channels }, (_, c) => {
      const canvas = document.createElement("canvas");
      canvas.width = width;
      canvas.height = height;
      canvas.title = `channel ${c}`;
      return canvas;
    });
    container.replaceChildren(...canvases);
  }
  return canvases;
}

/**
 * The change an attack made, x' - x, as gray levels: mid-gray where a pixel stayed,
 * white where it went up by eps, black where it went down by eps (a pixel the [0, 1]
 * clip stopped short shows in between). null: black.
 */
export function paintPerturbation(canvas, image, adversarial, eps) {
  if (image === null) {
    paintGray(canvas, null);
    return;
  }
  const levels = new Float32Array(image.length);
  for (let i = 0; i < image.length; i++) {
    levels[i] = eps > 0 ? 0.5 + (adversarial[i] - image[i]) / (2 * eps) : 0.5;
  }
  paintGray(canvas, levels);
}
