"""Tiny Fashion-MNIST files for tests: the four gzipped IDX files, a few images each.

The IDX format (LeCun's MNIST files): bytes 0, 0, a type code (0x08 unsigned byte),
the rank; then each dimension as a big-endian int32; then the values in C order.
"""

import gzip
import os

import numpy as np

__all__ = ["idx_bytes", "write_gzip", "write_fashion_mnist", "FILES"]

FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def idx_bytes(array, type_code=0x08):
  """The IDX encoding of an unsigned-byte array (another `type_code` for bad files)."""
  array = np.asarray(array, dtype=np.uint8)
  return (bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
          + array.tobytes())


def write_gzip(path, content):
  with gzip.open(path, "wb") as f:
    f.write(content)


def write_fashion_mnist(directory, num_train=5, num_test=3, seed=0):
  """Writes random 28x28 uint8 images and labels 0..9 as the four files.

  Returns:
    `{"train": (images, labels), "test": (images, labels)}`, the uint8 arrays written.
  """
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  written = {}
  for split, num in (("train", num_train), ("test", num_test)):
    images = rng.integers(0, 256, size=[num, 28, 28], dtype=np.uint8)
    labels = rng.integers(0, 10, size=[num], dtype=np.uint8)
    images_file, labels_file = FILES[split]
    write_gzip(os.path.join(directory, images_file), idx_bytes(images))
    write_gzip(os.path.join(directory, labels_file), idx_bytes(labels))
    written[split] = (images, labels)
  return written
