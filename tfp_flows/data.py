"""Offline datasets: scikit-learn's 8x8 digits, Debian's Fashion-MNIST, 2-D toys, `.npy`."""

import gzip
import math
import os

import numpy as np

__all__ = ["load_digits_images", "load_fashion_mnist", "FASHION_MNIST_DIR",
           "independent_pixel_bits_per_dim", "DIGITS_LEVELS", "make_toy_2d", "TOY_2D",
           "dequantized_bits_per_dim", "gaussian_bits_per_dim", "load_npy"]

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


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def load_fashion_mnist(directory=None):
  """Fashion-MNIST (Xiao et al. 2017) from the files Debian's package installs, offline.

  Reads the four gzipped IDX files that `apt-get install dataset-fashion-mnist` puts in
  `/usr/share/datasets/fashion-mnist` (or `directory`): 60,000 training and 10,000 test
  28x28 grey images with 8-bit pixels, and their labels 0..9. Nothing is downloaded.

  Returns:
    `(x_train, y_train), (x_test, y_test)`: float32 images `[N, 28, 28, 1]` with integer
    values in [0, 255], and int32 labels; the dataset's own train/test split.

  Raises:
    FileNotFoundError: when the files are absent; the message names the Debian package.
    ValueError: when a file is not a well-formed IDX array of the expected shape.
  """
  directory = os.fspath(directory or FASHION_MNIST_DIR)
  splits = []
  for split, (images_file, labels_file) in _FASHION_MNIST_FILES.items():
    images = _read_idx(os.path.join(directory, images_file), ndim=3)
    labels = _read_idx(os.path.join(directory, labels_file), ndim=1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
      raise ValueError(f"Fashion-MNIST {split} files in {directory!r} hold images of shape "
                       f"{images.shape} and {len(labels)} labels; expected [N, 28, 28] "
                       "and N labels. Reinstall dataset-fashion-mnist.")
    if labels.size and labels.max() > 9:
      raise ValueError(f"Fashion-MNIST {split} labels in {directory!r} go up to "
                       f"{labels.max()}; expected 0..9. Reinstall dataset-fashion-mnist.")
    splits.append((images[..., None].astype("float32"), labels.astype("int32")))
  return tuple(splits)


def _read_idx(path, ndim):
  """An unsigned-byte IDX array (LeCun's MNIST format) from a gzipped file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{path!r} is missing. Fashion-MNIST is read offline from Debian's package: "
        "run 'apt-get install dataset-fashion-mnist' (as root), or pass directory= "
        "(the command line's --data_dir) naming a folder that holds the four "
        "*-ubyte.gz files.")
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:  # not gzip (BadGzipFile is an OSError), or truncated
    raise ValueError(f"{path!r} is not a readable gzip file ({e}); reinstall "
                     "dataset-fashion-mnist.") from None
  # Header: two zero bytes, type code 0x08 (unsigned byte), the rank, then big-endian
  # int32 sizes.
  header = 4 + 4 * ndim
  if len(raw) < header or raw[:3] != bytes([0, 0, 8]) or raw[3] != ndim:
    raise ValueError(f"{path!r} is not an unsigned-byte IDX file of rank {ndim}.")
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">i4"))
  body = np.frombuffer(raw, dtype=np.uint8, offset=header)
  if body.size != math.prod(shape):
    raise ValueError(f"{path!r} declares shape {list(shape)} but holds {body.size} bytes.")
  return body.reshape(shape)


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


TOY_2D = ("two_moons", "ring", "checkerboard")


def make_toy_2d(name, num_samples, seed=0):
  """Samples of a 2-D toy density, generated in code (no download), as float32 `[N, 2]`.

  * "two_moons": scikit-learn's two interleaved half circles, noise 0.05, standardised.
  * "ring": an equal mixture of 8 Gaussians (std 0.15) evenly spaced on a circle of
    radius 2.
  * "checkerboard": uniform on the 8 black squares of a 4 x 4 board over [-2, 2]^2.
  """
  if name not in TOY_2D:
    raise ValueError(f"name must be one of {TOY_2D}; got {name!r}.")
  if int(num_samples) < 1:
    raise ValueError(f"num_samples must be positive; got {num_samples!r}.")
  num_samples = int(num_samples)
  rng = np.random.default_rng(seed)
  if name == "two_moons":
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
    x, _ = datasets.make_moons(num_samples, noise=0.05, random_state=seed)
    x = (x - x.mean(0)) / x.std(0)
  elif name == "ring":
    angles = 2 * np.pi * rng.integers(0, 8, num_samples) / 8
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], -1)
    x = centres + 0.15 * rng.normal(size=[num_samples, 2])
  else:
    cells = rng.integers(0, 8, num_samples)
    row = cells // 2
    col = 2 * (cells % 2) + (row % 2)  # row + col is even: the black squares
    x = np.stack([col, row], -1) + rng.uniform(size=[num_samples, 2])
    x = x - 2.0
  return x.astype("float32")


def dequantized_bits_per_dim(model, x, num_draws=8, seed=1234, batch_size=1000):
  """Test bits/dim of a discrete-data flow, averaged over seeded dequantisation draws.

  `-E_u[log p(x + u)] / (D ln 2)` with `u ~ U[0, 1)^D`, estimated with `num_draws`
  draws: the variational bound on the discrete model's bits/dim (Theis et al. 2016)
  that published flow results report. `model` is a `FlowModel` whose first layer is
  `Dequantize`, so `model.distribution` is the continuous density of `x + u`. Rows are
  scored `batch_size` at a time, so memory does not grow with the test set.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if int(num_draws) < 1 or int(batch_size) < 1:
    raise ValueError("num_draws and batch_size must be positive; got "
                     f"{num_draws!r} and {batch_size!r}.")
  x = np.asarray(x, dtype="float32")
  generator = tf.random.Generator.from_seed(seed)
  log_prob = tf.function(lambda v: model.distribution.log_prob(v))
  total = 0.0
  for _ in range(num_draws):
    for start in range(0, len(x), batch_size):
      rows = tf.constant(x[start:start + batch_size])
      total += float(tf.reduce_sum(log_prob(rows + generator.uniform(tf.shape(rows)))))
  return -total / (num_draws * len(x)) / (math.log(2.0) * int(np.prod(x.shape[1:])))


def gaussian_bits_per_dim(x_train, x_test, num_draws=8, seed=0):
  """Bits/dim of a full-covariance Gaussian on uniformly dequantised pixels.

  Fitted (maximum likelihood) to `x_train + u` and evaluated like
  `dequantized_bits_per_dim`, so it is in the same discrete pixel space as a flow's
  number; the baseline a flow with all its layers at the identity plus a linear map
  would reach.
  """
  rng = np.random.default_rng(seed)
  x_train = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
  x_test = np.asarray(x_test, dtype=np.float64).reshape(len(x_test), -1)
  v = x_train + rng.uniform(size=x_train.shape)
  mean = v.mean(0)
  cov = np.cov(v, rowvar=False, bias=True)
  _, log_det = np.linalg.slogdet(cov)
  precision = np.linalg.inv(cov)
  dims = x_train.shape[1]
  total = 0.0
  for _ in range(num_draws):
    diff = x_test + rng.uniform(size=x_test.shape) - mean
    maha = np.einsum("ni,ij,nj->n", diff, precision, diff)
    total += np.mean(0.5 * (maha + log_det + dims * math.log(2 * math.pi)))
  return float(total / num_draws / (dims * math.log(2.0)))


def load_npy(path):
  """A user's `.npy` array of float vectors `[N, D]` or images `[N, H, W, C]`, checked.

  The file is read without unpickling (`allow_pickle=False`), so an object array is
  refused rather than executed. Values must be real numbers (bool, integer or float
  dtypes) that are finite once cast to float32.

  Returns:
    The array as float32, shape `[N, D]` or `[N, H, W, C]`, `N >= 2`.

  Raises:
    ValueError: if the file is missing, is not a `.npy` array, or has the wrong rank,
      dtype, size or non-finite values; the message names the file and the fix.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{path!r} is not a file: pass the path of a .npy array "
                     "(numpy.save(path, x)).")
  try:
    with open(path, "rb") as f:
      x = np.lib.format.read_array(f, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"{path!r} is not a readable .npy array ({e}); write it with "
                     "numpy.save(path, x) from a numeric array.") from None
  if x.dtype.kind not in "biuf":
    raise ValueError(f"{path!r} holds dtype {x.dtype}; need real numbers (bool, integer "
                     "or float), e.g. x.astype('float32').")
  if x.ndim == 3:
    raise ValueError(f"{path!r} has shape {list(x.shape)}; images need a channel axis "
                     "[N, H, W, C] (for grey images save x[..., None]), vectors [N, D].")
  if x.ndim not in (2, 4):
    raise ValueError(f"{path!r} has shape {list(x.shape)}; need vectors [N, D] or images "
                     "[N, H, W, C].")
  if x.shape[0] < 2 or min(x.shape[1:]) < 1:
    raise ValueError(f"{path!r} has shape {list(x.shape)}; need at least 2 rows (some "
                     "are held out) and no empty axis.")
  with np.errstate(over="ignore"):  # overflow to inf is reported below, with the row
    x = x.astype("float32")
  bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
  if bad.any():
    rows = np.flatnonzero(bad)
    raise ValueError(f"{path!r} has {len(rows)} row(s) with NaN or infinite values (in "
                     f"float32), first at row {rows[0]}; drop or fix them.")
  return x
