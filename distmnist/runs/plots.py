"""The run's figures: the tutorial's train.svg (MSE vs step) and test.svg (accuracy vs step), the final model's
confusion.svg over the test set (SVG, text kept as text), mistakes.png, its most confident wrong answers, and
calibration.svg, its reliability diagram."""

import io
from collections.abc import Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from distmnist.common import files
from distmnist.data import digits
from distmnist.runs import calibration  # noqa: E402

# Margins (figure fractions) for the run's figures, whose sizes and kinds of labels are fixed: matplotlib's
# tight_layout measures every text with a draw of its own, as long again as the SVG itself (docs/performance.md),
# and a run waits for its last pictures. Figures whose labels vary (the bench's, the sweep's)
# call tight_layout before save_svg.
SERIES_MARGINS = dict(left=0.14, right=0.96, bottom=0.13, top=0.92)
CONFUSION_MARGINS = dict(left=0.1, right=0.98, bottom=0.1, top=0.93)
CALIBRATION_MARGINS = dict(left=0.13, right=0.97, bottom=0.1, top=0.88)


def plot_series(path: str, points: Sequence[Sequence[float]], title: str, ylabel: str) -> None:
    """Draws (step, value) points as a line with labelled axes and writes an SVG atomically."""
    steps = [p[0] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), gridspec_kw=SERIES_MARGINS)
    ax.plot(steps, [p[1] for p in points], marker="." if len(steps) < 50 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    save_svg(fig, path)


def save_svg(fig: Figure, path: str) -> None:
    """Writes a figure as SVG atomically, text kept as text (selectable, searchable, testable), and closes it."""
    buffer = io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg")
    plt.close(fig)
    files.write_bytes(path, buffer.getvalue())


def plot_confusion(path: str, labels: np.ndarray, predicted: np.ndarray) -> None:
    """Draws the 10x10 confusion matrix (rows: true digit, columns: predicted) with the count in every cell."""
    matrix = np.zeros([10, 10], np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), gridspec_kw=CONFUSION_MARGINS)
    ax.imshow(np.log1p(matrix), cmap="Blues")
    threshold = np.log1p(matrix).max() / 2
    for true in range(10):
        for guess in range(10):
            ax.text(
                guess,
                true,
                str(matrix[true, guess]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if np.log1p(matrix[true, guess]) > threshold else "black",
            )
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    ax.set_title(f"Confusion matrix: {matrix.sum()} test images, accuracy {accuracy:.2%}")
    save_svg(fig, path)


def plot_run(
    run_dir: str, loss_history: Sequence[Sequence[float]], accuracy_history: Sequence[Sequence[float]]
) -> list:
    train = f"{run_dir}/train.svg"
    test = f"{run_dir}/test.svg"
    plot_series(train, loss_history, "Training loss", "MSE")
    plot_series(test, accuracy_history, "Test accuracy", "accuracy")
    return [train, test]


def plot_test_set(
    run_dir: str, x_test: np.ndarray, y_test: np.ndarray, probabilities: np.ndarray, shown: int = 40
) -> list:
    """confusion.svg, and mistakes.png: the `shown` most confident wrong answers, captioned
    `predicted probability (true label)`. Returns their paths."""
    predicted = np.argmax(probabilities, axis=1)
    confusion = f"{run_dir}/confusion.svg"
    plot_confusion(confusion, y_test, predicted)
    wrong = np.flatnonzero(predicted != y_test)
    worst = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:shown]
    captions = [f"{predicted[i]} {probabilities[i, predicted[i]]:.0%} (true {y_test[i]})" for i in worst]
    title = (
        (
            f"the {len(worst)} most confident of {len(wrong)} mistakes on {len(y_test)} test digits: predicted, "
            "probability (true)"
        )
        if len(wrong)
        else f"no mistakes on {len(y_test)} test digits"
    )
    mistakes = f"{run_dir}/mistakes.png"
    files.write_bytes(mistakes, digits.grid_png(x_test[worst], captions, columns=8, scale=3, title=title))
    return [confusion, mistakes]


def plot_calibration(path: str, probabilities: np.ndarray, labels: np.ndarray, ece_uncalibrated: float) -> bytes:
    """The reliability diagram: accuracy against mean confidence in each of 15 equal-width bins of the top
    probability (marker area: the bin's share of the images), the diagonal of perfect calibration, the ECE in
    the title. Writes the SVG; returns the same figure as PNG bytes (for TensorBoard)."""
    rows = [r for r in calibration.reliability(probabilities, labels) if r[2]]
    ece = calibration.expected_calibration_error(probabilities, labels)
    fig, ax = plt.subplots(figsize=(5.6, 5.2), gridspec_kw=CALIBRATION_MARGINS)
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
    confidence = [r[3] for r in rows]
    accuracy = [r[4] for r in rows]
    sizes = [20 + 2000 * r[2] / len(labels) for r in rows]
    ax.plot(confidence, accuracy, color="tab:blue", linewidth=1)
    ax.scatter(confidence, accuracy, s=sizes, color="tab:blue", alpha=0.7, label="bins (area: share of the images)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"Calibration on {len(labels)} test images: ECE {ece:.4f}\n"
        f"(softmax of the raw outputs: ECE {ece_uncalibrated:.3f})",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8, markerscale=0.3)
    ax.grid(True, alpha=0.3)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=80)
    save_svg(fig, path)
    return png.getvalue()


def draw_test_pictures(
    run_dir: str, x_test: np.ndarray, y_test: np.ndarray, probabilities: np.ndarray, ece_uncalibrated: float
) -> tuple:
    """The final model's pictures: confusion.svg, mistakes.png and calibration.svg. Returns their paths and the
    reliability diagram as PNG bytes (for TensorBoard)."""
    written = plot_test_set(run_dir, x_test, y_test, probabilities)
    written.append(f"{run_dir}/calibration.svg")
    png = plot_calibration(written[-1], probabilities, y_test, ece_uncalibrated)
    return written, png
