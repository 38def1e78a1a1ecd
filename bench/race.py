"""Time to a test accuracy: distmnist's default against tuned Keras with the same hyperparameters, initialisation
and steps per epoch, and against JAX's compiled scan and PyTorch's eager loop where they are installed (then
distmnist, JAX and PyTorch each in a fresh process of its own, solo.py; Keras in this one), the accuracy on the
whole test set checked after every epoch. Each is timed from its first step to the check that reaches the target:
tracing, compiling and the checks count; loading the data and building the model do not."""

import gc
import statistics

from bench import ownprocess
from bench.contenders import distmnist_trainer, keras_fit

IN_OWN_PROCESS = {"jax scan": "jax", "pytorch eager": "torch"}  # the bench's name -> solo.py's contender


def contest(
    mnist, strategy_fn, target: float, max_epochs: int, settings, npz, platform: str, names, rounds: int = 1
) -> dict:
    """{name: {"seconds" (the median round's; None: not reached in some round), "rounds" (each round's seconds, None
    where not reached: "-" in the table), "epochs", "accuracy" (the last round's)}} for each of names, in the
    settings' precision, on one replica: "distmnist..." (distmnist's trainer, in a process of its own where npz is
    given: MNIST for those processes, on the platform's first device), "keras fit (tuned)", "jax scan", "pytorch
    eager". Each round races them all in turn, the order rotating from round to round (this machine's speed
    drifts)."""
    race = {name: {"rounds": []} for name in names}
    for round_number in range(rounds):
        first = round_number % len(names)
        for name in names[first:] + names[:first]:
            gc.collect()
            seconds, epochs, accuracy = _one(mnist, strategy_fn, target, max_epochs, settings, npz, platform, name)
            race[name].update(epochs=epochs, accuracy=accuracy)
            race[name]["rounds"].append(seconds)
            print(
                f"  time to {target:.1%} in {settings.precision}: {name:<22} "
                + (
                    f"{seconds:6.1f} s ({epochs} epochs, {accuracy:.2%})"
                    if seconds
                    else f"not reached in {epochs} epochs ({accuracy:.2%})"
                ),
                flush=True,
            )
    for result in race.values():
        reached = None not in result["rounds"]
        result["seconds"] = statistics.median(result["rounds"]) if reached else None
    return race


def _one(mnist, strategy_fn, target: float, max_epochs: int, settings, npz, platform: str, name: str) -> tuple:
    """One contender's (seconds or None, epochs, accuracy)."""
    own = IN_OWN_PROCESS.get(name, "distmnist" if name.startswith("distmnist") and npz else None)
    if own:
        reply = ownprocess.race(own, npz, settings, target, max_epochs, platform)
        return reply["seconds"], reply["epochs"], reply["accuracy"]
    fn = keras_fit.time_to_accuracy if name.startswith("keras") else distmnist_trainer.time_to_accuracy
    return fn(mnist, strategy_fn(), target, max_epochs, settings)


def measure(
    mnist,
    strategy_fn,
    target: float,
    max_epochs: int,
    settings,
    npz=None,
    platform: str = "cpu",
    absent=None,
    rounds: int = 1,
) -> dict:
    """{"target", "learning_rate", "rounds", "by": {contender: contest's}}, in float32. absent: solo.py's
    contenders that cannot run here ("jax", "torch") -> why (npz: MNIST for the others' processes, None when there
    are none)."""
    absent = absent if npz else dict.fromkeys(IN_OWN_PROCESS.values(), "")
    names = ["distmnist (default)", "keras fit (tuned)"]
    names += [name for name, module in IN_OWN_PROCESS.items() if module not in absent]
    return {
        "target": target,
        "learning_rate": settings.learning_rate,
        "rounds": rounds,
        "by": contest(mnist, strategy_fn, target, max_epochs, settings, npz, platform, names, rounds),
    }


def table(section: dict) -> str:
    return f"time to {section['target']:.1%} (median of {section['rounds']} round(s)): " + lap_times(section["by"])


def lap_times(by: dict) -> str:
    def rounds(r):
        return "" if len(r["rounds"]) < 2 else ", rounds " + " ".join(f"{s:.1f}" if s else "-" for s in r["rounds"])

    def one(name, r):
        if r["seconds"]:
            return f"{name} {r['seconds']:.1f} s ({r['epochs']} epochs{rounds(r)})"
        if any(r["rounds"]):
            return f"{name} not reached in every round{rounds(r)}"
        return f"{name} not reached in {r['epochs']} epochs"

    return "; ".join(one(name, r) for name, r in by.items())
