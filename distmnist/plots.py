"""The tutorial's two figures, train.svg (MSE vs step) and test.svg (accuracy vs step), as SVG."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from distmnist import files  # noqa: E402


def plot_series(path: str, points, title: str, ylabel: str) -> None:
    """Draws (step, value) points as a line with labelled axes and writes an SVG atomically."""
    steps = [p[0] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [p[1] for p in points], marker="." if len(steps) < 50 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    save_svg(fig, path)


def save_svg(fig, path: str) -> None:
    """Writes a figure as SVG atomically, text kept as text (selectable, searchable, testable), and closes it."""
    fig.tight_layout()
    buffer = io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg")
    plt.close(fig)
    files.write_bytes(path, buffer.getvalue())


def plot_run(run_dir: str, loss_history, accuracy_history) -> list:
    train = f"{run_dir}/train.svg"
    test = f"{run_dir}/test.svg"
    plot_series(train, loss_history, "Training loss", "MSE")
    plot_series(test, accuracy_history, "Test accuracy", "accuracy")
    return [train, test]
