"""Turning the network's outputs into probabilities that mean what they say. No TensorFlow here.

The network is trained by MSE towards one-hot targets, so its outputs are regression values near 0 and 1, not
logits: softmax(outputs) is nearly flat (a digit right 98% of the time gets about 20%). Temperature scaling
divides the outputs by one number T, fitted to minimise the negative log-likelihood of the true labels, and
softmax(outputs / T) are the probabilities; T never changes which class is largest, so accuracy is untouched.
"""

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels."""
    picked = probabilities[np.arange(len(labels)), labels.astype(np.int64)]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def _nll_at(outputs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = outputs / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels.astype(np.int64)]))


def fit_temperature(outputs: np.ndarray, labels: np.ndarray, lo: float = 1e-3, hi: float = 1e3) -> float:
    """The T in [lo, hi] minimising the NLL of softmax(outputs / T): a golden-section search over log T (the NLL
    is unimodal in log T for temperature scaling)."""
    outputs = outputs.astype(np.float64)
    a, b = np.log(lo), np.log(hi)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = _nll_at(outputs, labels, np.exp(c)), _nll_at(outputs, labels, np.exp(d))
    while b - a > 1e-6:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = _nll_at(outputs, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = _nll_at(outputs, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


def reliability(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[tuple[float, float, int, float, float]]:
    """Per equal-width bin of the top probability: (lower edge, upper edge, count, mean confidence, accuracy)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi], 0 in the first
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            (
                float(edges[b]),
                float(edges[b + 1]),
                count,
                float(confidence[members].mean()) if count else 0.0,
                float(correct[members].mean()) if count else 0.0,
            )
        )
    return rows


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over bins of |accuracy - mean confidence|, weighted by the bin's share of the examples."""
    n = len(labels)
    return float(
        sum(
            count / n * abs(accuracy - confidence)
            for _, _, count, confidence, accuracy in reliability(probabilities, labels, bins)
        )
    )


def report(outputs: np.ndarray, labels: np.ndarray, temperature: float) -> dict:
    """ECE and NLL of softmax(outputs) and of softmax(outputs / temperature) on the given set."""
    before, after = softmax(outputs), softmax(outputs / temperature)
    return {
        "ece_before": expected_calibration_error(before, labels),
        "nll_before": nll(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "nll_after": nll(after, labels),
    }
