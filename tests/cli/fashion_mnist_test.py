"""python -m tfp_flows train --dataset=fashion_mnist, on tiny IDX files written here.

The real files are 30 MB; the tests write five training and three test images in the
dataset's format (tests/testing/idx_files.py) and point the loader at them with
--data_dir (or at an empty directory, for the error when Debian's package is absent).
Numbers the CLI prints are compared with the reloaded model on the arrays written,
not on anything the loader returned.
"""

import os
import re

import keras
import numpy as np
import pytest
from absl import flags

import tfp_flows  # pylint: disable=unused-import  (registers the layers for loading)
from tests.testing import idx_files
from tfp_flows import data
from tfp_flows.cli import app

_GLOW = ("--preset=glow", "--dataset=fashion_mnist", "--num_scales=1",
         "--steps_per_scale=1", "--hidden_channels=4", "--batch_size=3", "--epochs=1",
         "--run_eagerly", "--verbose=0", "--noexport_saved_model", "--noplot")


def _cli(capsys, *args):
  flags.FLAGS.unparse_flags()
  status = app.main(flags.FLAGS(["tfp_flows", *args]))
  out, err = capsys.readouterr()
  return status, out, err


def _number(pattern, text):
  match = re.search(pattern, text)
  assert match, f"{pattern!r} not in:\n{text}"
  return float(match.group(1))


def test_train_and_evaluate_on_fashion_mnist_files(capsys, tmp_path):
  written = idx_files.write_fashion_mnist(tmp_path / "fashion", num_train=5, num_test=3)
  run_dir = str(tmp_path / "run")
  status, out, err = _cli(capsys, "train", *_GLOW, f"--data_dir={tmp_path / 'fashion'}",
                          f"--output_dir={run_dir}")
  assert status == 0, err
  # The dataset's own split (not --test_fraction's), in the 8-bit pixel space.
  assert ("Data fashion_mnist: 5 training and 3 held-out rows of shape [28, 28, 1], "
          "integers in [0, 2**8), dequantised.") in out
  model = keras.saving.load_model(os.path.join(run_dir, "model.keras"), compile=False)
  x_train, x_test = (written[s][0][..., None].astype("float32") for s in ("train", "test"))
  nll = -float(np.mean(model.log_prob(x_test).numpy().astype(np.float64)))
  assert _number(r"held-out NLL: (\S+) nats/row over 3 rows", out) == pytest.approx(
      nll, rel=1e-6)
  assert _number(r"independent-pixel baseline: (\S+)", out) == pytest.approx(
      data.independent_pixel_bits_per_dim(x_train, x_test, 256), abs=1e-4)
  # evaluate rebuilds the held-out images from the directory recorded in run.json.
  status, out, err = _cli(capsys, "evaluate", f"--model_dir={run_dir}", "--run_eagerly")
  assert status == 0, err
  assert _number(r"held-out NLL: (\S+) nats/row over 3 rows", out) == pytest.approx(
      nll, rel=1e-6)


def test_absent_fashion_mnist_names_the_debian_package(capsys, tmp_path, monkeypatch):
  # Without --data_dir the loader reads Debian's directory; here an empty one.
  monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(tmp_path))
  for args in ((), (f"--data_dir={tmp_path}",)):
    status, out, err = _cli(capsys, "train", *_GLOW, *args)
    assert status == 2 and out == ""
    assert err.startswith(f"error: '{tmp_path}/train-images-idx3-ubyte.gz' is missing")
    assert "apt-get install dataset-fashion-mnist" in err and err.count("\n") == 1


def test_malformed_fashion_mnist_file_is_one_line(capsys, tmp_path):
  idx_files.write_fashion_mnist(tmp_path)
  (tmp_path / idx_files.FILES["test"][1]).write_bytes(b"not gzip")
  status, out, err = _cli(capsys, "train", *_GLOW, f"--data_dir={tmp_path}")
  assert status == 2 and out == "" and err.count("\n") == 1
  assert re.match(r"error: '.*t10k-labels-idx1-ubyte.gz' is not a readable gzip file", err)


def test_data_dir_goes_with_fashion_mnist_only(capsys, tmp_path):
  status, _, err = _cli(capsys, "train", "--dataset=two_moons", f"--data_dir={tmp_path}")
  assert status == 2
  assert "--data_dir goes with --dataset=fashion_mnist and only with it" in err
