// "Draw a digit" (site/demo.md): the reader draws, the page prepares the drawing as
// MNIST was prepared (mnistify.js) and runs the exported network (network.js) on it.
//
// State on the root element, for people reading the DOM and for tests/test_demo.py:
// data-state ("loading", "ready", "error"), data-network (the network in use),
// data-prediction (the predicted digit, "" when nothing is drawn), and two counters:
// data-drawn (changes to the drawing) and data-shown (the change the display shows).
//
// "Attack my drawing" (FGSM): once pressed, every later change of the drawing, of eps or
// of the network is attacked too, in the same update (so data-shown also means "the
// attack shown is of this drawing"). The attack's section carries data-attack ("off",
// "on"), data-eps (the eps its images show), data-before and data-after (the predicted
// digit before and after, "" when nothing is drawn), and, as `section.result`, the
// numbers themselves: {eps, label, loss, image, gradient, adversarial, probabilities}.

import { mnistify } from "./mnistify.js";
import {
  classify,
  fgsmStep,
  listNetworks,
  lossGradient,
  openGradient,
  openNetwork,
} from "./network.js";
import { createPad } from "./pad.js";
import { argmax, createBars, paintFeatures, paintGray, paintPerturbation } from "./view.js";

function mount(root) {
  const $ = (selector) => root.querySelector(selector);
  const status = $(".digit-demo__status");
  const choice = $(".digit-demo__network");
  const prediction = $(".digit-demo__prediction");
  const confidence = $(".digit-demo__confidence");
  const input = $(".digit-demo__input");
  const features = $(".digit-demo__features");
  const setBars = createBars($(".digit-demo__bars"));
  const attackSection = $(".digit-demo__attack");
  const attackButton = $(".digit-demo__attack-button");
  const epsSlider = $(".digit-demo__eps");
  const epsShown = $(".digit-demo__eps-value");
  const adversarialCanvas = $(".digit-demo__adversarial");
  const perturbationCanvas = $(".digit-demo__perturbation");
  const attackPrediction = $(".digit-demo__attack-prediction");
  const attackConfidence = $(".digit-demo__attack-confidence");
  const attackVerdict = $(".digit-demo__attack-verdict");
  const setAttackBars = createBars($(".digit-demo__attack-bars"));

  let session = null; // the onnxruntime-web session of the chosen network
  let inUse = null; // its entry in index.json
  let gradientSession = null; // its gradient graph's session, opened on the first attack
  let attacking = false; // the reader pressed "Attack my drawing"
  let running = null; // the promise of the update in progress, or null
  let drawn = 0; // version of the drawing: +1 on every change
  let frameRequested = false;

  const pad = createPad($(".digit-demo__pad"), changed);
  $(".digit-demo__clear").addEventListener("click", () => pad.clear());
  attackButton.addEventListener("click", () => {
    attacking = true;
    attackSection.dataset.attack = "on";
    changed(); // attack the drawing as it is now, through the usual update
  });
  epsSlider.addEventListener("input", () => {
    epsShown.textContent = eps().toFixed(2);
    if (attacking) changed();
  });
  epsShown.textContent = eps().toFixed(2);

  function eps() {
    return Number(epsSlider.value);
  }

  function setState(state, message) {
    root.dataset.state = state;
    status.textContent = message;
    status.classList.toggle("digit-demo__status--error", state === "error");
  }

  // The drawing changed (or the network did): show it anew.
  function changed() {
    drawn += 1;
    root.dataset.drawn = String(drawn);
    scheduleUpdate();
  }

  // Look at the drawing on the next animation frame, so that a stroke delivering dozens
  // of pointer events per frame costs one inference per frame, not one per event.
  function scheduleUpdate() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(() => {
      frameRequested = false;
      update();
    });
  }

  // One inference at a time; a change during one is picked up when it ends.
  async function update() {
    if (running || session === null || !root.isConnected) return;
    const version = drawn;
    running = show(session).catch((error) => fail("The network failed to run", error));
    await running;
    running = null;
    root.dataset.shown = String(version);
    if (drawn !== version) scheduleUpdate();
  }

  async function show(net) {
    const image = mnistify(pad.grayLevels(), 280, 280);
    paintGray(input, image);
    if (image === null) {
      // An empty (or nearly empty) canvas: nothing to classify, and not an error.
      display(null);
      if (attacking) displayAttack(null);
      return;
    }
    const result = await classify(net, image);
    display(result);
    if (attacking) displayAttack(await attack(net, image, result.probabilities, eps()));
  }

  // FGSM on the digit as the network reads it: the loss is the cross-entropy at the
  // digit the network predicts, its gradient comes from the gradient graph (our
  // hand-written backward pass), and the attacked image goes through the network again.
  async function attack(net, image, probabilities, size) {
    if (gradientSession === null) {
      status.textContent = `Loading the gradient graph of the ${inUse.name} network…`;
      try {
        gradientSession = await openGradient(inUse);
      } catch (error) {
        throw new Error(`its gradient graph did not load: ${error.message ?? error}`);
      }
      setState("ready", readyMessage(inUse));
    }
    const label = argmax(probabilities);
    const { loss, gradient } = await lossGradient(gradientSession, image, label);
    const adversarial = fgsmStep(image, gradient, size);
    const after = await classify(net, adversarial);
    return {
      eps: size,
      label,
      loss,
      image,
      gradient,
      adversarial,
      probabilities: after.probabilities,
    };
  }

  function displayAttack(result) {
    attackSection.result = result;
    setAttackBars(result ? result.probabilities : null);
    attackPrediction.classList.toggle("digit-demo__prediction--empty", result === null);
    if (result === null) {
      paintGray(adversarialCanvas, null);
      paintPerturbation(perturbationCanvas, null);
      attackSection.dataset.before = "";
      attackSection.dataset.after = "";
      attackSection.dataset.eps = "";
      attackPrediction.textContent = "draw a digit";
      attackConfidence.textContent = "";
      attackVerdict.textContent = "";
      return;
    }
    const { eps: size, label, image, adversarial, probabilities } = result;
    paintGray(adversarialCanvas, adversarial);
    paintPerturbation(perturbationCanvas, image, adversarial, size);
    const digit = argmax(probabilities);
    attackSection.dataset.before = String(label);
    attackSection.dataset.after = String(digit);
    attackSection.dataset.eps = size.toFixed(2);
    attackPrediction.textContent = String(digit);
    attackConfidence.textContent = `${percent(probabilities[digit], 1)} sure`;
    attackVerdict.textContent =
      digit === label
        ? `Still read as ${label} at ε = ${size.toFixed(2)}: try a larger ε.`
        : `Fooled: the network read ${label}, now reads ${digit} (ε = ${size.toFixed(2)}).`;
  }

  function display(result) {
    attackButton.disabled = result === null;
    setBars(result ? result.probabilities : null);
    paintFeatures(features, result ? result.features : null);
    prediction.classList.toggle("digit-demo__prediction--empty", result === null);
    if (result === null) {
      root.dataset.prediction = "";
      prediction.textContent = "draw a digit";
      confidence.textContent = "";
      return;
    }
    const digit = argmax(result.probabilities);
    root.dataset.prediction = String(digit);
    prediction.textContent = String(digit);
    confidence.textContent = `${percent(result.probabilities[digit], 1)} sure`;
  }

  function fail(what, error) {
    setState("error", `${what}: ${error.message ?? error}`);
    console.error(what, error);
  }

  // Switching networks: open the new session, wait for a run on the old one to end,
  // release the old one, and show the drawing through the new network.
  async function useNetwork(network) {
    choice.disabled = true;
    setState("loading", `Loading the ${network.name} network…`);
    try {
      const next = await openNetwork(network);
      while (running) await running; // then swap at once, before another frame can start one
      const previous = session;
      const previousGradient = gradientSession;
      session = next;
      gradientSession = null; // the new network's is opened when it is first needed
      if (previous) await previous.release();
      if (previousGradient) await previousGradient.release();
      inUse = network;
      root.dataset.network = network.name;
      setState("ready", readyMessage(network));
      changed();
    } catch (error) {
      fail(`Could not load the ${network.name} network`, error);
      if (root.dataset.network) choice.value = root.dataset.network; // still in use
    } finally {
      choice.disabled = false;
    }
  }

  async function start() {
    setState("loading", "Loading onnxruntime-web and the network…");
    display(null);
    paintGray(adversarialCanvas, null); // black until the first attack
    paintPerturbation(perturbationCanvas, null);
    Object.assign(attackSection.dataset, { before: "", after: "", eps: "" });
    let networks;
    try {
      networks = await listNetworks();
    } catch (error) {
      fail("Could not read the list of networks", error);
      return;
    }
    if (networks.length === 0) {
      setState("error", "No network was exported when this site was built.");
      return;
    }
    const label = (n) => `${n.name} (${percent(n.test_accuracy, 2)})`;
    choice.replaceChildren(...networks.map((n) => new Option(label(n), n.name)));
    choice.addEventListener("change", () => {
      useNetwork(networks.find((n) => n.name === choice.value));
    });
    await useNetwork(networks[0]);
  }

  start();
}

/** The status line for a loaded network. */
function readyMessage(network) {
  const accuracy = percent(network.test_accuracy, 2);
  return `Network “${network.name}”: ${network.description}; ${accuracy} right on MNIST's test set.`;
}

/** 0.99213 -> "99.21%". */
function percent(fraction, digits) {
  return `${(100 * fraction).toFixed(digits)}%`;
}

// Material's instant navigation swaps pages without reloading, and a module runs once
// per page load: so mount on every page its `document$` announces, once per element.
function mountAll() {
  for (const root of document.querySelectorAll(".digit-demo:not([data-mounted])")) {
    root.dataset.mounted = "true";
    mount(root);
  }
}

if (typeof document$ !== "undefined") {
  document$.subscribe(mountAll); // eslint-disable-line no-undef
} else {
  mountAll();
}
