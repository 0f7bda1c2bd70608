// The drawing pad: white ink on a black canvas, drawn with a mouse, a pen or a finger.
//
// Pointer Events cover all three with one set of handlers; the canvas has
// `touch-action: none` (demo.css) so that a finger draws instead of scrolling the page.

export const BRUSH_WIDTH = 20; // px on the 280 px canvas: about MNIST's stroke in 20 px

/**
 * Make `canvas` a drawing pad. `onChange()` is called after every change (a stroke
 * segment, a clear); the caller decides when to look at the pixels.
 *
 * @returns {{clear: () => void, grayLevels: () => Float64Array}}
 */
export function createPad(canvas, onChange) {
  // The pixels are read back after every frame: keep them in CPU memory.
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  let last = null; // the previous point of the stroke in progress, or null

  function clear() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    onChange();
  }

  // Pointer position in canvas pixels: the canvas may be displayed smaller than its
  // 280 x 280 pixels (narrow screens), so scale by the displayed size.
  function position(event) {
    const box = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * canvas.width) / box.width,
      y: ((event.clientY - box.top) * canvas.height) / box.height,
    };
  }

  function dot({ x, y }) {
    ctx.fillStyle = "#fff";
    ctx.beginPath();
    ctx.arc(x, y, BRUSH_WIDTH / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function segment(from, to) {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = BRUSH_WIDTH;
    ctx.lineCap = "round"; // round ends and joins: a round brush
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (event.pointerType === "mouse" && event.button !== 0) return; // left button only
    event.preventDefault();
    // Keep receiving the stroke's moves when the pointer leaves the canvas.
    canvas.setPointerCapture(event.pointerId);
    last = position(event);
    dot(last); // a click alone leaves a dot
    onChange();
  });

  canvas.addEventListener("pointermove", (event) => {
    if (last === null) return;
    // A fast stroke delivers several positions per event: draw through all of them.
    const points = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const point of points.length ? points : [event]) {
      const next = position(point);
      segment(last, next);
      last = next;
    }
    onChange();
  });

  const end = () => {
    last = null;
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  /** The canvas as gray levels in [0, 1], row by row (the red channel: it is gray). */
  function grayLevels() {
    const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const gray = new Float64Array(canvas.width * canvas.height);
    for (let i = 0; i < gray.length; i++) gray[i] = data[4 * i] / 255;
    return gray;
  }

  clear();
  return { clear, grayLevels };
}
