"""tfp_flows.cli: train, evaluate, sample, export; summaries; user errors.

Most cases call `main` in-process with freshly parsed flags and tiny settings (eager,
one epoch of two or three batches); exit statuses go through `run` (absl's `app.run`,
what `python -m tfp_flows` calls), and one case runs `python -m tfp_flows` in a
subprocess. User errors must give one message on stderr and no traceback. The NLLs,
baseline and TensorBoard values the CLI prints or logs are compared with independent
computations on the reloaded `.keras` model and data rebuilt here from the documented
split.
"""

import glob
import math
import os
import re
import subprocess
import sys

import keras
import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from absl import flags

import tfp_flows  # pylint: disable=unused-import  (registers the layers for loading)
from tfp_flows import data
from tfp_flows import export
from tfp_flows.cli import app
from tfp_flows.cli import datasets
from tfp_flows.cli import diagnostics
from tfp_flows.cli import presets
from tfp_flows.cli.errors import UsageError

_FAST = ("--run_eagerly", "--verbose=0", "--epochs=1", "--noexport_saved_model")
_TOY = ("--dataset=two_moons", "--num_points=300", "--batch_size=128",
        "--test_fraction=0.2", "--seed=3")


def _cli(capsys, *args):
  """Runs the command line in-process; returns (exit status, stdout, stderr)."""
  flags.FLAGS.unparse_flags()
  argv = flags.FLAGS(["tfp_flows", *args])
  status = app.main(argv)
  out, err = capsys.readouterr()
  return status, out, err


def _number(pattern, text):
  match = re.search(pattern, text)
  assert match, f"{pattern!r} not in:\n{text}"
  return float(match.group(1))


def _toy_held_out():
  # The documented split: seeded points, then a seeded permutation, first 20% held out.
  x = data.make_toy_2d("two_moons", 300, seed=3)
  return x[np.random.default_rng(3).permutation(300)[:60]]


def _mean_nll(model, x):
  return -float(np.mean(np.asarray(model.log_prob(x), dtype=np.float64)))


def _summaries(logdir):
  """{(run, tag): [(step, value)]} from the event files under logdir."""
  values = {}
  for path in glob.glob(os.path.join(logdir, "*", "events.out.tfevents.*")):
    run = os.path.basename(os.path.dirname(path))
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        values.setdefault((run, value.tag), []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  return values


def _panels(png):
  """How many square panels side by side a PNG holds, from its aspect ratio."""
  height, width = matplotlib.image.imread(png).shape[:2]
  return round(width / height)


def _round_trip(capsys, tmp_path, monkeypatch, preset, arch, full=True):
  """train -> evaluate -> sample -> export; returns the loaded model and held-out rows.

  With `full`, also the PNGs (train: data, density and samples; sample: density and
  samples) and a traced evaluate of a `.npy` file. The export command's call to
  `tfp_flows.export.save` is recorded, not run: tests/export_test.py checks the
  SavedModel of every preset, and tracing its signatures would double this test's time.
  """
  model_dir = str(tmp_path / preset)
  plot = "--plot" if full else "--noplot"
  status, out, err = _cli(capsys, "train", f"--preset={preset}", *_TOY, *_FAST, *arch,
                          plot, f"--output_dir={model_dir}",
                          f"--logdir={tmp_path / 'logs'}", "--summary_batch=40")
  assert status == 0, err
  assert os.path.exists(os.path.join(model_dir, "samples.png")) == full
  if full:  # three square panels: data, density, samples
    assert _panels(os.path.join(model_dir, "samples.png")) == 3
  model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False)
  x_test = _toy_held_out()
  expected = _mean_nll(model, x_test)
  assert _number(r"held-out NLL: (\S+)", out) == pytest.approx(expected, abs=2e-6)

  status, out, err = _cli(capsys, "evaluate", f"--model_dir={model_dir}", "--run_eagerly")
  assert status == 0, err
  assert _number(r"held-out NLL: (\S+) nats/row over 60 rows", out) == pytest.approx(
      expected, abs=2e-6)
  if full:
    np.save(tmp_path / "rows.npy", x_test[:7])
    status, out, err = _cli(capsys, "evaluate", f"--model_dir={model_dir}",
                            f"--data_file={tmp_path / 'rows.npy'}")
    assert status == 0, err
    assert _number(r"held-out NLL: (\S+) nats/row over 7 rows", out) == pytest.approx(
        _mean_nll(model, x_test[:7]), abs=2e-6)

  status, out, err = _cli(capsys, "sample", f"--model_dir={model_dir}", "--num_samples=50",
                          "--seed=5", f"--output_dir={tmp_path / 'samples'}", plot)
  assert status == 0, err
  samples = np.load(tmp_path / "samples" / "samples.npy")
  assert samples.shape == (50, 2) and np.all(np.isfinite(samples))
  np.testing.assert_allclose(samples, model.sample(50, seed=5).numpy(), atol=1e-5)
  assert os.path.exists(tmp_path / "samples" / "samples.png") == full
  if full:  # density and samples
    assert _panels(tmp_path / "samples" / "samples.png") == 2

  calls = []
  monkeypatch.setattr(export, "save", lambda model, path: calls.append((model, path)))
  status, out, err = _cli(capsys, "export", f"--model_dir={model_dir}",
                          f"--export_dir={tmp_path / 'saved'}")
  assert status == 0, err
  (exported, path), = calls
  assert path == str(tmp_path / "saved")
  np.testing.assert_allclose(exported.log_prob(x_test).numpy(),
                             model.log_prob(x_test).numpy(), rtol=1e-6)
  return model, x_test


def _check_summaries(logdir, model, num_layers):
  summaries = _summaries(logdir)
  log_dets = sorted(tag for run, tag in summaries if tag.startswith("log_det/"))
  assert len(log_dets) == num_layers
  assert [t.split("/")[1][3:] for t in log_dets] == [l.name for l in model.flow_layers]
  last = {tag: values[-1][1] for (run, tag), values in summaries.items()}
  assert all(np.isfinite(v) for v in last.values())
  assert ("train", "epoch_nll") in summaries
  # The per-layer log-dets add up, with the base term, to the mean log-likelihood of the
  # summary batch, computed here from the reloaded model in one call.
  x = _toy_held_out()[:40]
  total = last["log_prob/base"] + sum(last[t] for t in log_dets)
  assert total == pytest.approx(-_mean_nll(model, x), abs=1e-4)
  assert last["log_prob/total"] == pytest.approx(total, abs=1e-5)
  assert 0.0 <= last["invertibility/max_abs_error"] < 1e-3
  return last


def test_nsf_two_moons_round_trip_and_summaries(capsys, tmp_path, monkeypatch):
  # The .npy evaluate runs traced (no --run_eagerly), the first eagerly.
  model, _ = _round_trip(capsys, tmp_path, monkeypatch, "nsf",
                         ("--num_layers=1", "--hidden_units=8"))
  _check_summaries(str(tmp_path / "logs"), model, num_layers=3)  # ActNorm, LU, spline


def test_residual_two_moons_round_trip_and_summaries(capsys, tmp_path, monkeypatch):
  # The .npy evaluate and the density plots are checked once, in the spline round
  # trip: a residual flow's exact log-det is slower to trace and to load.
  model, _ = _round_trip(capsys, tmp_path, monkeypatch, "residual",
                         ("--num_layers=1", "--hidden_units=8"), full=False)
  last = _check_summaries(str(tmp_path / "logs"), model, num_layers=2)  # ActNorm, block
  # The fixed-point inverse stops at a per-row change of 1e-5: its error is above
  # float32 round-off but far below the 1e-3 threshold.
  assert last["invertibility/max_abs_error"] < 1e-4


def test_glow_on_digit_images_for_a_few_steps(capsys, tmp_path):
  model_dir = str(tmp_path / "glow")
  status, out, err = _cli(capsys, "train", *_FAST, "--num_scales=1", "--steps_per_scale=1",
                          "--hidden_channels=4", "--steps_per_epoch=2", "--batch_size=32",
                          f"--output_dir={model_dir}")
  assert status == 0, err
  assert "Data digits: 1438 training and 359 held-out rows of shape [8, 8, 1]" in out
  model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False)
  (x_train, _), (x_test, _) = data.load_digits_images(seed=0)
  # Integer pixels are evaluated at their bin centres: a deterministic log_prob.
  assert _number(r"held-out NLL: (\S+)", out) == pytest.approx(
      _mean_nll(model, x_test), rel=1e-6)
  bits = _number(r"held-out bits/dim: (\S+) \(8 dequantisation draws, 5-bit", out)
  assert math.isfinite(bits) and bits > 0
  assert _number(r"independent-pixel baseline: (\S+)", out) == pytest.approx(
      data.independent_pixel_bits_per_dim(x_train, x_test, 32), abs=1e-4)
  # An 8 x 8 grid of 8 x 8 images, each in a square cell.
  assert _panels(os.path.join(model_dir, "samples.png")) == 1


def test_npy_vectors_train_and_evaluate(capsys, tmp_path):
  rng = np.random.default_rng(0)
  x = (rng.normal(size=[200, 3]) @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3],
                                             [0.0, 0.0, 0.2]])).astype("float32")
  np.save(tmp_path / "x.npy", x)
  model_dir = str(tmp_path / "npy")
  status, out, err = _cli(capsys, "train", "--preset=nsf", "--dataset=npy",
                          f"--data_file={tmp_path / 'x.npy'}", "--num_layers=1",
                          "--hidden_units=8", "--batch_size=100", *_FAST,
                          f"--output_dir={model_dir}")
  assert status == 0, err
  assert "160 training and 40 held-out rows of shape [3], continuous" in out
  model = keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False)
  held_out = x[np.random.default_rng(0).permutation(200)[:40]]
  assert _number(r"held-out NLL: (\S+)", out) == pytest.approx(_mean_nll(model, held_out),
                                                               abs=2e-6)
  assert "bits/dim" not in out  # nats for continuous vectors


def test_npy_integer_images_get_the_fewest_bits(tmp_path):
  images = np.random.default_rng(1).integers(0, 6, size=[30, 4, 4, 1])
  np.save(tmp_path / "images.npy", images)
  dataset = datasets.load("npy", data_file=str(tmp_path / "images.npy"), seed=2)
  assert dataset.num_bits == 3 and dataset.image_shape == (4, 4, 1)  # 5 < 2**3
  assert len(dataset.x_test) == 6 and dataset.x_train.dtype == np.float32
  np.testing.assert_array_equal(np.sort(np.concatenate([dataset.x_train, dataset.x_test]),
                                        axis=0), np.sort(images, axis=0))
  assert datasets.load("npy", data_file=str(tmp_path / "images.npy"), num_bits=0).num_bits \
      is None


def _write(path, content):
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    np.save(path, content, allow_pickle=True)
  return str(path)


@pytest.mark.parametrize("content, message", [
    (np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 4.0]]), r"1 row\(s\) with NaN or infinite"),
    (np.array([[1e39, 0.0], [1.0, 2.0]]), r"NaN or infinite values \(in float32\)"),
    (np.zeros([5, 4, 4]), r"images need a channel axis"),
    (np.zeros([5]), r"need vectors \[N, D\] or images"),
    (np.array([["a", "b"], ["c", "d"]]), r"holds dtype <U1; need real numbers"),
    (np.array([{"a": 1}, None], dtype=object), r"not a readable \.npy array"),
    (b"not an array", r"not a readable \.npy array"),
    (np.zeros([1, 3]), r"need at least 2 rows"),
])
def test_malformed_npy_is_a_clear_error(capsys, tmp_path, content, message):
  path = _write(tmp_path / "bad.npy", content)
  status, out, err = _cli(capsys, "train", "--preset=nsf", "--dataset=npy",
                          f"--data_file={path}", *_FAST)
  assert status == 2 and out == ""
  assert err.startswith("error: ") and re.search(message, err), err


@pytest.mark.parametrize("args, message", [
    (("fit",), r"usage: python -m tfp_flows \{train,sample,evaluate,export\}"),
    (("train", "extra"), r"usage: python -m tfp_flows"),
    (("evaluate", "--model_dir=/nonexistent/run"), r"holds no trained model"),
    (("train", "--preset=glow", "--dataset=two_moons"), r"glow models images \[H, W, C\]"),
    (("train", "--preset=glow", "--dataset=digits", "--num_bits=3"),
     r"needs integers in \[0, 8\); got values in \[0, 16\]"),
    (("train", "--preset=glow", "--num_bits=0"), r"glow models integer pixels"),
    (("train", "--preset=glow", "--num_scales=4"), r"glow rejects these settings: 4 scales"),
    (("train", "--dataset=two_moons", "--data_file=x.npy"), r"--data_file goes with"),
    (("train", "--dataset=npy", "--data_file=/nonexistent.npy"), r"is not a file"),
    (("train", "--dataset=digits", "--test_fraction=1"), r"--test_fraction must be in"),
])
def test_user_errors_are_one_message(capsys, args, message):
  status, out, err = _cli(capsys, *args)
  assert status == 2
  assert re.search(message, err), err
  assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("model_bytes, run_json, message", [
    (b"not a zip", "{}", r"cannot load the model in"),
    (None, '{"preset": "nsf"}', r"run.json' lacks data_file, dataset, event_shape"),
])
def test_malformed_model_directory_is_a_clear_error(capsys, tmp_path, model_bytes, run_json,
                                                    message):
  if model_bytes is None:  # a real model next to an incomplete run.json
    keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]).save(tmp_path / "model.keras")
  else:
    (tmp_path / "model.keras").write_bytes(model_bytes)
  (tmp_path / "run.json").write_text(run_json)
  status, _, err = _cli(capsys, "evaluate", f"--model_dir={tmp_path}")
  assert status == 2 and re.search(message, err), err


@pytest.mark.parametrize("name, options, row_shape, num_bits, event_shape, layers", [
    ("glow", presets.Options(num_scales=1, steps_per_scale=2, hidden_channels=4),
     [4, 4, 1], 3, [4, 4, 1], ["Dequantize", "Squeeze", "GlowStep", "GlowStep",
                               "GaussianPrior"]),
    # Image rows are flattened for the vector-only spline flow.
    ("nsf", presets.Options(num_layers=2, hidden_units=(4,), autoregressive=True),
     [2, 2, 1], None, [4], ["ActNorm", "InvertibleConv1x1", "SplineAutoregressive",
                            "InvertibleConv1x1", "SplineAutoregressive"]),
    ("residual", presets.Options(num_layers=1, hidden_units=(4,)), [3], 2, [3],
     ["Dequantize", "ActNorm", "ResidualBlock"]),
    ("ffjord", presets.Options(num_layers=1, hidden_units=(4,), solver="rk4",
                                   num_steps=2), [2], None, [2],
     ["ActNorm", "FFJORD"]),
    ("tarflow", presets.Options(num_layers=2, hidden_channels=8), [4, 4, 1], 3, [4, 4, 1],
     ["Dequantize", "NoiseAugmentation", "TarFlowBlock", "TarFlowBlock"]),
])
def test_preset_table_maps_flags_to_presets(name, options, row_shape, num_bits,
                                            event_shape, layers):
  model, shape = presets.build(name, options, row_shape, num_bits)
  assert shape == event_shape and model.event_shape == event_shape
  assert [type(layer).__name__ for layer in model.flow_layers] == layers
  if num_bits:
    assert model.flow_layers[0].num_bits == num_bits
  if name == "tarflow":  # --hidden_channels is the Transformer's width
    assert [layer.channels for layer in model.flow_layers[2:]] == [8, 8]


def test_a_preset_missing_from_models_is_a_clear_error(monkeypatch):
  # An entry whose factory this installation lacks (as ffjord was, before its preset).
  monkeypatch.setitem(presets.PRESETS, "future", presets.Preset(
      "NoSuchFlow", events="any", data="any", arguments=lambda o, shape: {}))
  with pytest.raises(UsageError, match=r"needs tfp_flows.models.NoSuchFlow"):
    presets.build("future", presets.Options(), [2], None)


class _SlightlyWrongInverse(tfp.bijectors.Bijector):
  """forward x -> 2x, inverse y -> y / 2.002: an inverse off by 0.1%."""

  def __init__(self):
    super().__init__(forward_min_event_ndims=1, name="slightly_wrong")

  def _forward(self, x):
    return 2.0 * x

  def _inverse(self, y):
    return y / 2.002


class _FakeModel:
  bijector = _SlightlyWrongInverse()


def test_invertibility_check_computes_both_directions():
  # z = 1 comes back as 2 / 2.002; TFP's cache must not hand back z unchanged.
  z = tf.ones([3, 2])
  bijector = _FakeModel.bijector
  bijector.inverse(bijector.forward(z))  # fills the cache with exactly these tensors
  error = diagnostics.invertibility_error(_FakeModel(), z)
  assert error == pytest.approx(1.0 - 2.0 / 2.002, rel=1e-4)


def test_bad_flag_value_exits_without_traceback():
  result = subprocess.run([sys.executable, "-m", "tfp_flows", "train", "--preset=maf"],
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert "--preset" in result.stderr and "glow|nsf|residual|ffjord" in result.stderr
  assert "Traceback" not in result.stderr


def test_help_lists_the_command_line_flags():
  # absl's --help shows __main__'s docstring and key flags; the flags are defined in
  # tfp_flows.cli.config, not in tfp_flows/__main__.py.
  result = subprocess.run([sys.executable, "-m", "tfp_flows", "--help"],
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 1, result.stderr  # absl's --help exits with status 1
  assert result.stdout.startswith("Command line: python -m tfp_flows {train,sample,")
  listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", result.stdout, flags=re.MULTILINE))
  assert {"preset", "dataset", "data_dir", "epochs", "steps_per_epoch", "backup_steps",
          "resume", "output_dir", "model_dir", "plot"} <= listed, result.stdout
  # It listed four of the five presets, and called --temperature, which must be
  # positive, non-negative.
  assert "--preset (glow, nsf, residual, ffjord, tarflow)" in result.stdout
  temperature = result.stdout[result.stdout.index("  --temperature:"):]
  assert "(a positive number)" in temperature.split("\n  --")[0]


@pytest.mark.parametrize("args, status, message", [
    (("train", "--dataset=npy", "--data_file={bad}"), 2, r"error: .*NaN or infinite values"),
    (("sample", "--model_dir=/nonexistent"), 2, r"error: .*holds no trained model"),
    (("train", "--epochs=0"), 1, r"flag --epochs=0: 0 is not a positive integer"),
])
def test_entry_point_exit_status(capsys, monkeypatch, tmp_path, args, status, message):
  # `run` is what `python -m tfp_flows` calls: absl parses the flags, then `main`.
  bad = _write(tmp_path / "bad.npy", np.array([[1.0, np.inf], [0.0, 0.0]]))
  monkeypatch.setattr(sys, "argv", ["tfp_flows", *(a.format(bad=bad) for a in args)])
  flags.FLAGS.unparse_flags()
  with pytest.raises(SystemExit) as exit_info:
    app.run()
  assert exit_info.value.code == status
  err = capsys.readouterr().err
  assert re.search(message, err) and "Traceback" not in err, err
