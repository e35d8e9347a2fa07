"""The Fashion-MNIST protocol the Glow and TarFlow examples share: train, evaluate, report.

Full Fashion-MNIST (28x28x1, 8-bit, 60,000 train / 10,000 test, read offline from
Debian's `dataset-fashion-mnist`), a fixed batch order (seed), `fit` for `--steps` steps in
epochs of 100, test bits/dim averaged over `--eval_draws` seeded dequantisation draws,
64 samples at temperature 1. Writes `results.json` (test and histogram bits/dim,
weights, wall times, median step time, loss-curve checks), `samples.png` (8x8 grid) and
`loss.png` (per-step training bits/dim with its 100-step running mean).
"""

import json
import os
import statistics
import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf

import tfp_flows as tff

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position


class StepLosses(keras.callbacks.Callback):
  """Every training step's bits/dim (from the running epoch means Keras logs) and wall time."""

  def __init__(self):
    super().__init__()
    self.losses, self.times = [], []
    self._mean, self._count, self._start = 0.0, 0, None

  def on_epoch_begin(self, epoch, logs=None):
    self._mean, self._count = 0.0, 0

  def on_train_batch_begin(self, batch, logs=None):
    self._start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter() - self._start)
    mean = float(logs["bits_per_dim"])
    self._count += 1
    self.losses.append(self._count * mean - (self._count - 1) * self._mean)
    self._mean = mean


def _logit_alpha(value):
  return None if value.lower() == "none" else float(value)


def add_arguments(parser, output_dir, family):
  """The protocol's flags: output folder, steps, batch, learning rate, pixel map, seeds."""
  parser.add_argument("--output_dir", default=output_dir)
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--logit_alpha", type=_logit_alpha, default=0.05,
                      help=f"logit margin, or 'none' for {family}'s linear pixel scaling")
  parser.add_argument("--eval_draws", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)


def load():
  """`(x_train, x_test)` integer pixels `[N, 28, 28, 1]`."""
  (x_train, _), (x_test, _) = tff.data.load_fashion_mnist()
  return x_train, x_test


def run(model, args, x_train, x_test, eval_batch_size=1000, sample_kwargs=None,
        references=()):
  """Trains the compiled `model`, evaluates it, writes the outputs; returns the results.

  Args:
    model: a compiled image FlowModel of 8-bit `[28, 28, 1]` pixels.
    args: the parsed flags of `add_arguments` (all of them are recorded).
    x_train, x_test: from `load`.
    eval_batch_size: test rows per `log_prob` call.
    sample_kwargs: extra `model.sample` arguments (e.g. `denoise=True`).
    references: `(name, bits/dim)` pairs recorded in the results and drawn on the loss plot.
  """
  steps_per_epoch = min(100, args.steps)
  data = (tf.data.Dataset.from_tensor_slices(x_train)
          .shuffle(len(x_train), seed=args.seed, reshuffle_each_iteration=True)
          .repeat().batch(args.batch_size, drop_remainder=True).prefetch(2))
  recorder = StepLosses()
  start = time.time()
  model.fit(data, epochs=args.steps // steps_per_epoch, steps_per_epoch=steps_per_epoch,
            callbacks=[recorder], verbose=2)
  train_seconds = time.time() - start

  start = time.time()
  test_bpd = tff.data.dequantized_bits_per_dim(model, x_test, num_draws=args.eval_draws,
                                               batch_size=eval_batch_size)
  eval_seconds = time.time() - start
  histogram_bpd = tff.data.independent_pixel_bits_per_dim(x_train, x_test, 256)
  start = time.time()
  samples = model.sample(64, seed=1, **(sample_kwargs or {})).numpy()
  sample_seconds = time.time() - start
  losses = np.array(recorder.losses)
  running = np.array([losses[max(0, i - 100):i].mean() if i else losses[0]
                      for i in range(len(losses))])
  results = {
      "test_bits_per_dim": test_bpd, "histogram_bits_per_dim": histogram_bpd,
      **{f"{name}_bits_per_dim": value for name, value in references},
      "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
      "train_seconds": train_seconds,
      "first_step_seconds": recorder.times[0],
      "median_step_seconds": statistics.median(recorder.times[1:] or recorder.times),
      "eval_seconds": eval_seconds, "sample_64_seconds": sample_seconds,
      "finite_loss": bool(np.all(np.isfinite(losses))),
      "max_step_loss_after_100": float(np.max(losses[100:])) if len(losses) > 100 else None,
      "steps_above_3x_running_mean": int(np.sum(losses[100:] > 3.0 * running[100:])),
      "samples_finite": bool(np.all(np.isfinite(samples))),
      "args": vars(args)}
  print(json.dumps(results, indent=2))

  os.makedirs(args.output_dir, exist_ok=True)
  with open(os.path.join(args.output_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  grid = samples.reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(8 * 28, 8 * 28)
  plt.imsave(os.path.join(args.output_dir, "samples.png"), grid, cmap="gray",
             vmin=0, vmax=255)
  fig, axis = plt.subplots(figsize=(7, 4))
  axis.plot(losses, lw=0.5, label="per step")
  axis.plot(running, lw=1.5, label="running mean (100 steps)")
  axis.axhline(histogram_bpd, color="k", ls="--", label="per-pixel histogram (test)")
  for i, (name, value) in enumerate(references):
    axis.axhline(value, color=f"C{i + 2}", ls=":", label=f"{name}, same protocol (test)")
  axis.set_ylim(min(3.0, losses.min()), max(8.0, np.percentile(losses, 1) + 1))
  axis.set_xlabel("step")
  axis.set_ylabel("training bits/dim")
  axis.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.output_dir, "loss.png"), dpi=100)
  return results
