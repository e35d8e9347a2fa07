"""The command line's datasets: 2-D toys, digits, Fashion-MNIST, a `.npy` file."""

import contextlib
import dataclasses
import math

import numpy as np

from tfp_flows import data
from tfp_flows.cli.errors import UsageError

__all__ = ["Dataset", "DATASETS", "load", "load_file"]

DATASETS = tuple(data.TOY_2D) + ("digits", "digits_vectors", "fashion_mnist", "npy")
_DIGITS_BITS = 5  # the digits' 17 grey levels need 5 bits
_FASHION_MNIST_BITS = 8
_MAX_BITS = 16  # the Dequantize layer's limit


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Training and held-out rows of one dataset, and how to read them.

  Attributes:
    name: the dataset's command-line name.
    x_train: float32 rows, `[N, D]` or `[N, H, W, C]`.
    x_test: held-out rows of the same shape.
    num_bits: None for continuous data; else every value is an integer in
      `[0, 2**num_bits)` and flows dequantise it (bits/dim in that pixel space).
    image_shape: `[H, W, C]` to show one row as an image, or None.
  """
  name: str
  x_train: np.ndarray
  x_test: np.ndarray
  num_bits: int | None
  image_shape: tuple | None

  @property
  def row_shape(self):
    return tuple(self.x_train.shape[1:])

  def describe(self):
    kind = (f"integers in [0, 2**{self.num_bits}), dequantised" if self.num_bits
            else "continuous")
    return (f"{self.name}: {len(self.x_train)} training and {len(self.x_test)} held-out "
            f"rows of shape {list(self.row_shape)}, {kind}")


def load(name, data_file=None, num_points=10000, test_fraction=0.2, num_bits=None, seed=0,
         data_dir=None):
  """Loads a dataset by its command-line name and splits off the held-out rows.

  The split is a seeded permutation (`data.load_digits_images` for the digits), so the
  same arguments give the same rows: `evaluate` rebuilds a run's held-out set this way.
  Fashion-MNIST keeps its own split (60,000 training and 10,000 test images).

  Args:
    name: one of `DATASETS`: a 2-D toy (`data.TOY_2D`; `num_points` drawn with `seed`),
      "digits" (8x8x1 images), "digits_vectors" (the same digits as 64-D vectors),
      "fashion_mnist" (28x28x1 images of 8-bit pixels, `data.load_fashion_mnist`) or
      "npy" (the array in `data_file`, see `data.load_npy`).
    data_file: path of the `.npy` array, for "npy" only.
    num_points: number of toy points (training plus held out).
    test_fraction: held-out fraction in (0, 1); Fashion-MNIST ignores it.
    num_bits: None to decide (digits: 5 bits; Fashion-MNIST: 8; `.npy` of non-negative
      integers below 2**16: the fewest bits that hold the maximum; else continuous), 0
      for continuous, or the bits of integer data.
    seed: seed of the toy points and of the split.
    data_dir: for "fashion_mnist" only, the directory of its four IDX files (default
      `data.FASHION_MNIST_DIR`, where Debian's dataset-fashion-mnist installs them).

  Returns:
    A `Dataset`.

  Raises:
    UsageError: for an unknown name, a bad file, sizes, or values that do not fit
      `num_bits`.
  """
  if name not in DATASETS:
    raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}; got {name!r}.")
  if (name == "npy") != (data_file is not None):
    raise UsageError("--data_file goes with --dataset=npy and only with it; got "
                     f"--dataset={name} and --data_file={data_file!r}.")
  if data_dir is not None and name != "fashion_mnist":
    raise UsageError("--data_dir goes with --dataset=fashion_mnist and only with it; got "
                     f"--dataset={name} and --data_dir={data_dir!r}.")
  if not 0.0 < test_fraction < 1.0:
    raise UsageError(f"--test_fraction must be in (0, 1); got {test_fraction!r}.")
  if num_bits is not None and not 0 <= num_bits <= _MAX_BITS:
    raise UsageError(f"--num_bits must be in [0, {_MAX_BITS}] (0: continuous data); got "
                     f"{num_bits!r}.")
  image_shape = None
  if name in data.TOY_2D:
    if num_points < 2:
      raise UsageError(f"--num_points must be at least 2; got {num_points!r}.")
    with _scikit_learn_for(name):
      x = data.make_toy_2d(name, num_points, seed=seed)
    x_train, x_test = _split(x, test_fraction, seed)
    default_bits = None
  elif name in ("digits", "digits_vectors"):
    with _scikit_learn_for(name):
      (x_train, _), (x_test, _) = data.load_digits_images(test_fraction=test_fraction,
                                                          seed=seed)
    image_shape = tuple(x_train.shape[1:])
    if name == "digits_vectors":
      x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    default_bits = _DIGITS_BITS
  elif name == "fashion_mnist":
    try:
      (x_train, _), (x_test, _) = data.load_fashion_mnist(data_dir)
    except (OSError, ValueError) as e:
      raise UsageError(str(e)) from None
    image_shape = tuple(x_train.shape[1:])
    default_bits = _FASHION_MNIST_BITS
  else:
    x = _read(data_file)
    image_shape = tuple(x.shape[1:]) if x.ndim == 4 else None
    default_bits = _fewest_bits(x)
    x_train, x_test = _split(x, test_fraction, seed)
  if num_bits is None:
    num_bits = default_bits
  num_bits = num_bits or None
  if num_bits:
    _check_discrete(name, num_bits, x_train, x_test)
  return Dataset(name, x_train, x_test, num_bits, image_shape)


def load_file(path, num_bits):
  """Rows of a `.npy` file to evaluate a trained model on, checked like `load`'s."""
  x = _read(path)
  if num_bits:
    _check_discrete(path, num_bits, x)
  return x


@contextlib.contextmanager
def _scikit_learn_for(name):
  """Turns a missing scikit-learn (an optional dependency) into a `UsageError`."""
  try:
    yield
  except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] != "sklearn":
      raise
    raise UsageError(f"--dataset={name} needs scikit-learn, which is not installed: pip "
                     "install 'tfp_flows[cli]'.") from None


def _read(path):
  try:
    return data.load_npy(path)
  except ValueError as e:
    raise UsageError(str(e)) from None


def _split(x, test_fraction, seed):
  order = np.random.default_rng(seed).permutation(len(x))
  num_test = min(max(int(round(test_fraction * len(x))), 1), len(x) - 1)
  return x[order[num_test:]], x[order[:num_test]]


def _fewest_bits(x):
  """Bits of non-negative integer data below 2**16, or None (continuous)."""
  if x.min() < 0 or x.max() >= 2 ** _MAX_BITS or not np.array_equal(x, np.round(x)):
    return None
  return max(1, math.ceil(math.log2(float(x.max()) + 1.0)))


def _check_discrete(what, num_bits, *arrays):
  """Raises unless every value of `arrays` is an integer in [0, 2**num_bits)."""
  levels = 2 ** num_bits
  # Array by array: concatenating Fashion-MNIST's splits would copy 220 MB.
  integers = all(np.array_equal(x, np.round(x)) for x in arrays)
  low, high = min(x.min() for x in arrays), max(x.max() for x in arrays)
  if integers and low >= 0 and high < levels:
    return
  found = f"values in [{low:g}, {high:g}]" + ("" if integers else ", not all integers")
  raise UsageError(f"{what} with --num_bits={num_bits} needs integers in [0, {levels}); "
                   f"got {found}. Pass --num_bits=0 to model the data as continuous, or "
                   "a larger --num_bits.")
