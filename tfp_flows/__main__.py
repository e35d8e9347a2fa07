"""Command line: `python -m tfp_flows train [--flags]`.

With no flags, `train` fits Glow to scikit-learn's bundled 8x8 digits (17 grey levels in
a 5-bit pixel space), prints test bits/dim next to an independent-pixel baseline in the
same discrete space, and writes a PNG grid of samples and a SavedModel.
"""

import os
import sys
import time

from absl import app
from absl import flags

_COMMANDS = ("train",)

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/glow_digits",
                                  "Where the samples PNG and the SavedModel go.")
_EPOCHS = flags.DEFINE_integer("epochs", 60, "Training epochs.", lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate.",
                                    lower_bound=0.0)
_NUM_SCALES = flags.DEFINE_integer("num_scales", 2, "Glow scales.", lower_bound=1,
                                   upper_bound=3)
_STEPS_PER_SCALE = flags.DEFINE_integer("steps_per_scale", 4, "Glow steps per scale.",
                                        lower_bound=1)
_HIDDEN_CHANNELS = flags.DEFINE_integer("hidden_channels", 64,
                                        "Width of the coupling networks.", lower_bound=1)
_COUPLING = flags.DEFINE_enum("coupling", "affine", ["affine", "additive"],
                              "Coupling transformer.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.0,
                                   "AdamW weight decay (0 for plain Adam).",
                                   lower_bound=0.0)
_LOGIT_ALPHA = flags.DEFINE_float("logit_alpha", 0.001,
                                  "Logit preprocessing margin; 0 for linear scaling.",
                                  lower_bound=0.0, upper_bound=0.49)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (split, init, noise).")
_JIT = flags.DEFINE_boolean("jit_compile", True, "Compile the train step with XLA.")


def _train():
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  import tfp_flows as tff  # pylint: disable=import-outside-toplevel
  from tfp_flows import data  # pylint: disable=import-outside-toplevel
  from tfp_flows import export  # pylint: disable=import-outside-toplevel

  keras.utils.set_random_seed(_SEED.value)
  (x_train, _), (x_test, _) = data.load_digits_images(seed=_SEED.value)
  num_bits = 5  # 17 grey levels need 5 bits
  baseline = data.independent_pixel_bits_per_dim(x_train, x_test, 2 ** num_bits)
  model = tff.models.Glow(x_train.shape[1:], num_scales=_NUM_SCALES.value,
                          steps_per_scale=_STEPS_PER_SCALE.value,
                          hidden_channels=_HIDDEN_CHANNELS.value,
                          coupling=_COUPLING.value, num_bits=num_bits,
                          logit_alpha=_LOGIT_ALPHA.value or None)
  schedule = keras.optimizers.schedules.CosineDecay(
      _LEARNING_RATE.value, decay_steps=_EPOCHS.value * int(
          np.ceil(len(x_train) / _BATCH_SIZE.value)), alpha=0.05)
  optimizer = (keras.optimizers.AdamW(schedule, weight_decay=_WEIGHT_DECAY.value)
               if _WEIGHT_DECAY.value else keras.optimizers.Adam(schedule))
  model.compile(optimizer=optimizer, jit_compile=_JIT.value)
  print(f"Training Glow on {len(x_train)} digits ({len(x_test)} held out), "
        f"{_EPOCHS.value} epochs.")
  start = time.time()
  model.fit(x_train, epochs=_EPOCHS.value, batch_size=_BATCH_SIZE.value, verbose=1,
            shuffle=True)
  elapsed = time.time() - start
  test_bpd = data.dequantized_bits_per_dim(model, x_test)
  print(f"\nTraining took {elapsed:.0f} s.")
  print(f"Test bits/dim (5-bit pixel space): Glow {test_bpd:.3f}   "
        f"independent-pixel baseline {baseline:.3f}")
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  png = os.path.join(_OUTPUT_DIR.value, "samples.png")
  _write_grid(model.sample(64, seed=_SEED.value).numpy(), png, 2 ** num_bits)
  saved = export.save(model, os.path.join(_OUTPUT_DIR.value, "saved_model"))
  print(f"Wrote {png} and the SavedModel {saved} (signatures log_prob, sample, forward, "
        "inverse).")


def _write_grid(images, path, num_levels):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  side = int(len(images) ** 0.5)
  fig, axes = plt.subplots(side, side, figsize=(side, side))
  for image, axis in zip(images, axes.flat):
    axis.imshow(image[..., 0], cmap="gray_r", vmin=0, vmax=16 if num_levels >= 17 else
                num_levels - 1)
    axis.axis("off")
  fig.savefig(path, dpi=80, bbox_inches="tight")
  plt.close(fig)


def main(argv):
  command = argv[1] if len(argv) > 1 else "train"
  if command not in _COMMANDS or len(argv) > 2:
    print(f"usage: python -m tfp_flows {{{','.join(_COMMANDS)}}} [--flags]; "
          f"got {' '.join(argv[1:])!r}", file=sys.stderr)
    return 2
  _train()
  return 0


def run():
  app.run(main)


if __name__ == "__main__":
  run()
