"""NumPy references of the elementwise transformers' documented formulas (float64)."""

import math

import numpy as np

__all__ = ["SIGMOID_2", "numpy_transform"]

SIGMOID_2 = 1.0 / (1.0 + math.exp(-2.0))


def _sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def numpy_transform(kind, x, params, clamp=2.0):
  """Forward (base -> data) `(y, log|dy/dx|)` of "additive", "sigmoid" or "exp".

  "sigmoid" is Glow's map, whose data -> base side multiplies by
  `sigma = m + (1 - m) sigmoid(h + 2) / sigmoid(2)`, `m = exp(-clamp)`, so the forward
  divides; "exp" multiplies by `exp(clamp tanh(h / clamp))`.
  """
  if kind == "additive":
    return x + params[..., 0], np.zeros_like(x)
  h, t = params[..., 0], params[..., 1]
  if kind == "sigmoid":
    floor = math.exp(-clamp)
    sigma = floor + (1.0 - floor) * _sigmoid(h + 2.0) / SIGMOID_2
    return (x - t) / sigma, -np.log(sigma)
  log_s = clamp * np.tanh(h / clamp)
  return np.exp(log_s) * x + t, log_s
