"""Offline datasets: scikit-learn's bundled 8x8 digits, and the independent-pixel baseline."""

import math

import numpy as np

__all__ = ["load_digits_images", "independent_pixel_bits_per_dim", "DIGITS_LEVELS"]

DIGITS_LEVELS = 17  # the digits' grey levels are the integers 0..16


def load_digits_images(test_fraction=0.2, seed=0):
  """scikit-learn's 8x8 digits (shipped with the package, no download) as images.

  Returns:
    `(x_train, y_train), (x_test, y_test)`: float32 images `[N, 8, 8, 1]` with integer
    values in [0, 16], and int32 labels; a seeded random split.
  """
  from sklearn import datasets  # pylint: disable=import-outside-toplevel
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}.")
  digits = datasets.load_digits()
  images = digits.images.reshape(-1, 8, 8, 1).astype("float32")
  labels = digits.target.astype("int32")
  order = np.random.default_rng(seed).permutation(len(images))
  num_test = int(round(test_fraction * len(images)))
  test, train = order[:num_test], order[num_test:]
  return (images[train], labels[train]), (images[test], labels[test])


def independent_pixel_bits_per_dim(x_train, x_test, num_levels):
  """Bits/dim of a per-pixel categorical histogram with add-one smoothing.

  Each pixel gets its own distribution over `num_levels` values, fitted on `x_train`
  with one pseudo-count per level; the result is the test set's mean negative
  log2-probability per pixel: a discrete model in the same pixel space as a flow's
  dequantised bits/dim.
  """
  x_train = np.asarray(x_train, dtype=np.int64).reshape(len(x_train), -1)
  x_test = np.asarray(x_test, dtype=np.int64).reshape(len(x_test), -1)
  for name, values in (("x_train", x_train), ("x_test", x_test)):
    if values.size == 0:
      raise ValueError(f"{name} is empty.")
    if values.min() < 0 or values.max() >= num_levels:
      raise ValueError(f"{name} pixel values must lie in [0, {num_levels}); got "
                       f"values in [{values.min()}, {values.max()}].")
  dims = x_train.shape[1]
  counts = np.ones((dims, num_levels))
  np.add.at(counts, (np.arange(dims)[None, :].repeat(len(x_train), 0), x_train), 1.0)
  probs = counts / counts.sum(axis=1, keepdims=True)
  log_probs = np.log(probs[np.arange(dims)[None, :], x_test])
  return float(-log_probs.mean() / math.log(2.0))
