"""The "Draw a digit" page (site/demo.md): our network in the browser.

- the build exports the shipped networks to ONNX and lists them (site_hooks.py), and an
  unchanged build rewrites nothing;
- ``browser``: the page's JavaScript preprocessing (site/javascripts/demo/mnistify.js)
  gives the image Python's ``mnistify`` gives, within 1/255, on real MNIST digits
  enlarged, moved, inverted, on gray, edge to edge, and on strokes drawn with Pillow;
- ``browser``: Chromium draws digits on the page with real mouse strokes, hand-made ones
  and MNIST test digits traced row by row, and the page must name them; an empty canvas
  shows no prediction, Clear clears, every network in the list loads and reads the
  drawing, no request leaves the local server, the console stays free of errors;
- ``browser``: "Attack my drawing" (FGSM through the exported gradient graph) on digits
  drawn with the mouse: the attacked image stays within eps of the drawing and in
  [0, 1], equals what Python computes from the same file, and fools the network on at
  least one of them.

Screenshots go to ``build/screenshots/demo-*.png`` for a human to look at. The site is
built once per session (``built_site``/``served_site`` in conftest.py).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from demo_strokes import EDGE_TO_EDGE_ZERO, HAND_MADE, PAD, traced
from PIL import Image, ImageDraw

from scratchcnn.data.images import ImageError, mnistify

pytestmark = [pytest.mark.lesson14, pytest.mark.xdist_group("site")]  # one built site

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "screenshots"
VENDOR = ROOT / "site" / "assets" / "vendor" / "onnxruntime-web"
# The JavaScript predicate "the page shows the drawing as it is now".
SETTLED = """() => {
  const root = document.querySelector(".digit-demo");
  return root.dataset.state === "ready" && root.dataset.shown === root.dataset.drawn;
}"""


# --------------------------------------------------------------------------- the build


def load_site_hooks():
    """site_hooks.py as a module (it is no package)."""
    spec = importlib.util.spec_from_file_location("site_hooks", ROOT / "site_hooks.py")
    site_hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(site_hooks)
    return site_hooks


def test_build_exports_the_shipped_networks_and_lists_them(built_site):
    import onnx

    from scratchcnn import pretrained

    site_hooks = load_site_hooks()

    index = json.loads((built_site / "assets" / "demo" / "models" / "index.json").read_text())
    names = [network["name"] for network in index["networks"]]
    assert names == [name for name in pretrained.available() if name in site_hooks.DEMO_NETWORKS]
    assert "default" in names, "the demo page needs at least the default network"
    for network in index["networks"]:
        record = pretrained.manifest()[network["name"]]
        model = onnx.load(built_site / "assets" / "demo" / "models" / network["file"])
        meta = {prop.key: prop.value for prop in model.metadata_props}
        assert meta["source_sha256"] == record["sha256"] == network["checkpoint_sha256"]
        assert [o.name for o in model.graph.output] == ["logits", "probabilities", "features"]
        assert network["test_accuracy"] == record["test_accuracy"]
        gradient = onnx.load(built_site / "assets" / "demo" / "models" / network["gradient_file"])
        assert network["gradient_file"] == f"{network['name']}.grad.onnx"
        assert [i.name for i in gradient.graph.input] == ["image", "label"]
        assert [o.name for o in gradient.graph.output] == ["logits", "loss", "gradient"]
        meta = {prop.key: prop.value for prop in gradient.metadata_props}
        assert meta["source_sha256"] == record["sha256"]


def test_an_up_to_date_export_is_not_redone(built_site):
    site_hooks = load_site_hooks()
    folder = site_hooks.MODELS
    before = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    site_hooks.export_demo_models(folder)  # the build just ran: everything is current
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == before


def test_a_missing_gradient_graph_is_exported_again(built_site):
    site_hooks = load_site_hooks()
    folder = site_hooks.MODELS
    (folder / "default.grad.onnx").unlink()
    index = site_hooks.export_demo_models(folder)
    entry = next(n for n in index["networks"] if n["name"] == "default")
    assert (folder / "default.grad.onnx").is_file()
    assert entry["gradient_onnx_sha256"] == site_hooks.sha256(folder / "default.grad.onnx")


def test_the_page_names_the_vendored_onnxruntime_version(built_site):
    readme = (VENDOR / "README.md").read_text()
    version = readme.splitlines()[0].split()[2]  # "# onnxruntime-web 1.30.0 (vendored)"
    assert f"Runtime Web v{version}" in (VENDOR / "ort.wasm.min.mjs").read_text()[:200]
    page = (built_site / "demo" / "index.html").read_text()
    assert f"onnxruntime-web</a> {version}" in page
    assert (built_site / "assets" / "vendor" / "onnxruntime-web" / "LICENSE").is_file()
    assert not (built_site / "assets" / "vendor" / "onnxruntime-web" / "README.md").exists()


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        yield browser
        browser.close()


class DemoPage:
    """The demo page open in a tab, recording console errors and outside requests."""

    def __init__(self, browser, base_url: str):
        self.base_url = base_url
        self.tab = browser.new_page(viewport={"width": 1280, "height": 1000})
        self.tab.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.tab.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.tab.on("pageerror", lambda error: self.errors.append(str(error)))
        self.tab.on("request", self._request)
        self.tab.goto(f"{base_url}/demo/", wait_until="networkidle")
        self.root = self.tab.locator(".digit-demo")
        self.settle()

    def _request(self, request) -> None:
        url = request.url
        if not url.startswith((self.base_url + "/", "data:", "blob:")):
            self.outside.append(url)

    def settle(self) -> None:
        self.tab.wait_for_function(SETTLED)

    def draw(self, strokes, spacing: float = 20) -> None:
        """Draw with the mouse (real pointer events, one every ``spacing`` canvas pixels
        or so along each segment), then wait until the page shows the drawing."""
        box = self.tab.locator(".digit-demo__pad").bounding_box()
        scale = box["width"] / PAD  # canvas pixels -> CSS pixels

        def at(point):
            return box["x"] + point[0] * scale, box["y"] + point[1] * scale

        mouse = self.tab.mouse
        for stroke in strokes:
            mouse.move(*at(stroke[0]))
            mouse.down()
            for previous, point in zip(stroke, stroke[1:]):
                length = np.hypot(point[0] - previous[0], point[1] - previous[1])
                mouse.move(*at(point), steps=max(1, int(length // spacing)))
            mouse.up()
        self.settle()

    def clear(self) -> None:
        self.tab.locator(".digit-demo__clear").click()
        self.settle()

    @property
    def prediction(self) -> str:
        return self.root.get_attribute("data-prediction")

    def shown_text(self) -> str:
        return self.tab.locator(".digit-demo__prediction").inner_text()

    def bar_heights(self) -> list[str]:
        return self.tab.eval_on_selector_all(
            ".digit-demo__result .digit-demo__bar-fill", "bars => bars.map(b => b.style.height)"
        )

    def _canvas(self, selector: str) -> np.ndarray:
        """A canvas's pixels (as a lossless PNG): gray levels in [0, 1], float64."""
        url = self.tab.eval_on_selector(selector, "canvas => canvas.toDataURL('image/png')")
        png = base64.b64decode(url.split(",", 1)[1])
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[..., 0] / 255.0

    def pad_gray(self) -> np.ndarray:
        """The pad's pixels as the page reads them: (280, 280) gray levels in [0, 1]."""
        return self._canvas(".digit-demo__pad")

    def network_input(self) -> np.ndarray:
        """The 28 x 28 image the page shows as the network's input (8-bit, as painted)."""
        return self._canvas(".digit-demo__input")

    def screenshot(self, name: str, full_page: bool = False) -> None:
        """The demo's box (or the whole page) to build/screenshots/demo-<name>.png."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = str(SHOTS / f"demo-{name}.png")
        if full_page:
            self.tab.screenshot(path=path, full_page=True)
            return
        # A page screenshot clipped to the demo, from the top of the page: an element
        # screenshot would scroll it under Material's sticky header.
        self.tab.evaluate("window.scrollTo(0, 0)")
        box = self.root.bounding_box()
        m = 8  # margin
        clip = {"x": box["x"] - m, "y": box["y"] - m,
                "width": box["width"] + 2 * m, "height": box["height"] + 2 * m}  # fmt: skip
        self.tab.screenshot(path=path, full_page=True, clip=clip)

    def mnistify(self, images: list[np.ndarray]) -> list:
        """The page's own mnistify.js on each (H, W) float image: 784 floats or None."""
        return self.tab.evaluate(
            """async ([url, cases]) => {
              const { mnistify } = await import(url);
              return cases.map(([data, height, width]) => {
                const image = mnistify(data, height, width);
                return image === null ? null : Array.from(image);
              });
            }""",
            [
                f"{self.base_url}/javascripts/demo/mnistify.js",
                [[gray.ravel().tolist(), *gray.shape] for gray in images],
            ],
        )

    def check_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.outside == [], "the demo must work offline"


@pytest.fixture(scope="module")
def demo(browser, served_site):
    page = DemoPage(browser, served_site)
    yield page
    page.tab.close()


@pytest.fixture
def fresh(demo):
    """The demo page with an empty pad and the default network; clean afterwards."""
    if demo.root.get_attribute("data-network") != "default":
        demo.tab.locator(".digit-demo__network").select_option("default")
        demo.tab.wait_for_function(
            "() => document.querySelector('.digit-demo').dataset.network === 'default'"
        )
    demo.clear()
    yield demo
    demo.check_clean()


# --------------------------------------------------------------------------- preprocessing


def _enlarged(digit: np.ndarray, size: tuple[int, int], box: int, rng) -> np.ndarray:
    """An MNIST digit (uint8) blown up to ``box`` pixels, placed off-centre on a black
    (height, width) float canvas."""
    height, width = size
    big = Image.fromarray(digit).resize((box, box), Image.Resampling.BILINEAR)
    canvas = np.zeros(size, dtype=np.float32)
    top = int(rng.integers(0, height - box + 1))
    left = int(rng.integers(0, width - box + 1))
    canvas[top : top + box, left : left + box] = np.asarray(big, dtype=np.float32) / 255
    return canvas


def _edge_to_edge(digit: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The digit's ink box stretched over the whole canvas: ink on all four edges."""
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    ink = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    resized = Image.fromarray(ink).resize(size[::-1], Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255


def _pillow_strokes() -> list[np.ndarray]:
    """Three digits drawn with ImageDraw: a 7 (lines), a 0 (ellipse), a 2 (arc + line)."""
    images = []
    seven = Image.new("L", (111, 89), 0)
    ImageDraw.Draw(seven).line([(30, 12), (80, 14), (48, 80)], fill=255, width=9)
    images.append(seven)
    zero = Image.new("L", (73, 121), 255)  # dark ink on white paper
    ImageDraw.Draw(zero).ellipse([(14, 16), (58, 104)], outline=0, width=7)
    images.append(zero)
    two = Image.new("L", (150, 150), 40)  # a dark gray board
    draw = ImageDraw.Draw(two)
    draw.arc([(40, 20), (110, 80)], start=180, end=40, fill=230, width=8)
    draw.line([(104, 62), (42, 128), (118, 128)], fill=230, width=8, joint="curve")
    images.append(two)
    return [np.asarray(image, dtype=np.float32) / 255 for image in images]


def _preprocessing_cases(mnist_test) -> list[tuple[str, np.ndarray]]:
    images, labels = mnist_test
    rng = np.random.default_rng(12)
    cases = []
    for i in range(20):
        size = (int(rng.integers(45, 70)) * 2 + 1, int(rng.integers(45, 70)) * 2 + 1)
        box = int(rng.integers(28, min(size) - 10))
        gray = _enlarged(images[i], size, box, rng)
        name = f"mnist{i}-label{labels[i]}-{size[1]}x{size[0]}"
        if i % 3 == 1:  # dark ink on light paper
            gray, name = 1 - gray, name + "-inverted"
        cases.append((name, gray))
    cases.append(("97x131-mnist0", _enlarged(images[0], (131, 97), 61, rng)))
    cases.append(("gray-background", 0.35 + 0.5 * _enlarged(images[20], (101, 87), 55, rng)))
    cases.append(("edge-to-edge", _edge_to_edge(images[21], (123, 95))))
    cases += [(f"pillow-{n}", gray) for n, gray in zip("702", _pillow_strokes())]
    return cases


@pytest.mark.browser
def test_javascript_mnistify_equals_python(demo, mnist_test):
    cases = _preprocessing_cases(mnist_test)
    js = demo.mnistify([gray for _, gray in cases])
    differences = {}
    for (name, gray), result in zip(cases, js):
        assert result is not None, f"{name}: the page found no digit"
        python = mnistify(gray)
        differences[name] = float(np.abs(np.array(result).reshape(28, 28) - python).max())
    worst = max(differences, key=differences.get)
    print(f"\nlargest |JS - Python| over {len(cases)} images: {differences[worst]:.3g} ({worst})")
    assert differences[worst] <= 1 / 255, differences
    demo.check_clean()


@pytest.mark.browser
def test_javascript_mnistify_finds_no_digit_where_python_finds_none(demo):
    empty, faint = np.zeros((60, 50)), np.full((60, 50), 0.5)
    faint[20:40, 20:30] = 0.58  # 8% over the background: under MIN_CONTRAST
    for gray in (empty, faint):
        with pytest.raises(ImageError, match="no visible digit"):
            mnistify(gray)
    assert demo.mnistify([empty, faint]) == [None, None]
    demo.check_clean()


# --------------------------------------------------------------------------- drawing


def _python_reads(demo: DemoPage, model_path: Path) -> int:
    """What Python makes of the pad's pixels: mnistify + onnxruntime on the same ONNX
    file. Also checks the page showed the network the image Python computes."""
    import onnxruntime

    image = mnistify(demo.pad_gray())
    assert np.abs(demo.network_input() - image).max() <= 1 / 255  # 8-bit display rounding
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"image": image[None, :, :, None]})
    return int(np.argmax(probabilities))


@pytest.mark.browser
def test_an_empty_pad_shows_no_prediction(fresh):
    assert fresh.prediction == ""
    assert fresh.shown_text() == "draw a digit"
    assert set(fresh.bar_heights()) == {"0%"}
    assert fresh.tab.locator(".digit-demo__result .digit-demo__bar--best").count() == 0
    assert fresh.tab.locator(".digit-demo__attack-button").is_disabled()
    fresh.screenshot("empty", full_page=True)


@pytest.mark.browser
@pytest.mark.parametrize("label", list(HAND_MADE))
def test_hand_made_digit_is_read(fresh, label, built_site):
    fresh.draw(HAND_MADE[label])
    fresh.screenshot(f"hand-{label}")
    assert fresh.prediction == label
    assert fresh.shown_text() == label
    assert _python_reads(fresh, built_site / "assets/demo/models/default.onnx") == int(label)


@pytest.mark.browser
def test_a_digit_drawn_edge_to_edge_is_read(fresh):
    fresh.draw(EDGE_TO_EDGE_ZERO)
    gray = fresh.pad_gray()
    ink = gray > 0.1
    assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
    fresh.screenshot("edge-to-edge")
    assert fresh.prediction == "0"


@pytest.mark.browser
def test_traced_mnist_digits_are_read(fresh, mnist_test, built_site):
    images, labels = mnist_test
    firsts = [int(np.flatnonzero(labels == digit)[0]) for digit in range(10)]
    read = {}
    for index in firsts:
        fresh.clear()
        fresh.draw(traced(images[index]), spacing=60)
        fresh.screenshot(f"traced-{labels[index]}")
        page = int(fresh.prediction)
        python = _python_reads(fresh, built_site / "assets/demo/models/default.onnx")
        assert page == python, f"test image {index}: the page read {page}, Python {python}"
        sure = fresh.tab.locator(".digit-demo__confidence").inner_text()
        read[f"test[{index}] = {labels[index]}"] = f"{page} ({sure})"
    print("\ntraced MNIST test digits, what the page read:", read)
    right = sum(key[-1] == value[0] for key, value in read.items())
    assert right >= 9, read


@pytest.mark.browser
def test_clear_empties_the_pad_and_the_prediction(fresh):
    fresh.draw(HAND_MADE["7"])
    assert fresh.prediction == "7"
    fresh.clear()
    assert fresh.prediction == "" and fresh.shown_text() == "draw a digit"
    assert set(fresh.bar_heights()) == {"0%"}
    assert fresh.pad_gray().max() == 0
    assert fresh.network_input().max() == 0


@pytest.mark.browser
def test_every_listed_network_loads_and_reads_the_drawing(fresh, built_site):
    index = json.loads((built_site / "assets/demo/models/index.json").read_text())
    names = [network["name"] for network in index["networks"]]
    choice = fresh.tab.locator(".digit-demo__network")
    assert choice.evaluate("s => Array.from(s.options).map(o => o.value)") == names
    fresh.draw(HAND_MADE["7"])
    for name in [*names[1:], names[0]]:  # every network, ending where we started
        before = int(fresh.root.get_attribute("data-drawn"))
        choice.select_option(name)  # fires "change" even when the value stays the same
        fresh.tab.wait_for_function(
            """([name, before]) => {
              const root = document.querySelector(".digit-demo");
              return root.dataset.network === name && Number(root.dataset.drawn) > before;
            }""",
            arg=[name, before],
        )
        fresh.settle()
        fresh.screenshot(f"network-{name}")
        assert fresh.prediction == "7", name
        assert name in fresh.tab.locator(".digit-demo__status").inner_text()


# --------------------------------------------------------------------------- the attack

ATTACK_RESULT = """section => section.result && {
  eps: section.result.eps, label: section.result.label, loss: section.result.loss,
  image: Array.from(section.result.image),
  adversarial: Array.from(section.result.adversarial),
  probabilities: Array.from(section.result.probabilities),
}"""


def _attack_result(demo: DemoPage) -> dict:
    """The numbers of the attack the page shows, from ``section.result`` (demo.js)."""
    result = demo.tab.eval_on_selector(".digit-demo__attack", ATTACK_RESULT)
    for key in ("image", "adversarial", "probabilities"):
        result[key] = np.asarray(result[key], dtype=np.float32)
    return result


def _set_eps(demo: DemoPage, eps: float) -> None:
    demo.tab.locator(".digit-demo__eps").fill(str(eps))  # sets it and fires "input"
    demo.settle()


@pytest.mark.browser
def test_attack_my_drawing(browser, served_site, built_site):
    """FGSM at eps 0.3 on hand-drawn digits through default.grad.onnx, in the page.

    Its own tab: once pressed, the attack stays on for every later drawing.
    """
    import onnxruntime

    models = built_site / "assets" / "demo" / "models"
    providers = ["CPUExecutionProvider"]
    gradient_graph = onnxruntime.InferenceSession(str(models / "default.grad.onnx"),
                                                  providers=providers)  # fmt: skip
    network = onnxruntime.InferenceSession(str(models / "default.onnx"), providers=providers)
    demo = DemoPage(browser, served_site)
    assert demo.root.get_attribute("data-network") == "default"
    section = demo.tab.locator(".digit-demo__attack")
    button = demo.tab.locator(".digit-demo__attack-button")
    assert button.is_disabled()  # nothing drawn yet
    fooled = {}
    for n, (label, strokes) in enumerate(HAND_MADE.items()):
        demo.clear()
        assert button.is_disabled()
        demo.draw(strokes)
        assert demo.prediction == label
        if n == 0:
            _set_eps(demo, 0.3)
            assert demo.tab.locator(".digit-demo__eps-value").inner_text() == "0.30"
            button.click()  # then every new drawing is attacked as it is drawn
            demo.settle()
        assert section.get_attribute("data-attack") == "on"
        assert section.get_attribute("data-eps") == "0.30"
        result = _attack_result(demo)
        x, x_adv = result["image"].reshape(28, 28), result["adversarial"].reshape(28, 28)
        assert result["eps"] == pytest.approx(0.3) and str(result["label"]) == label
        # The attacked pixels: within eps of the drawing's image, and in [0, 1].
        assert np.abs(x_adv - x).max() <= 0.3 + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert np.abs(demo.network_input() - x).max() <= 1 / 255  # x: what the network saw
        painted = demo._canvas(".digit-demo__adversarial")
        assert np.abs(painted - x_adv).max() <= 1 / 255
        # The same step in Python, from the same gradient file. A few pixels may differ:
        # a drawing's pixels come from a Lanczos filter, so neighbours differ by 1e-7 and
        # faint ringing sits just above 0; max-pool windows then hold near-ties (and ReLU
        # inputs lie near 0) that onnxruntime's wasm and x86 builds, which round
        # differently, settle differently. Rounded to multiples of 1/255, as MNIST's
        # pixels are, the same drawings give equal gradients within 1e-5, and the next
        # test checks the browser's gradient on MNIST digits against jax.grad.
        (g,) = gradient_graph.run(["gradient"], {"image": x[None, :, :, None],
                                                 "label": np.array([int(label)])})  # fmt: skip
        python_adv = np.clip(x + np.float32(0.3) * np.sign(g[0, :, :, 0]), 0, 1)
        differ = int((np.abs(python_adv - x_adv) > 1e-6).sum())
        assert differ <= 784 // 100, f"{label}: {differ} pixels unlike Python's"
        (p,) = network.run(["probabilities"], {"image": x_adv[None, :, :, None]})
        after = section.get_attribute("data-after")
        assert int(after) == int(np.argmax(p)) == int(np.argmax(result["probabilities"]))
        assert section.get_attribute("data-before") == label
        verdict = demo.tab.locator(".digit-demo__attack-verdict").inner_text()
        assert ("Fooled" in verdict) == (after != label), verdict
        fooled[label] = (
            f"{after} ({demo.tab.locator('.digit-demo__attack-confidence').inner_text()}, "
            f"{differ} pixels unlike Python's)"
        )
        demo.screenshot(f"attack-{label}")
    print("\nhand-drawn digits at eps 0.3, read after the attack:", fooled)
    assert any(value.split()[0] != label for label, value in fooled.items()), fooled
    # eps 0: the image stays, and so does the prediction.
    _set_eps(demo, 0)
    result = _attack_result(demo)
    np.testing.assert_array_equal(result["adversarial"], result["image"])
    assert section.get_attribute("data-after") == section.get_attribute("data-before")
    # Clear: nothing to attack, and the button waits for a digit.
    demo.clear()
    assert section.get_attribute("data-after") == "" and button.is_disabled()
    assert demo.tab.locator(".digit-demo__attack-prediction").inner_text() == "draw a digit"
    demo.check_clean()
    demo.tab.close()


@pytest.mark.browser
def test_the_gradient_graph_in_the_browser_equals_jax_grad(demo, mnist_test):
    """default.grad.onnx run by onnxruntime-web (the page's network.js) on MNIST test
    digits: d loss / d image equals jax.grad through our forward pass within 1e-4 per
    image, at the digit the network predicts."""
    from scratchcnn import attacks, pretrained
    from scratchcnn.data.preprocess import to_unit_nhwc
    from scratchcnn.gradcheck import relative_error

    model, params, state = pretrained.load("default")
    x = to_unit_nhwc(mnist_test[0][:8])
    labels = attacks.predict(model, params, state, x)
    _, expected = attacks.loss_and_gradient(model, params, state, x, labels, grad="jax")
    got = demo.tab.evaluate(
        """async ([url, cases]) => {
          const net = await import(url);
          const entry = (await net.listNetworks()).find((n) => n.name === "default");
          const session = await net.openGradient(entry);
          const gradients = [];
          for (const [image, label] of cases) {
            const { gradient } = await net.lossGradient(session, Float32Array.from(image), label);
            gradients.push(Array.from(gradient));
          }
          await session.release();
          return gradients;
        }""",
        [
            f"{demo.base_url}/javascripts/demo/network.js",
            [[image.ravel().tolist(), int(label)] for image, label in zip(x, labels)],
        ],
    )
    errors = [relative_error(np.reshape(g, (28, 28, 1)), e) for g, e in zip(got, expected)]
    print(f"\nbrowser gradient vs jax.grad, largest per-image difference: {max(errors):.1e}")
    assert max(errors) <= 1e-4, errors
    demo.check_clean()


@pytest.mark.browser
def test_without_webassembly_the_page_says_so(browser, served_site):
    tab = browser.new_page()
    tab.add_init_script("delete globalThis.WebAssembly")  # a browser without it
    tab.goto(f"{served_site}/demo/")
    tab.wait_for_selector(".digit-demo[data-state=error]")
    status = tab.locator(".digit-demo__status").inner_text()
    tab.close()
    assert "Could not load the default network: this browser does not run WebAssembly" in status
