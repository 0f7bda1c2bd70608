"""Accuracy under attack, and the checks that tell real robustness from a masked gradient.

A "defence" that only hides the gradient (saturated softmax, non-differentiable
preprocessing, randomness) makes gradient attacks weak without making the network
robust. Athalye, Carlini & Wagner (2018) list the symptoms; ``sanity_checks`` tests them:

1. iterative PGD is at least as strong as one-step FGSM, at every eps;
2. accuracy does not rise as eps grows;
3. at eps = 1 any image can be turned into any other: accuracy is (almost) 0;
4. more PGD steps and restarts change accuracy little: not up (beyond noise), and not
   much down either, or the attack had not converged and the number overstates robustness;
5. a transfer attack (examples crafted on another network) is weaker than the white-box one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scratchcnn import attacks

ATTACKS = ("fgsm", "pgd", "apgd-ce", "apgd-t", "square", "autoattack")
# AutoAttack's standard order (Croce & Hein 2020), FAB-T left out: each attack only sees
# the examples every attack before it failed to fool.
AUTOATTACK = ("apgd-ce", "apgd-t", "square")


@dataclass(frozen=True)
class AttackConfig:
    """Which attack and how hard: PGD uses steps, step_size, restarts, random_start."""

    attack: str = "pgd"
    steps: int = 40  # PGD's and APGD's iterations (AutoAttack runs APGD for 100)
    step_size: float = 0.01
    restarts: int = 1
    random_start: bool = True
    grad: str = "jax"
    seed: int = 0
    batch_size: int = 500
    queries: int = 5000  # the Square attack's budget per example
    loss: str = "ce"  # what PGD climbs: attacks.LOSSES

    def validate(self) -> AttackConfig:
        if self.attack not in ATTACKS:
            raise attacks.AttackError(
                f"unknown attack {self.attack!r}; choose one of: {', '.join(ATTACKS)}."
            )
        if self.loss not in attacks.LOSSES[:3]:  # the targeted DLR loss needs targets
            raise attacks.AttackError(
                f"unknown loss {self.loss!r}; choose one of: {', '.join(attacks.LOSSES[:3])}."
            )
        if self.batch_size < 1:
            raise attacks.AttackError(f"batch size must be at least 1, got {self.batch_size}.")
        if not 0 < self.step_size <= 1:  # NaN fails too
            raise attacks.AttackError(
                f"--step-size must be in (0, 1] (pixels are in [0, 1]), got {self.step_size}."
            )
        for flag, value, high in (("--steps", self.steps, 10_000),
                                  ("--restarts", self.restarts, 100),
                                  ("--queries", self.queries, 100_000)):  # fmt: skip
            if not 1 <= value <= high:
                raise attacks.AttackError(f"{flag} must be from 1 to {high}, got {value}.")
        if self.grad not in attacks.GRADS:
            raise attacks.AttackError(f"--grad must be jax or manual, got {self.grad!r}.")
        return self


# --8<-- [start:adversarial_examples]
def adversarial_examples(model, params, state, x, y, eps: float, config: AttackConfig):
    """Attack x (N, H, W, C) in [0, 1] with labels y, batch by batch."""
    out = []
    for start in range(0, len(x), config.batch_size):
        xb, yb = x[start : start + config.batch_size], y[start : start + config.batch_size]
        out.append(
            attack_batch(model, params, state, xb, yb, eps, config, rng=[config.seed, start])
        )
    return np.concatenate(out) if out else np.asarray(x).copy()  # no images: none to attack


def attack_batch(model, params, state, x, y, eps: float, config: AttackConfig, rng):
    """One batch through the attack the config names (eps = 0: the clean images)."""
    from scratchcnn import apgd, square

    network = (model, params, state)
    if eps == 0:
        return np.asarray(x).copy()
    if config.attack == "fgsm":
        return attacks.fgsm(*network, x, y, eps, grad=config.grad, loss=config.loss)
    if config.attack == "pgd":
        return attacks.pgd(
            *network, x, y, eps, steps=config.steps, step_size=config.step_size,
            restarts=config.restarts, random_start=config.random_start, rng=rng,
            grad=config.grad, loss=config.loss,
        )  # fmt: skip
    if config.attack == "apgd-ce":
        return apgd.apgd(*network, x, y, eps, steps=config.steps, rng=rng, grad=config.grad)
    if config.attack == "apgd-t":
        return apgd.apgd_targeted(*network, x, y, eps, steps=config.steps, rng=rng,
                                  grad=config.grad)  # fmt: skip
    if config.attack == "square":
        return square.square_attack(*network, x, y, eps, queries=config.queries, rng=rng)[0]
    return autoattack(*network, x, y, eps, config, rng)


# --8<-- [end:adversarial_examples]


# --8<-- [start:autoattack]
def autoattack(model, params, state, x, y, eps: float, config: AttackConfig, rng):
    """The worst case of each example over AUTOATTACK's attacks, run in order, each on the
    examples still classified correctly (Croce & Hein 2020). x: (N, H, W, 1) -> same."""
    worst = np.asarray(x).copy()
    robust = attacks.predict(model, params, state, worst) == y
    for name in AUTOATTACK:
        still = np.flatnonzero(robust)
        if not len(still):
            break
        member = AttackConfig(**{**config.__dict__, "attack": name})
        adv = attack_batch(model, params, state, worst[still], y[still], eps, member, rng)
        fooled = attacks.predict(model, params, state, adv) != y[still]
        worst[still[fooled]], robust[still[fooled]] = adv[fooled], False
    return worst


# --8<-- [end:autoattack]
# --8<-- [end:adversarial_examples]


def accuracy(model, params, state, x, y) -> float:
    """Share of images x (N, H, W, 1) in [0, 1] classified as y."""
    return float(np.mean(attacks.predict(model, params, state, x) == y))


def accuracy_curve(model, params, state, x, y, eps_values, config: AttackConfig) -> list[dict]:
    """[{eps, accuracy}] for each eps (eps = 0 is the clean accuracy)."""
    rows = []
    for eps in eps_values:
        adv = adversarial_examples(model, params, state, x, y, eps, config)
        rows.append({"eps": float(eps), "accuracy": accuracy(model, params, state, adv, y)})
    return rows


@dataclass
class SanityReport:
    checks: list[dict] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def format(self) -> str:
        width = max(len(c["check"]) for c in self.checks)
        return "\n".join(
            f"{'pass' if c['ok'] else 'FAIL'}  {c['check']:<{width}}  {c['detail']}"
            for c in self.checks
        )


# --8<-- [start:sanity_checks]
def sanity_checks(
    model, params, state, x, y, eps_values, config: AttackConfig, *,
    tolerance: float = 0.01, transfer_from=None,
) -> tuple[SanityReport, dict]:  # fmt: skip
    """Run the five checks of the module docstring. Returns the report and the curves.

    ``transfer_from``: (model, params, state) of an independently trained network whose
    adversarial examples are replayed against this one (check 5; skipped without it).
    """
    report = SanityReport()
    fgsm_cfg = AttackConfig(**{**config.__dict__, "attack": "fgsm"})
    pgd_cfg = AttackConfig(**{**config.__dict__, "attack": "pgd"})
    fgsm_curve = accuracy_curve(model, params, state, x, y, eps_values, fgsm_cfg)
    pgd_curve = accuracy_curve(model, params, state, x, y, eps_values, pgd_cfg)
    pairs = [(f["eps"], f["accuracy"], p["accuracy"]) for f, p in zip(fgsm_curve, pgd_curve)]
    report.add(
        "PGD <= FGSM at every eps",
        all(p <= f + tolerance for _, f, p in pairs),
        ", ".join(f"{e:g}: {p:.1%} vs {f:.1%}" for e, f, p in pairs),
    )
    accs = [p for _, _, p in pairs]
    report.add(
        "accuracy falls as eps grows",
        all(b <= a + tolerance for a, b in zip(accs, accs[1:])),
        " -> ".join(f"{a:.1%}" for a in accs),
    )
    # Steps must be able to cross the whole budget: 2.5 * eps / steps (the step rule of
    # MadryLab's robustness library), here with eps = 1.
    reach = AttackConfig(**{**pgd_cfg.__dict__, "step_size": 2.5 / config.steps})
    at_one = accuracy_curve(model, params, state, x, y, [1.0], reach)[0]["accuracy"]
    report.add("eps = 1 leaves (almost) nothing", at_one <= tolerance, f"{at_one:.1%}")
    eps = max(eps_values)
    stronger = AttackConfig(**{**pgd_cfg.__dict__, "steps": 2 * config.steps,
                               "restarts": config.restarts + 2})  # fmt: skip
    base = next(row["accuracy"] for row in pgd_curve if row["eps"] == eps)
    strong = accuracy_curve(model, params, state, x, y, [eps], stronger)[0]["accuracy"]
    # Both ways: a stronger attack must not find the network *more* accurate (noise or a
    # masked gradient), nor much less (then the evaluation had not converged).
    report.add(
        "more steps and restarts change little",
        abs(strong - base) <= tolerance,
        f"eps {eps:g}: {base:.1%} with {config.steps} steps x {config.restarts}, "
        f"{strong:.1%} with {stronger.steps} x {stronger.restarts}",
    )
    if transfer_from is not None:
        source = transfer_from
        adv = adversarial_examples(*source, x, y, eps, pgd_cfg)
        transfer = accuracy(model, params, state, adv, y)
        report.add(
            "transfer attack is weaker than white-box",
            transfer >= base - tolerance,
            f"eps {eps:g}: {transfer:.1%} (transfer) vs {base:.1%} (white-box)",
        )
    return report, {"fgsm": fgsm_curve, "pgd": pgd_curve}


# --8<-- [end:sanity_checks]
