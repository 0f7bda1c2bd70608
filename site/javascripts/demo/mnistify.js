// MNIST-style preprocessing of a drawing, in the browser: a line-by-line port of
// scratchcnn/data/images.py::mnistify (lesson 12), which must give the same 28 x 28 image
// as the Python code, since that is what the network was tested on.
//
// Steps: ink bright on black (ink_on_black), crop to the ink, pad to a square, resize to
// 20 x 20 with Pillow's Lanczos filter, centre of mass to (14, 14), stretch to a max of 1.
// The arithmetic follows the Python (float64, like NumPy) except where Pillow stores
// float32, and rounds like Python (half to even) and sums like NumPy (pairwise), so that
// results agree to the last bit or nearly (tests/test_demo.py checks within 1/255).

export const MNIST_SIZE = 28; // side of the final image
export const DIGIT_BOX = 20; // side of the box the digit is scaled to fit
export const INK_LEVEL = 0.1; // pixels above this (ink scaled to a max of 1) count as ink
export const MIN_CONTRAST = 0.1; // less ink than this over the background: no digit

/**
 * A drawing as MNIST would have prepared it.
 *
 * @param {ArrayLike<number>} gray - height * width gray levels in [0, 1], row by row.
 * @param {number} height
 * @param {number} width
 * @returns {Float32Array | null} 784 pixels in [0, 1] (row by row), or null when the
 *   image holds no visible digit (Python raises ImageError there; an empty canvas is
 *   not an error here).
 */
export function mnistify(gray, height, width) {
  if (gray.length !== height * width) {
    throw new Error(`mnistify: ${gray.length} pixels is not ${height} x ${width}`);
  }
  if (Math.min(height, width) < 2) {
    throw new Error(`mnistify: ${width}x${height} pixels is too small to hold a digit`);
  }
  const ink = inkOnBlack(Float64Array.from(gray), height, width);
  const peak = max(ink);
  if (peak < MIN_CONTRAST) return null;
  for (let i = 0; i < ink.length; i++) ink[i] /= peak;

  const crop = cropToInk({ data: ink, height, width });
  const square = padToSquare(crop);
  const digit = resizeLanczos(square, DIGIT_BOX);
  const canvas = centerByMass(digit, MNIST_SIZE);
  const top = max(canvas.data);
  return Float32Array.from(canvas.data, (v) => v / top);
}

// ------------------------------------------------------------------ ink on black

/**
 * Bright ink on a black background, whatever the polarity: the border is background.
 * A border median above 0.5 means light paper, so invert; then subtract the border
 * median and clip at 0, so gray paper becomes exactly 0. Works in place.
 */
export function inkOnBlack(gray, height, width) {
  let border = borderPixels(gray, height, width);
  let level = median(border);
  if (level > 0.5) {
    for (let i = 0; i < gray.length; i++) gray[i] = 1 - gray[i];
    border = border.map((v) => 1 - v);
    level = median(border); // recomputed, as NumPy does, not 1 - level
  }
  for (let i = 0; i < gray.length; i++) gray[i] = Math.max(gray[i] - level, 0);
  return gray;
}

/** First row, last row, then the first and last columns without the corners. */
function borderPixels(gray, height, width) {
  const border = [];
  for (let x = 0; x < width; x++) border.push(gray[x]);
  for (let x = 0; x < width; x++) border.push(gray[(height - 1) * width + x]);
  for (let y = 1; y < height - 1; y++) border.push(gray[y * width]);
  for (let y = 1; y < height - 1; y++) border.push(gray[y * width + width - 1]);
  return Float64Array.from(border);
}

/** np.median: the mean of the two middle values when the count is even. */
function median(values) {
  const sorted = Float64Array.from(values).sort();
  const half = sorted.length >> 1;
  return sorted.length % 2 ? sorted[half] : (sorted[half - 1] + sorted[half]) / 2;
}

function max(values) {
  let best = -Infinity;
  for (const v of values) if (v > best) best = v;
  return best;
}

// ------------------------------------------------------------------ crop and pad

/** The smallest rectangle holding every pixel above INK_LEVEL; values kept as they are. */
export function cropToInk({ data, height, width }) {
  let top = height, bottom = -1, left = width, right = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (data[y * width + x] > INK_LEVEL) {
        top = Math.min(top, y);
        bottom = Math.max(bottom, y);
        left = Math.min(left, x);
        right = Math.max(right, x);
      }
    }
  }
  const h = bottom - top + 1, w = right - left + 1;
  const out = new Float64Array(h * w);
  for (let y = 0; y < h; y++) {
    out.set(data.subarray((top + y) * width + left, (top + y) * width + left + w), y * w);
  }
  return { data: out, height: h, width: w };
}

/** Pad the shorter side with black, equally on both sides (floor division, as Python). */
export function padToSquare({ data, height, width }) {
  const side = Math.max(height, width);
  const top = Math.floor((side - height) / 2), left = Math.floor((side - width) / 2);
  const out = new Float64Array(side * side);
  for (let y = 0; y < height; y++) {
    out.set(data.subarray(y * width, (y + 1) * width), (top + y) * side + left);
  }
  return { data: out, height: side, width: side };
}

// ------------------------------------------------------------------ Lanczos resize

// Pillow's src/libImaging/Resample.c for mode "F" (float32) images: Image.fromarray(
// square.astype(float32)).resize((20, 20), LANCZOS). Coefficients and sums are doubles,
// each pass stores its result as float32 (Math.fround), horizontal pass first.

function sinc(x) {
  if (x === 0.0) return 1.0;
  x = x * Math.PI;
  return Math.sin(x) / x;
}

function lanczos(x) {
  // a sinc truncated at 3, windowed by a sinc three times as wide
  return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0;
}

/**
 * Resample.c's precompute_coeffs for one axis: for each output pixel, the first input
 * pixel it reads (xmin), how many it reads, and their weights, normalised to sum to 1.
 */
export function precomputeCoeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0); // shrinking: widen the filter (anti-aliasing)
  const support = 3.0 * filterscale;
  const ss = 1.0 / filterscale; // Pillow multiplies by 1/filterscale, not divides
  const bounds = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0); // C's (int) truncates
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const weights = new Float64Array(xmax);
    let total = 0.0;
    for (let x = 0; x < xmax; x++) {
      weights[x] = lanczos((x + xmin - center + 0.5) * ss);
      total += weights[x];
    }
    if (total !== 0.0) for (let x = 0; x < xmax; x++) weights[x] /= total;
    bounds.push({ xmin, weights });
  }
  return bounds;
}

/** Resize a square image to (size, size) as Pillow does, then clip below 0 (float64). */
export function resizeLanczos({ data, height, width }, size) {
  const input = Float32Array.from(data); // astype(np.float32) before Image.fromarray
  if (height === size && width === size) return { data: clipNegative(input), height, width };

  // horizontal pass: (height, width) -> (height, size)
  const across = precomputeCoeffs(width, size);
  const temp = new Float32Array(height * size);
  for (let y = 0; y < height; y++) {
    for (let xx = 0; xx < size; xx++) {
      const { xmin, weights } = across[xx];
      let sum = 0.0;
      for (let x = 0; x < weights.length; x++) sum += input[y * width + xmin + x] * weights[x];
      temp[y * size + xx] = sum; // stored as float32, as in Pillow's "F" image
    }
  }
  // vertical pass: (height, size) -> (size, size)
  const down = precomputeCoeffs(height, size);
  const out = new Float32Array(size * size);
  for (let yy = 0; yy < size; yy++) {
    const { xmin: ymin, weights } = down[yy];
    for (let x = 0; x < size; x++) {
      let sum = 0.0;
      for (let y = 0; y < weights.length; y++) sum += temp[(ymin + y) * size + x] * weights[y];
      out[yy * size + x] = sum;
    }
  }
  return { data: clipNegative(out), height: size, width: size };
}

/** Lanczos rings slightly below 0 next to sharp edges: clip, in float64. */
function clipNegative(values) {
  return Float64Array.from(values, (v) => Math.max(v, 0));
}

// ------------------------------------------------------------------ centre by mass

/**
 * Place the digit in a black (size, size) field with its centre of mass at pixel
 * (size / 2, size / 2), shifting by whole pixels; ink that would land outside is cut.
 */
export function centerByMass({ data, height, width }, size) {
  const byRow = new Float64Array(data.length), byCol = new Float64Array(data.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      byRow[y * width + x] = y * data[y * width + x];
      byCol[y * width + x] = x * data[y * width + x];
    }
  }
  const mass = pairwiseSum(data);
  const top = roundHalfEven(size / 2 - pairwiseSum(byRow) / mass);
  const left = roundHalfEven(size / 2 - pairwiseSum(byCol) / mass);
  return paste(size, { data, height, width }, top, left);
}

/**
 * Python's round(): halves go to the even neighbour (round(2.5) == 2), where JavaScript's
 * Math.round goes up. A centre of mass exactly between two pixels must move the same way.
 */
export function roundHalfEven(x) {
  const floor = Math.floor(x);
  const fraction = x - floor;
  if (fraction < 0.5) return floor;
  if (fraction > 0.5) return floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * NumPy's sum of a float64 array (pairwise_sum in its loops): blocks of at most 128
 * summed with 8 accumulators, larger ranges split in two. A plain loop would differ in
 * the last bits, enough to flip the rounding of a centre of mass that is near a half.
 */
export function pairwiseSum(a, start = 0, n = a.length) {
  if (n < 8) {
    let sum = 0.0;
    for (let i = 0; i < n; i++) sum += a[start + i];
    return sum;
  }
  if (n <= 128) {
    const r = [];
    for (let j = 0; j < 8; j++) r.push(a[start + j]);
    let i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (let j = 0; j < 8; j++) r[j] += a[start + i + j];
    }
    let sum = r[0] + r[1] + (r[2] + r[3]) + (r[4] + r[5] + (r[6] + r[7]));
    for (; i < n; i++) sum += a[start + i];
    return sum;
  }
  let half = Math.floor(n / 2);
  half -= half % 8;
  return pairwiseSum(a, start, half) + pairwiseSum(a, start + half, n - half);
}

/** Copy the patch into a black (size, size) canvas, corner at (top, left), clipped. */
function paste(size, { data, height, width }, top, left) {
  const out = new Float64Array(size * size);
  const y0 = Math.max(top, 0), x0 = Math.max(left, 0);
  const y1 = Math.min(top + height, size), x1 = Math.min(left + width, size);
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) out[y * size + x] = data[(y - top) * width + (x - left)];
  }
  return { data: out, height: size, width: size };
}
