"""Accuracy under attack, and the checks that tell real robustness from a masked gradient.

A "defence" that only hides the gradient (saturated softmax, non-differentiable
preprocessing, randomness) makes gradient attacks weak without making the network
robust. Athalye, Carlini & Wagner (2018) list the symptoms; ``sanity_checks`` tests them
around the evaluation attack itself, the AutoAttack-style ensemble (Croce & Hein 2020):

1. one FGSM step is not stronger than the ensemble;
2. the cross-entropy attack (APGD-CE) is not far weaker than the ensemble: if it is, its
   gradient is masked (the DLR loss and Square do not need the softmax's gradient);
3. the gradient-free Square attack fools (almost) nothing the gradient attacks missed;
4. a 2x stronger ensemble (more steps, more queries, restarts) changes accuracy little:
   not up (noise), and not much down, or the evaluation had not converged;
5. at eps = 0.5 (half the pixel range) accuracy is (almost) 0;
6. a transfer attack (examples crafted on another network) is weaker than the white-box one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from scratchcnn import attacks

ATTACKS = ("fgsm", "pgd", "apgd-ce", "apgd-t", "square", "autoattack")
# AutoAttack's standard order (Croce & Hein 2020), FAB-T left out: each attack only sees
# the examples every attack before it failed to fool.
AUTOATTACK = ("apgd-ce", "apgd-t", "square")
# How far APGD-CE alone may stay above the ensemble before its gradient counts as masked.
MASKING_GAP = 0.05


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
    return autoattack_with_breakdown(model, params, state, x, y, eps, config, rng)[0]


def autoattack_with_breakdown(model, params, state, x, y, eps: float, config, rng):
    """``autoattack``, and who fooled each example first: (N,) strings, "clean" (wrong
    without attack), a name from AUTOATTACK, or "" (robust to them all)."""
    worst = np.asarray(x).copy()
    right = attacks.predict(model, params, state, worst) == y
    fooled_by = np.where(right, "", "clean").astype(object)
    for name in AUTOATTACK:
        still = np.flatnonzero(fooled_by == "")
        if not len(still) or eps == 0:
            break
        member = replace(config, attack=name)
        adv = attack_batch(model, params, state, worst[still], y[still], eps, member, rng)
        fooled = attacks.predict(model, params, state, adv) != y[still]
        worst[still[fooled]], fooled_by[still[fooled]] = adv[fooled], name
    return worst, fooled_by


# --8<-- [end:autoattack]


def autoattack_breakdown(model, params, state, x, y, eps: float, config: AttackConfig):
    """``autoattack_with_breakdown`` batch by batch, with the random streams of
    ``adversarial_examples`` (so the same examples): (worst (N, H, W, 1), fooled_by (N,))."""
    worst, fooled_by = [], []
    for start in range(0, len(x), config.batch_size):
        xb, yb = x[start : start + config.batch_size], y[start : start + config.batch_size]
        adv, who = autoattack_with_breakdown(
            model, params, state, xb, yb, eps, config, rng=[config.seed, start]
        )
        worst.append(adv)
        fooled_by.append(who)
    if not worst:
        return np.asarray(x).copy(), np.array([], dtype=object)
    return np.concatenate(worst), np.concatenate(fooled_by)


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
    model, params, state, x, y, eps: float, config: AttackConfig, *,
    tolerance: float = 0.01, transfer_from=None, subset: int | None = None, fooled_by=None,
) -> tuple[SanityReport, dict]:  # fmt: skip
    """Run the checks of the module docstring around the evaluation attack itself: the
    ensemble (``config`` with attack "autoattack") at ``eps``, on x (N, H, W, 1).

    The 2x stronger ensemble and eps = 0.5 run on the first ``subset`` images (all by
    default). ``transfer_from``: (model, params, state) of an independently trained
    network whose adversarial examples are replayed against this one (skipped without
    it). ``fooled_by``: the ensemble's outcomes on x (N,), as ``autoattack_breakdown``
    gives them, when they are already known (an attack record). Returns the report and
    the numbers behind it.
    """
    network, report = (model, params, state), SanityReport()
    evaluation = replace(config, attack="autoattack")
    if fooled_by is None:
        _, fooled_by = autoattack_breakdown(*network, x, y, eps, evaluation)
    fooled_by = np.asarray(fooled_by, dtype=object)
    ensemble = float(np.mean(fooled_by == ""))
    share = {name: float(np.mean(fooled_by == name)) for name in ("clean", *AUTOATTACK)}
    details = {"eps": eps, "images": len(y), "ensemble": ensemble, "fooled_by": share}

    fgsm = _attacked_accuracy(network, x, y, eps, replace(evaluation, attack="fgsm"))
    report.add("one FGSM step is not stronger than the ensemble", ensemble <= fgsm + tolerance,
               f"eps {eps:g}: {ensemble:.1%} (ensemble) vs {fgsm:.1%} (FGSM)")  # fmt: skip
    # A masked cross-entropy gradient (saturated softmax) stalls APGD-CE, while the
    # scale-free DLR loss of APGD-T and the gradient-free Square still find the way.
    cross_entropy = ensemble + share["apgd-t"] + share["square"]
    report.add("the cross-entropy attack is not masked",
               cross_entropy - ensemble <= MASKING_GAP,
               f"{cross_entropy:.1%} after APGD-CE, {ensemble:.1%} after all three "
               f"(a gap above {MASKING_GAP:.0%} means its gradient is masked)")  # fmt: skip
    report.add("gradient-free Square adds (almost) nothing", share["square"] <= tolerance,
               f"Square fooled {share['square']:.1%} of the images that both APGD attacks "
               "left standing")  # fmt: skip

    n = len(y) if subset is None else min(subset, len(y))
    xs, ys, before = x[:n], y[:n], float(np.mean(fooled_by[:n] == ""))
    stronger = _stronger_ensemble_accuracy(network, xs, ys, eps, evaluation)
    report.add("a 2x stronger ensemble changes little", abs(stronger - before) <= tolerance,
               f"{n} images: {before:.1%}, and {stronger:.1%} with 2x the steps and queries, "
               "2 restarts")  # fmt: skip
    at_half = _attacked_accuracy(network, xs, ys, 0.5, evaluation)
    report.add("eps = 0.5 leaves (almost) nothing", at_half <= tolerance,
               f"{n} images: {at_half:.1%}")  # fmt: skip
    details.update({"fgsm": fgsm, "apgd_ce": cross_entropy, "subset": n, "eps_0.5": at_half,
                    "subset_ensemble": before, "stronger": stronger})  # fmt: skip
    if transfer_from is not None:
        crafted = adversarial_examples(*transfer_from, x, y, eps, replace(config, attack="apgd-ce"))
        transfer = accuracy(*network, crafted, y)
        report.add("transfer attack is weaker than white-box", transfer >= ensemble - tolerance,
                   f"eps {eps:g}: {transfer:.1%} (APGD-CE on the other network) vs "
                   f"{ensemble:.1%} (white-box ensemble)")  # fmt: skip
        details["transfer"] = transfer
    return report, details


def _attacked_accuracy(network, x, y, eps: float, config: AttackConfig) -> float:
    return accuracy(*network, adversarial_examples(*network, x, y, eps, config), y)


def _stronger_ensemble_accuracy(network, x, y, eps: float, config: AttackConfig) -> float:
    """Accuracy under the ensemble with twice the steps and queries, restarted twice with
    other seeds: an example counts as robust only if it survives both restarts."""
    stronger = replace(config, steps=2 * config.steps, queries=2 * config.queries)
    robust = np.ones(len(y), dtype=bool)
    for restart in (1, 2):
        _, fooled_by = autoattack_breakdown(
            *network, x, y, eps, replace(stronger, seed=config.seed + restart)
        )
        robust &= fooled_by == ""
    return float(robust.mean())


# --8<-- [end:sanity_checks]
