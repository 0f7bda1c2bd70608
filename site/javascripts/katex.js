// Render the maths pymdownx.arithmatex marks, after every page load (instant navigation
// swaps pages without reloading, so DOMContentLoaded is not enough).
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
  });
});
