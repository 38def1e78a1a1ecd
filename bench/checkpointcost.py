"""The bench's checkpoint section: what a checkpoint every `every` steps costs the training, as a share of it.

A save's files are written by the checkpointer's writer thread while the next call trains, so the caller's own
seconds (run.json's checkpoints_s) miss what the writer takes from the training's cores. Measured instead in
one process, on one trainer, in rounds of two modes: `every` steps then a save, and `every` steps alone. Each
mode runs two blocks back to back and the second is timed, so a timed block pays for its own save and for the
write of the save before it, as in a run. The cost is the median over rounds of the paired difference, over
the median block without saves. Beside it, the same for the process's CPU seconds (every thread's): on a machine
that other work shares, a block's wall time carries that work's noise, its CPU seconds much less of it. And a save's
own seconds, counted rather than inferred: the caller's (Checkpointer.seconds) and the CPU seconds of its writer
thread (Checkpointer.writer_cpu_seconds), over a block's CPU seconds: the paired differences swing by a percent or
more between runs on these machines, the count does not.
"""

import statistics
import time

from distmnist.common.config import TrainConfig
from distmnist.data.dataset import Mnist
from distmnist.runs.checkpoints import Checkpointer
from distmnist.runs.runsetup import trainer_settings
from distmnist.training.trainer import Trainer, run_steps

GOAL = 0.03  # of the training time, at the default checkpoint_every


def measure(mnist: Mnist, strategy, every: int, rounds: int) -> dict:
    """What bench.json's `checkpoints` holds: the medians of both blocks and the cost as a fraction."""
    trainer = Trainer(trainer_settings(TrainConfig(), None), strategy, mnist)
    checkpointer = Checkpointer(trainer, None, keep=3)  # a scratch folder, removed by close()

    def block(save: bool) -> tuple:
        start, cpu = time.perf_counter(), time.process_time()
        run_steps(trainer, every)
        if save:
            checkpointer.save(trainer.step, {"loss": [], "accuracy": []})
        return time.perf_counter() - start, time.process_time() - cpu

    try:
        for save in (True, True, False):  # warm-up: tracing, the writer thread, its copies' function
            block(save)
        checkpointer.wait()
        own_from = checkpointer.seconds + checkpointer.writer_cpu_seconds
        timed = {True: [], False: []}
        for round_number in range(rounds):
            for save in (True, False) if round_number % 2 == 0 else (False, True):
                block(save)
                timed[save].append(block(save))
        checkpointer.wait()  # the last write, counted
        # A save's own seconds: the caller's (history, snapshot, starting the writer, waiting for it) and the CPU
        # seconds of the writer thread; two saves a round, both blocks of the mode with saves.
        own = (checkpointer.seconds + checkpointer.writer_cpu_seconds - own_from) / (2 * rounds)
    finally:
        checkpointer.close()  # waits for the last write
    with_save, without = timed[True], timed[False]
    base, cpu_base = (statistics.median(column) for column in zip(*without, strict=True))
    cost, cpu_cost = (statistics.median(a[i] - b[i] for a, b in zip(with_save, without, strict=True)) for i in (0, 1))
    return {
        "every": every,
        "rounds": rounds,
        "block_s": base,
        "block_with_save_s": statistics.median(s for s, _ in with_save),
        "cost_s": cost,
        "cost_fraction": cost / base,
        "cpu_block_s": cpu_base,
        "cpu_cost_s": cpu_cost,
        "cpu_cost_fraction": cpu_cost / cpu_base,
        "own_s": own,
        "own_fraction": own / cpu_base,
        "goal": GOAL,
    }


def table(section: dict) -> str:
    return (
        f"checkpoints every {section['every']} steps (median of {section['rounds']} paired rounds): "
        f"{section['block_s'] * 1e3:.0f} ms of training per checkpoint, each costs "
        f"{section['cost_s'] * 1e3:.1f} ms = {section['cost_fraction']:.1%} (goal <= {section['goal']:.0%}); in "
        f"CPU seconds {section['cpu_cost_s'] * 1e3:.1f} ms of {section['cpu_block_s'] * 1e3:.0f} = "
        f"{section['cpu_cost_fraction']:.1%}; its own seconds (the caller's and the writer thread's CPU) "
        f"{section['own_s'] * 1e3:.1f} ms = {section['own_fraction']:.1%} of a block's CPU seconds"
    )
