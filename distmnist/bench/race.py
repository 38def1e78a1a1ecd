"""Time to a test accuracy: distmnist's default against tuned Keras with the same hyperparameters, initialisation
and steps per epoch, the accuracy checked every epoch."""

import gc

from distmnist.bench import contenders


def measure(mnist, strategy_fn, target: float, max_epochs: int, settings) -> dict:
    """{"target", "learning_rate", "by": {contender: {"seconds" (None: not reached), "epochs", "accuracy"}}}."""
    race = {}
    for name, fn in (("distmnist (default)", contenders.time_to_accuracy_distmnist),
                     ("keras fit (tuned)", contenders.time_to_accuracy_keras)):
        gc.collect()
        seconds, epochs, accuracy = fn(mnist, strategy_fn(), target, max_epochs, settings)
        race[name] = {"seconds": seconds, "epochs": epochs, "accuracy": accuracy}
        print(f"  time to {target:.1%}: {name:<22} "
              + (f"{seconds:6.1f} s ({epochs} epochs, {accuracy:.2%})" if seconds else
                 f"not reached in {epochs} epochs ({accuracy:.2%})"), flush=True)
    return {"target": target, "learning_rate": settings.learning_rate, "by": race}


def table(section: dict) -> str:
    return f"time to {section['target']:.1%}: " + "; ".join(
        f"{name} {r['seconds']:.1f} s ({r['epochs']} epochs)" if r["seconds"] else
        f"{name} not reached in {r['epochs']} epochs" for name, r in section["by"].items())
