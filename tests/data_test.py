"""tfp_flows.data: the digits split, Fashion-MNIST parsing, the independent-pixel baseline."""

import math
import sys

import numpy as np
import pytest
from sklearn import datasets

from tests.testing import idx_files
from tfp_flows import data


def _rows(images, labels):
  """Each (image, label) pair as bytes, sorted: a multiset that ignores order."""
  flat = np.concatenate([images.reshape(len(images), -1).astype(np.float64),
                         labels.reshape(-1, 1).astype(np.float64)], axis=1)
  return sorted(row.tobytes() for row in flat)


def test_digits_split_sizes_values_and_pairs():
  (x_train, y_train), (x_test, y_test) = data.load_digits_images()
  # 1797 digits; round(0.2 * 1797) = 359 held out.
  assert x_train.shape == (1438, 8, 8, 1) and x_test.shape == (359, 8, 8, 1)
  assert y_train.shape == (1438,) and y_test.shape == (359,)
  assert x_train.dtype == np.float32 and y_train.dtype == np.int32
  everything = np.concatenate([x_train, x_test])
  np.testing.assert_array_equal(everything, np.round(everything))
  assert sorted(np.unique(everything)) == list(range(data.DIGITS_LEVELS))
  assert sorted(np.unique(np.concatenate([y_train, y_test]))) == list(range(10))
  # The split is a partition of scikit-learn's digits with each label kept on its image.
  digits = datasets.load_digits()
  assert _rows(everything, np.concatenate([y_train, y_test])) == _rows(
      digits.images, digits.target)


def test_digits_split_is_seeded():
  (a, _), (a_test, _) = data.load_digits_images(seed=0)
  (b, _), _ = data.load_digits_images(seed=0)
  (c, _), _ = data.load_digits_images(seed=1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  (half, _), (half_test, _) = data.load_digits_images(test_fraction=0.5)
  assert len(half_test) == round(0.5 * 1797) and len(half) + len(half_test) == 1797
  assert len(a_test) == 359


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_test_fraction_is_rejected(fraction):
  with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
    data.load_digits_images(test_fraction=fraction)


def test_independent_pixel_bits_per_dim_by_hand():
  # Two pixels, three levels, add-one smoothing:
  #   pixel 0 sees 0, 0, 1 -> counts (3, 2, 1) / 6;  pixel 1 sees 1, 2, 2 -> (1, 2, 3) / 6.
  # Test images (2, 0) and (0, 2) have probabilities 1/6, 1/6, 3/6, 3/6, so the mean
  # -log2 p per pixel is (2 log2 6 + 2 log2 2) / 4 = (log2 6 + 1) / 2.
  x_train = np.array([[0, 1], [0, 2], [1, 2]])
  x_test = np.array([[2, 0], [0, 2]])
  expected = (math.log2(6) + 1) / 2
  assert data.independent_pixel_bits_per_dim(x_train, x_test, 3) == pytest.approx(
      expected, rel=1e-12)
  # Images [N, H, W, C] are flattened to pixels the same way.
  images = data.independent_pixel_bits_per_dim(
      x_train.reshape(3, 1, 2, 1).astype("float32"), x_test.reshape(2, 1, 2, 1), 3)
  assert images == pytest.approx(expected, rel=1e-12)
  # A level nobody saw still gets its pseudo-count: 1 / (3 + 4) for 4 levels.
  unseen = data.independent_pixel_bits_per_dim(x_train, np.array([[3, 3]]), 4)
  assert unseen == pytest.approx(math.log2(7), rel=1e-12)


def test_independent_pixel_baseline_on_digits_is_sensible():
  (x_train, _), (x_test, _) = data.load_digits_images()
  bits = data.independent_pixel_bits_per_dim(x_train, x_test, data.DIGITS_LEVELS)
  # Between a perfect model (0) and a uniform one over 17 levels (log2 17 = 4.09).
  assert 0.5 < bits < math.log2(data.DIGITS_LEVELS)


@pytest.mark.parametrize("x_train,x_test", [
    ([[0, 3]], [[0, 1]]),    # train value == num_levels
    ([[0, 1]], [[0, 3]]),    # test value == num_levels
    ([[-1, 1]], [[0, 1]]),   # negative train value
    ([[0, 1]], [[0, -1]]),   # negative test value
], ids=["train_high", "test_high", "train_negative", "test_negative"])
def test_out_of_range_pixels_are_rejected(x_train, x_test):
  with pytest.raises(ValueError, match=r"pixel values must lie in \[0, 3\)"):
    data.independent_pixel_bits_per_dim(np.array(x_train), np.array(x_test), 3)


def test_toy_2d_densities_have_their_documented_support():
  ring = data.make_toy_2d("ring", 4000, seed=1)
  radius = np.linalg.norm(ring, axis=-1)
  assert abs(np.median(radius) - 2.0) < 0.05
  angle_bins = np.round(np.arctan2(ring[:, 1], ring[:, 0]) / (np.pi / 4)) % 8
  np.testing.assert_allclose(np.bincount(angle_bins.astype(int), minlength=8) / 4000,
                             np.full(8, 1 / 8), atol=0.03)
  board = data.make_toy_2d("checkerboard", 4000, seed=2)
  assert board.min() >= -2.0 and board.max() <= 2.0
  cells = np.floor(board + 2.0).astype(int)
  assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)
  assert len(np.unique(cells, axis=0)) == 8
  moons = data.make_toy_2d("two_moons", 4000, seed=3)
  np.testing.assert_allclose(moons.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(moons.std(0), 1.0, atol=1e-5)
  for name in data.TOY_2D:
    first = data.make_toy_2d(name, 10, seed=4)
    assert first.dtype == np.float32 and first.shape == (10, 2)
    np.testing.assert_array_equal(first, data.make_toy_2d(name, 10, seed=4))


def test_toy_2d_rejects_bad_arguments():
  with pytest.raises(ValueError, match="name must be one of"):
    data.make_toy_2d("spiral", 10)
  with pytest.raises(ValueError, match="num_samples must be positive"):
    data.make_toy_2d("ring", 0)


def test_fashion_mnist_reads_the_idx_files(tmp_path, monkeypatch):
  written = idx_files.write_fashion_mnist(tmp_path, num_train=5, num_test=3, seed=1)
  (x_train, y_train), (x_test, y_test) = data.load_fashion_mnist(tmp_path)
  assert x_train.shape == (5, 28, 28, 1) and x_test.shape == (3, 28, 28, 1)
  assert x_train.dtype == np.float32 and y_train.dtype == np.int32
  # The dataset's own split and order, pixel for pixel.
  np.testing.assert_array_equal(x_train[..., 0], written["train"][0])
  np.testing.assert_array_equal(y_train, written["train"][1])
  np.testing.assert_array_equal(x_test[..., 0], written["test"][0])
  np.testing.assert_array_equal(y_test, written["test"][1])
  # Without a directory it reads Debian's location.
  assert data.FASHION_MNIST_DIR == "/usr/share/datasets/fashion-mnist"
  monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(tmp_path))
  (default_train, _), _ = data.load_fashion_mnist()
  np.testing.assert_array_equal(default_train, x_train)


def test_missing_fashion_mnist_names_the_debian_package(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte.gz' is missing.*"
                     r"apt-get install dataset-fashion-mnist"):
    data.load_fashion_mnist(tmp_path)


_IMAGES = np.zeros([2, 28, 28], np.uint8)
_LABELS = np.array([3, 9], np.uint8)


@pytest.mark.parametrize("which, content, message", [
    ("images", b"plain bytes", r"not a readable gzip file"),
    ("images", None, r"not a readable gzip file"),  # a gzip stream cut short
    ("images", idx_files.idx_bytes(_IMAGES, type_code=0x0D), r"not an unsigned-byte IDX"),
    ("images", idx_files.idx_bytes(_IMAGES[0]), r"not an unsigned-byte IDX file of rank 3"),
    ("images", idx_files.idx_bytes(_IMAGES)[:10], r"not an unsigned-byte IDX file"),
    ("images", idx_files.idx_bytes(_IMAGES)[:-1], r"declares shape \[2, 28, 28\] but holds "
     r"1567 bytes"),
    ("images", idx_files.idx_bytes(np.zeros([2, 27, 28], np.uint8)),
     r"images of shape \(2, 27, 28\) and 2 labels; expected \[N, 28, 28\]"),
    ("labels", idx_files.idx_bytes(_LABELS[:1]), r"and 1 labels; expected \[N, 28, 28\] and N"),
    ("labels", idx_files.idx_bytes([3, 10]), r"labels in .* go up to 10; expected 0..9"),
], ids=["not_gzip", "truncated_gzip", "float_type", "rank", "short_header", "short_body",
        "image_size", "label_count", "label_range"])
def test_malformed_fashion_mnist_files_are_clear_errors(tmp_path, which, content, message):
  idx_files.write_fashion_mnist(tmp_path)
  images_file, labels_file = idx_files.FILES["train"]
  idx_files.write_gzip(tmp_path / images_file, idx_files.idx_bytes(_IMAGES))
  idx_files.write_gzip(tmp_path / labels_file, idx_files.idx_bytes(_LABELS))
  path = tmp_path / (images_file if which == "images" else labels_file)
  if content is None:
    path.write_bytes(path.read_bytes()[:-9])  # drops the stream's end and checksum
  elif content.startswith(b"\0"):
    idx_files.write_gzip(path, content)
  else:
    path.write_bytes(content)
  with pytest.raises(ValueError, match=message):
    data.load_fashion_mnist(tmp_path)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
