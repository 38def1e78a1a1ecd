"""The bench's checkpoint section: what a checkpoint every `every` steps costs the training, as a share of it.

A save's files are written by TensorFlow's writer thread while the next call trains, so the caller's own
seconds (run.json's checkpoints_s) miss what the writer takes from the training's cores. Measured instead in
one process, on one trainer, in rounds of two modes: `every` steps then a save, and `every` steps alone. Each
mode runs two blocks back to back and the second is timed, so a timed block pays for its own save and for the
write of the save before it, as in a run. The cost is the median over rounds of the paired difference, over
the median block without saves.
"""

import statistics
import time

from distmnist.common.config import TrainConfig
from distmnist.data.dataset import Mnist
from distmnist.runs.checkpoints import Checkpointer
from distmnist.runs.run import trainer_settings
from distmnist.training.trainer import Trainer, run_steps

GOAL = 0.03  # of the training time, at the default checkpoint_every


def measure(mnist: Mnist, strategy, every: int, rounds: int) -> dict:
    """What bench.json's `checkpoints` holds: the medians of both blocks and the cost as a fraction."""
    trainer = Trainer(trainer_settings(TrainConfig(), None), strategy, mnist)
    checkpointer = Checkpointer(trainer, None, keep=3)  # a scratch folder, removed by close()

    def block(save: bool) -> float:
        start = time.perf_counter()
        run_steps(trainer, every)
        if save:
            checkpointer.save(trainer.step, {"loss": [], "accuracy": []})
        return time.perf_counter() - start

    try:
        for save in (True, True, False):  # warm-up: tracing, the writer thread, its copies' function
            block(save)
        with_save, without, differences = [], [], []
        for round_number in range(rounds):
            timed = {}
            for save in (True, False) if round_number % 2 == 0 else (False, True):
                block(save)
                timed[save] = block(save)
            with_save.append(timed[True])
            without.append(timed[False])
            differences.append(timed[True] - timed[False])
    finally:
        checkpointer.close()  # waits for the last write
    base = statistics.median(without)
    return {
        "every": every,
        "rounds": rounds,
        "block_s": base,
        "block_with_save_s": statistics.median(with_save),
        "cost_s": statistics.median(differences),
        "cost_fraction": statistics.median(differences) / base,
        "goal": GOAL,
    }


def table(section: dict) -> str:
    return (
        f"checkpoints every {section['every']} steps (median of {section['rounds']} paired rounds): "
        f"{section['block_s'] * 1e3:.0f} ms of training per checkpoint, each costs "
        f"{section['cost_s'] * 1e3:.1f} ms = {section['cost_fraction']:.1%} (goal <= {section['goal']:.0%})"
    )
