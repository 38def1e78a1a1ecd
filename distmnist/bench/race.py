"""Time to a test accuracy: distmnist's default against tuned Keras with the same hyperparameters, initialisation
and steps per epoch, and against JAX's compiled scan and PyTorch's eager loop where they are installed (then
distmnist, JAX and PyTorch each in a fresh process of its own, solo.py; Keras in this one), the accuracy on the
whole test set checked after every epoch. Each is timed from its first step to the check that reaches the target:
tracing, compiling and the checks count; loading the data and building the model do not."""

import gc

from distmnist.bench import contenders

IN_OWN_PROCESS = {"jax scan": "jax", "pytorch eager": "torch"}  # the bench's name -> solo.py's contender


def contest(mnist, strategy_fn, target: float, max_epochs: int, settings, npz, platform: str, names) -> dict:
    """{name: {"seconds" (None: not reached), "epochs", "accuracy"}} for each of names in turn, in the settings'
    precision, on one replica: "distmnist..." (distmnist's trainer, in a process of its own where npz is given:
    MNIST for those processes, on the platform's first device), "keras fit (tuned)", "jax scan", "pytorch
    eager"."""
    race = {}
    for name in names:
        gc.collect()
        own = IN_OWN_PROCESS.get(name, "distmnist" if name.startswith("distmnist") and npz else None)
        if own:
            reply = contenders.race_in_own_process(own, npz, settings, target, max_epochs, platform)
            seconds, epochs, accuracy = reply["seconds"], reply["epochs"], reply["accuracy"]
        else:
            fn = contenders.time_to_accuracy_keras if name.startswith("keras") else \
                contenders.time_to_accuracy_distmnist
            seconds, epochs, accuracy = fn(mnist, strategy_fn(), target, max_epochs, settings)
        race[name] = {"seconds": seconds, "epochs": epochs, "accuracy": accuracy}
        print(f"  time to {target:.1%} in {settings.precision}: {name:<22} "
              + (f"{seconds:6.1f} s ({epochs} epochs, {accuracy:.2%})" if seconds else
                 f"not reached in {epochs} epochs ({accuracy:.2%})"), flush=True)
    return race


def measure(mnist, strategy_fn, target: float, max_epochs: int, settings, npz=None, platform: str = "cpu",
            absent=None) -> dict:
    """{"target", "learning_rate", "by": {contender: {"seconds" (None: not reached), "epochs", "accuracy"}}}, in
    float32. absent: solo.py's contenders that cannot run here ("jax", "torch") -> why (npz: MNIST for the
    others' processes, None when there are none)."""
    absent = absent if npz else dict.fromkeys(IN_OWN_PROCESS.values(), "")
    names = ["distmnist (default)", "keras fit (tuned)"]
    names += [name for name, module in IN_OWN_PROCESS.items() if module not in absent]
    return {"target": target, "learning_rate": settings.learning_rate,
            "by": contest(mnist, strategy_fn, target, max_epochs, settings, npz, platform, names)}


def table(section: dict) -> str:
    return f"time to {section['target']:.1%}: " + lap_times(section["by"])


def lap_times(by: dict) -> str:
    return "; ".join(f"{name} {r['seconds']:.1f} s ({r['epochs']} epochs)" if r["seconds"] else
                     f"{name} not reached in {r['epochs']} epochs" for name, r in by.items())
