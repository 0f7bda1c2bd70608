"""Macros for the MkDocs site (mkdocs-macros-plugin): pages read their numbers from the
results files the lesson scripts and benchmarks write, so no number is typed by hand.

In a page: ``{{ results("13-speed").conv_layer.naive_ms }}``, ``{{ speed_table() }}``.
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).parent
LESSON_ASSETS = ROOT / "site" / "assets" / "lessons"
BENCHMARKS = ROOT / "benchmarks" / "results"
PROFILE = BENCHMARKS / "profile_step.json"
CONV_SPEED = BENCHMARKS / "conv_speed.json"
TRAINING_RUNS = ROOT / "results"  # history.json of the runs in RESULTS.md
ATTACK_RUNS = ROOT / "results" / "attacks"  # scratchcnn attack --json of the headline runs
PRETRAINED = ROOT / "scratchcnn" / "pretrained" / "MANIFEST.json"

IMPLEMENTATION_NAMES = {
    "scratch-numpy": "scratchcnn, NumPy",
    "scratch-jax": "scratchcnn, jax.jit",
    "flax-optax": "Flax + optax, jax.jit",
    "torch": "PyTorch (CPU)",
}


def load(path: Path) -> dict:
    """A results file; a missing one stops the build (strict) with its path."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the lesson script that writes it.")
    return json.loads(path.read_text())


def define_env(env):
    @env.macro
    def results(lesson: str, name: str = "results") -> dict:
        """The results JSON of one lesson, e.g. results("13-speed"), or another JSON file its
        script writes, e.g. results("11-adversarial-training", "sweep")."""
        return load(LESSON_ASSETS / lesson / f"{name}.json")

    @env.macro
    def benchmark(name: str = "step_speed") -> dict:
        """benchmarks/results/step_speed.json (python benchmarks/step_speed.py), or another
        run of it, e.g. benchmark("step_speed_haswell")."""
        return load(BENCHMARKS / f"{name}.json")

    @env.macro
    def run(name: str) -> dict:
        """The summary of a training run in RESULTS.md, e.g. run("default-s0")."""
        return load(TRAINING_RUNS / f"{name}.json")

    @env.macro
    def attack_run(name: str) -> dict:
        """What ``scratchcnn attack ... --json`` printed for a headline, e.g.
        attack_run("defended-autoattack") (results/attacks/README.md has the commands)."""
        return load(ATTACK_RUNS / f"{name}.json")

    @env.macro
    def pretrained() -> dict:
        """scratchcnn/pretrained/MANIFEST.json: the shipped networks and how they were made."""
        return load(PRETRAINED)

    @env.macro
    def lesson_table(about: dict) -> str:
        """Every lesson page with its title, what it is about and what to read first
        (``about``: {"01": (summary, prerequisites), ...}, from the index page), its script,
        and how long its full run takes on a fresh clone: the committed run's time without
        any training it did, plus the training time (results/*.json) of every network it
        needs that is not shipped."""
        lines = [
            "| lesson | page | what you get | read first | script | full run on a fresh clone |",
            "|---|---|---|---|---|---:|",
        ]
        for page in sorted((ROOT / "site" / "lessons").glob("[0-9][0-9]-*.md")):
            number = page.stem[:2]
            title = page.read_text().splitlines()[0].lstrip("# ").strip()
            summary, before = about[number]  # a lesson missing from the index stops the build
            script = "lessons/" + page.stem.replace("-", "_") + ".py"
            lesson = results(page.stem)
            training = sum(run(name)["train_seconds"] for name in runs_to_train(lesson))
            seconds = lesson["run"]["seconds"] - lesson["run"].get("training_seconds", 0)
            total = duration(seconds + training)
            if training:
                total += f" (training {duration(training)})"
            lines.append(f"| {number} | [{title}]({page.name}) | {summary} | {before} "
                         f"| `{script}` | {total} |")  # fmt: skip
        return "\n".join(lines)

    @env.macro
    def lesson_tests(number: str) -> str:
        """The test files ``pytest -m lessonNN`` runs, as Markdown: those that mark tests
        ``pytest.mark.lessonNN``, and tests/test_site.py, which runs the lesson's script."""
        mark = re.compile(rf"mark\.lesson{number}\b")
        files = [f"`tests/{path.name}`" for path in sorted((ROOT / "tests").glob("test_*.py"))
                 if path.name != "test_site.py" and mark.search(path.read_text())]  # fmt: skip
        files.append("`tests/test_site.py` (the lesson's script, `--quick`)")
        return ", ".join(files[:-1]) + " and " + files[-1] if len(files) > 1 else files[0]

    def runs_to_train(lesson: dict) -> set[str]:
        """The runs/ folders a fresh clone trains for a lesson's full run: those it used
        that are not shipped, and the runs they were fine-tuned from (each once)."""
        if "networks" in lesson["run"]:
            used = set(lesson["run"]["networks"]["trained"])
        else:  # results written before the lessons recorded it: the runs/ folders they name
            named = json.dumps({key: value for key, value in lesson.items() if key != "run"})
            used = set(re.findall(r"runs/([\w.-]+)/", named)) - shipped_runs()
        needed = set()
        while used:
            name = used.pop()
            needed.add(name)
            parent = re.match(r"runs/([\w.-]+)/", run(name)["config"].get("init_from") or "")
            if parent and parent[1] not in needed:
                used.add(parent[1])
        return needed

    def shipped_runs() -> set[str]:
        """The runs/ folder names of the shipped networks ("default-s0"...), from their
        training commands (each run of a network trained in several)."""
        commands = [record["command"] for record in pretrained().values()]
        return {name for c in commands for name in re.findall(r"--output runs/([\w.-]+)", c)}

    @env.macro
    def duration(seconds: float) -> str:
        """4.2 -> "4 s", 537.7 -> "9 min", 5484 -> "1.5 h"."""
        if seconds < 90:
            return f"{seconds:.0f} s"
        return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"

    @env.macro
    def percent(fraction: float, digits: int = 2) -> str:
        """0.99184 -> "99.18%"."""
        return f"{100 * fraction:.{digits}f}%"

    @env.macro
    def speed_table(network: str = "reference") -> str:
        """The benchmark rows of one network as a Markdown table."""
        bench = benchmark()
        lines = [
            "| implementation | train img/s | × Flax | GFLOP/s | % of matmul rate "
            "| inference img/s | × Flax | peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in bench["rows"]:
            if row["network"] != network:
                continue
            lines.append(
                f"| {IMPLEMENTATION_NAMES[row['implementation']]} "
                f"| {row['train_images_per_second']:,.0f} | {row['train_ratio_to_flax']:.2f} "
                f"| {row['train_gflops']:.1f} | {100 * row['fraction_of_matmul_rate']:.1f}% "
                f"| {row['infer_images_per_second']:,.0f} | {row['infer_ratio_to_flax']:.2f} "
                f"| {row['peak_rss_mb']:,.0f} |"
            )
        return "\n".join(lines)

    @env.macro
    def profile(network: str, backend: str = "numpy") -> dict:
        """One step's profile from benchmarks/results/profile_step.json
        (python benchmarks/profile_step.py), e.g. profile("default")."""
        for row in load(PROFILE)["profiles"]:
            if (row["network"], row["backend"]) == (network, backend):
                return row
        raise KeyError(f"no profile of {network} on {backend}")

    @env.macro
    def profile_table(networks=("reference", "default"), backend: str = "numpy") -> str:
        """Milliseconds per part of one training step, and each part's share, per network."""
        rows = [profile(name, backend) for name in networks]
        lines = [
            "| part | " + " | ".join(f"`{name}`: ms | share" for name in networks) + " |",
            "|---|" + "---:|---:|" * len(networks),
        ]
        for part in rows[0]["by_part_ms"]:
            cells = [
                f"{row['by_part_ms'][part]:.1f} "
                f"| {100 * row['by_part_ms'][part] / row['sum_of_parts_ms']:.0f}%"
                for row in rows
            ]
            lines.append(f"| {part} | " + " | ".join(cells) + " |")
        sums = [f"{row['sum_of_parts_ms']:.1f} | 100%" for row in rows]
        wholes = [f"{row['whole_step_ms']:.1f} | " for row in rows]
        lines.append("| sum of the parts | " + " | ".join(sums) + " |")
        lines.append("| the whole step, timed as one | " + " | ".join(wholes) + " |")
        return "\n".join(lines)

    @env.macro
    def attack_speed(network: str, implementation: str) -> dict:
        """One row of benchmarks/results/attack_speed.json, e.g.
        attack_speed("default", "ours, whole batch")."""
        for row in load(BENCHMARKS / "attack_speed.json")["rows"]:
            if (row["network"], row["implementation"]) == (network, implementation):
                return row
        raise KeyError(f"no attack_speed row for {implementation} on {network}")

    @env.macro
    def conv_speed() -> dict:
        """benchmarks/results/conv_speed.json (python benchmarks/conv_speed.py)."""
        return load(CONV_SPEED)

    @env.macro
    def conv_ms(conv: str, part: str, implementation: str) -> float | None:
        """One timing of conv_speed.json, e.g. conv_ms("conv2", "forward", "xla"); None
        for a pass an implementation does not time."""
        for row in conv_speed()["rows"]:
            if (row["conv"], row["pass"], row["implementation"]) == (conv, part, implementation):
                return row["ms"]
        return None

    @env.macro
    def conv_speed_table() -> str:
        """Milliseconds per convolution and pass, one column per implementation."""
        rows = conv_speed()["rows"]
        implementations = list(dict.fromkeys(r["implementation"] for r in rows))
        lines = [
            "| convolution | pass | " + " | ".join(implementations) + " |",
            "|---|---|" + "---:|" * len(implementations),
        ]
        ms = {(r["conv"], r["pass"], r["implementation"]): r["ms"] for r in rows}  # one read
        for conv, part in dict.fromkeys((r["conv"], r["pass"]) for r in rows):
            h, _, c_in, c_out = next(r["shape"] for r in rows if r["conv"] == conv)
            timings = [ms.get((conv, part, impl)) for impl in implementations]
            cells = ["–" if t is None else f"{t:.1f}" for t in timings]
            label = f"{conv} ({h}², {c_in} → {c_out})"
            lines.append(f"| {label} | {part} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    @env.macro
    def speed_row(network: str, implementation: str, run: str = "step_speed") -> dict:
        """One benchmark row, e.g. speed_row("reference", "scratch-numpy")."""
        for row in benchmark(run)["rows"]:
            if (row["network"], row["implementation"]) == (network, implementation):
                return row
        raise KeyError(f"no benchmark row for {implementation} on {network}")
