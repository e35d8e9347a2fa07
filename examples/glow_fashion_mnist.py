"""Glow on Fashion-MNIST: test bits/dim next to a per-pixel histogram; samples and loss curve.

The protocol of the README's Fashion-MNIST table: full Fashion-MNIST (28x28x1, 8-bit,
60,000 train / 10,000 test, read offline from Debian's `dataset-fashion-mnist`), Glow with
2 scales x 4 steps and hidden width 64, batch 64, Adam 1e-3 with cosine decay, 3,000
steps, float32 under XLA, a fixed batch order and dequantisation noise (seed 0). Test
bits/dim average 8 seeded dequantisation draws over the 10,000 test images.

Run: python examples/glow_fashion_mnist.py [--output_dir runs/glow_fashion_mnist]
     [--steps 3000] [--scale exp | sigmoid] [--logit_alpha 0.05 | none]
"""

import argparse
import json
import os
import time

import keras
import matplotlib
import numpy as np
import tensorflow as tf

import tfp_flows as tff

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position


class _StepLosses(keras.callbacks.Callback):
  """Records every training step's bits/dim (from the running epoch means Keras logs)."""

  def __init__(self):
    super().__init__()
    self.losses = []
    self._mean, self._count = 0.0, 0

  def on_epoch_begin(self, epoch, logs=None):
    self._mean, self._count = 0.0, 0

  def on_train_batch_end(self, batch, logs=None):
    mean = float(logs["bits_per_dim"])
    self._count += 1
    self.losses.append(self._count * mean - (self._count - 1) * self._mean)
    self._mean = mean


def _logit_alpha(value):
  return None if value.lower() == "none" else float(value)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--output_dir", default="runs/glow_fashion_mnist")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--warmup_steps", type=int, default=0)
  parser.add_argument("--clipnorm", type=float, default=None,
                      help="global gradient-norm clipping (Keras' global_clipnorm)")
  parser.add_argument("--scale", default="exp", choices=["sigmoid", "exp"])
  parser.add_argument("--clamp", type=float, default=2.0)
  parser.add_argument("--logit_alpha", type=_logit_alpha, default=0.05,
                      help="logit margin, or 'none' for Glow's linear scaling")
  parser.add_argument("--num_scales", type=int, default=2)
  parser.add_argument("--steps_per_scale", type=int, default=4)
  parser.add_argument("--hidden_channels", type=int, default=64)
  parser.add_argument("--eval_draws", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  (x_train, _), (x_test, _) = tff.data.load_fashion_mnist()
  keras.utils.set_random_seed(args.seed)
  model = tff.models.Glow(
      [28, 28, 1], num_scales=args.num_scales, steps_per_scale=args.steps_per_scale,
      hidden_channels=args.hidden_channels, num_bits=8, logit_alpha=args.logit_alpha,
      scale=args.scale, clamp=args.clamp)
  schedule = keras.optimizers.schedules.CosineDecay(
      0.0 if args.warmup_steps else args.learning_rate,
      decay_steps=args.steps - args.warmup_steps,
      warmup_target=args.learning_rate if args.warmup_steps else None,
      warmup_steps=args.warmup_steps)
  model.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=args.clipnorm),
                jit_compile=True)
  steps_per_epoch = 100
  data = (tf.data.Dataset.from_tensor_slices(x_train)
          .shuffle(len(x_train), seed=args.seed, reshuffle_each_iteration=True)
          .repeat().batch(args.batch_size, drop_remainder=True).prefetch(2))
  recorder = _StepLosses()
  start = time.time()
  model.fit(data, epochs=args.steps // steps_per_epoch, steps_per_epoch=steps_per_epoch,
            callbacks=[recorder], verbose=2)
  train_seconds = time.time() - start

  test_bpd = tff.data.dequantized_bits_per_dim(model, x_test, num_draws=args.eval_draws)
  histogram_bpd = tff.data.independent_pixel_bits_per_dim(x_train, x_test, 256)
  samples = model.sample(64, seed=1).numpy()
  losses = np.array(recorder.losses)
  running = np.array([losses[max(0, i - 100):i].mean() if i else losses[0]
                      for i in range(len(losses))])
  spikes = int(np.sum(losses[100:] > 3.0 * running[100:]))
  results = {
      "test_bits_per_dim": test_bpd, "histogram_bits_per_dim": histogram_bpd,
      "train_seconds": train_seconds, "finite_loss": bool(np.all(np.isfinite(losses))),
      "max_step_loss_after_100": float(np.max(losses[100:])),
      "steps_above_3x_running_mean": spikes,
      "samples_finite": bool(np.all(np.isfinite(samples))),
      "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
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
  axis.set_ylim(min(3.0, losses.min()), max(8.0, np.percentile(losses, 1) + 1))
  axis.set_xlabel("step")
  axis.set_ylabel("training bits/dim")
  axis.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.output_dir, "loss.png"), dpi=100)


if __name__ == "__main__":
  main()
