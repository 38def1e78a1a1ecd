"""How far a float32 forward pass of the MLP can be from the exact one, whatever order its sums take.

Higham's bound for a dot product of length n in floating point (Accuracy and Stability of Numerical Algorithms,
2nd ed., section 3.1): |fl(w.x + b) - (w.x + b)| <= gamma(n + 1) * (|w|.|x| + |b|), gamma(n) = n u / (1 - n u),
u = 2**-24 for float32, for any order of the additions (a GPU's blocked sums, a CPU's vectorised ones) and with
or without fused multiply-adds. An error already in the layer's input passes through |w| (ReLU does not make it
larger). So two devices that each keep to float32 (no TF32: NVIDIA_TF32_OVERRIDE=0) can differ by at most twice
the bound, element by element; it is computed here from the model's own weights and inputs, in float64.
"""

import numpy as np

UNIT_ROUNDOFF = 2.0**-24


def gamma(n: int) -> float:
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def forward_and_bound(weights: dict, images: np.ndarray) -> tuple:
    """(the exact outputs, in float64, of the float32 weights on uint8 images; the bound on a float32 pass's
    error in each of them). `weights` as helpers.saved_weights gives them; the input's own rounding (x / 255 in
    float32, correctly rounded) is counted."""
    layers = sorted({name.split("/")[2] for name in weights if name.startswith("mlp/kernels/")}, key=int)
    kernel = {i: weights[f"mlp/kernels/{i}/.ATTRIBUTES/VARIABLE_VALUE"].astype(np.float64) for i in layers}
    bias = {i: weights[f"mlp/biases/{i}/.ATTRIBUTES/VARIABLE_VALUE"].astype(np.float64) for i in layers}
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    error = UNIT_ROUNDOFF * x  # the division's rounding
    for position, i in enumerate(layers):
        w, b = kernel[i], bias[i]
        z = x @ w + b
        error = np.abs(w.T @ error.T).T + gamma(w.shape[0] + 1) * (np.abs(x) @ np.abs(w) + np.abs(b))
        x = z if position == len(layers) - 1 else np.maximum(z, 0.0)
    return x, error
