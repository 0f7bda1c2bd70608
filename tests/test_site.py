"""The tutorial site: lesson scripts run, the site builds strictly, a browser renders it.

- every ``lessons/NN_slug.py --quick`` runs and writes its figures and results.json
  (marked ``lessonNN``, so ``pytest -m lessonNN`` is that lesson's "check yourself");
- the results committed for the site come from full runs, not ``--quick`` ones;
- ``mkdocs build --strict`` passes (a missing results file or snippet fails it);
- ``browser``: headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright)
  opens the home page and a lesson page from a local server: figures load, the maths is
  typeset by the bundled KaTeX, the console has no errors. Screenshots go to
  ``build/screenshots/`` for a human to look at.

The site is built once per test session (``built_site``/``served_site`` in conftest.py,
shared with tests/test_demo.py).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSON_SCRIPTS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))


# The three slowest quick runs (half a minute to a minute and a half each on 2 cores) run
# with the slow tests, which CI runs too; the default run stays under 15 minutes.
SLOW_QUICK_RUNS = {"10_pgd_evaluation", "11_adversarial_training", "18_hyperparameter_search"}


def lesson_param(script: Path):
    marks = [getattr(pytest.mark, f"lesson{script.name[:2]}")]
    if script.stem in SLOW_QUICK_RUNS:
        marks.append(pytest.mark.slow)
    return pytest.param(script, id=script.stem, marks=marks)


@pytest.mark.parametrize("script", [lesson_param(s) for s in LESSON_SCRIPTS])
def test_lesson_script_quick_run_writes_its_figures_and_results(script, tmp_path, mnist_dir):
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**os.environ, "SCRATCHCNN_DATA_DIR": str(mnist_dir)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["run"]["quick"] is True
    figures = list(tmp_path.glob("*.png"))
    assert figures, "a lesson draws at least one figure"
    for figure in figures:
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The same figures and results files as the committed full run (the page links to each
    # of them).
    committed = ROOT / "site" / "assets" / "lessons" / script.stem.replace("_", "-")
    for kind in ("*.png", "*.json"):
        assert {f.name for f in tmp_path.glob(kind)} == {f.name for f in committed.glob(kind)}


def test_committed_lesson_results_come_from_full_runs():
    lessons = ROOT / "site" / "assets" / "lessons"
    assert len(list(lessons.glob("*/results.json"))) == len(LESSON_SCRIPTS)
    for path in sorted(lessons.glob("*/*.json")):
        run = json.loads(path.read_text()).get("run")  # every results file says how it ran
        assert path.name != "results.json" or run is not None, path
        assert run is None or run["quick"] is False, f"{path}: a --quick run"


@pytest.mark.xdist_group("site")  # shares the built site with test_demo.py
def test_mkdocs_build_strict_passes(built_site):
    assert (built_site / "index.html").is_file()
    lesson = (built_site / "lessons" / "13-speed" / "index.html").read_text()
    assert '<span class="nf">conv2d_forward</span>' in lesson  # source, by snippets
    assert "{{" not in lesson  # every macro was rendered


@pytest.mark.xdist_group("site")  # shares the built site with test_demo.py
@pytest.mark.browser
@pytest.mark.parametrize(
    "page", ["", "lessons/11-adversarial-training/", "lessons/13-speed/",
             "lessons/15-initialization/", "lessons/18-hyperparameter-search/"],
    ids=["home", "lesson11", "lesson13", "lesson15", "lesson18"],
)  # fmt: skip
def test_page_renders_in_chromium(served_site, page, chromium):
    from playwright.sync_api import sync_playwright

    shots = ROOT / "build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        outside = []
        tab.on("request", lambda r: outside.append(r.url) if not r.url.startswith(served_site)
               and not r.url.startswith("data:") else None)  # fmt: skip
        tab.goto(f"{served_site}/{page}", wait_until="networkidle")
        images = tab.eval_on_selector_all(
            "article img", "imgs => imgs.map(i => [i.src, i.complete && i.naturalWidth > 0])"
        )
        typeset = tab.eval_on_selector_all(".arithmatex .katex", "nodes => nodes.length")
        raw_math = tab.eval_on_selector_all(".arithmatex", "nodes => nodes.length")
        name = page.strip("/").replace("/", "-") or "home"
        tab.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        browser.close()
    assert errors == []
    assert outside == [], "the site must work offline"
    assert all(ok for _, ok in images), [src for src, ok in images if not ok]
    if page:
        assert images, "a lesson page shows its figures"
        assert raw_math > 0 and typeset == raw_math, (typeset, raw_math)


@pytest.mark.xdist_group("site")  # shares the built site with test_demo.py
def test_every_lesson_script_has_a_page_on_the_built_site(built_site):
    for script in LESSON_SCRIPTS:
        slug = script.stem.replace("_", "-")
        assert (ROOT / "site" / "lessons" / f"{slug}.md").is_file(), slug
        assert (built_site / "lessons" / slug / "index.html").is_file(), slug
