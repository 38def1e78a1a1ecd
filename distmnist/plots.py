"""The run's figures: the tutorial's train.svg (MSE vs step) and test.svg (accuracy vs step), the final model's
confusion.svg over the test set (SVG, text kept as text), and mistakes.png, its most confident wrong answers."""

import io

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from distmnist import files, images  # noqa: E402


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


def plot_confusion(path: str, labels: np.ndarray, predicted: np.ndarray) -> None:
    """Draws the 10x10 confusion matrix (rows: true digit, columns: predicted) with the count in every cell."""
    matrix = np.zeros([10, 10], np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    threshold = np.log1p(matrix).max() / 2
    for true in range(10):
        for guess in range(10):
            ax.text(guess, true, str(matrix[true, guess]), ha="center", va="center", fontsize=8,
                    color="white" if np.log1p(matrix[true, guess]) > threshold else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    ax.set_title(f"Confusion matrix: {matrix.sum()} test images, accuracy {accuracy:.2%}")
    save_svg(fig, path)


def plot_run(run_dir: str, loss_history, accuracy_history) -> list:
    train = f"{run_dir}/train.svg"
    test = f"{run_dir}/test.svg"
    plot_series(train, loss_history, "Training loss", "MSE")
    plot_series(test, accuracy_history, "Test accuracy", "accuracy")
    return [train, test]


def plot_test_set(run_dir: str, x_test: np.ndarray, y_test: np.ndarray, probabilities: np.ndarray,
                  shown: int = 40) -> list:
    """confusion.svg, and mistakes.png: the `shown` most confident wrong answers, captioned
    `predicted probability (true label)`. Returns their paths."""
    predicted = np.argmax(probabilities, axis=1)
    confusion = f"{run_dir}/confusion.svg"
    plot_confusion(confusion, y_test, predicted)
    wrong = np.flatnonzero(predicted != y_test)
    worst = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:shown]
    captions = [f"{predicted[i]} {probabilities[i, predicted[i]]:.0%} (true {y_test[i]})" for i in worst]
    title = (f"the {len(worst)} most confident of {len(wrong)} mistakes on {len(y_test)} test digits: predicted, "
             "probability (true)") if len(wrong) else f"no mistakes on {len(y_test)} test digits"
    mistakes = f"{run_dir}/mistakes.png"
    files.write_bytes(mistakes, images.grid_png(x_test[worst], captions, columns=8, scale=3, title=title))
    return [confusion, mistakes]
