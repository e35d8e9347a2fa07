"""The command line's flags, read once into a `Config` that every command takes.

The absl flags are defined here, when `tfp_flows.cli.app` imports this module (never by
`import tfp_flows`), and read in exactly one place, `from_flags`; the commands take the
resulting `Config` as an argument and never read `absl.flags.FLAGS` themselves.
"""

import dataclasses
import os

from absl import flags

from tfp_flows.cli import datasets
from tfp_flows.cli import presets

__all__ = ["Config", "from_flags"]

_PRESET = flags.DEFINE_enum("preset", "glow", list(presets.PRESETS), "Flow preset.")
_DATASET = flags.DEFINE_enum("dataset", "digits", list(datasets.DATASETS),
                             "Training data; npy reads --data_file, fashion_mnist "
                             "--data_dir.")
_DATA_FILE = flags.DEFINE_string(
    "data_file", None, "A .npy array of vectors [N, D] or images [N, H, W, C]: the "
    "training data with --dataset=npy; with evaluate, rows to evaluate instead of the "
    "run's held-out split.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "fashion_mnist: the directory of its four *-ubyte.gz files "
    "(default /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist).")
_NUM_POINTS = flags.DEFINE_integer("num_points", 10000, "Points of a 2-D toy dataset.",
                                   lower_bound=2)
_TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.2,
                                    "Held-out fraction (fashion_mnist keeps its own "
                                    "10,000 test images).",
                                    lower_bound=0.0, upper_bound=1.0)
_NUM_BITS = flags.DEFINE_integer(
    "num_bits", None, "Bits of integer data (dequantised, bits/dim reported); 0 for "
    "continuous data; unset: 5 for the digits, 8 for fashion_mnist, the fewest bits for "
    "a .npy of non-negative integers, else continuous.", lower_bound=0, upper_bound=16)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where train writes the model and sample writes samples "
    "(default runs/<preset>_<dataset>; sample: --model_dir).")
_MODEL_DIR = flags.DEFINE_string("model_dir", None,
                                 "A train --output_dir to load (default --output_dir).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "Where export writes (default <model_dir>/saved_model).")

_NUM_LAYERS = flags.DEFINE_integer(
    "num_layers", None, "nsf: spline layers; residual, ffjord, tarflow: blocks (default: "
    "the preset's).", lower_bound=1)
_HIDDEN_UNITS = flags.DEFINE_list("hidden_units", None,
                                  "nsf, residual, ffjord: hidden sizes, e.g. 128,128.")
_NUM_BINS = flags.DEFINE_integer("num_bins", None, "nsf: spline bins.", lower_bound=1)
_AUTOREGRESSIVE = flags.DEFINE_boolean("autoregressive", False,
                                       "nsf: autoregressive layers instead of couplings.")
_LIPSCHITZ = flags.DEFINE_float("lipschitz", None, "residual: spectral-norm coefficient.",
                                lower_bound=0.0, upper_bound=1.0)
_SOLVER = flags.DEFINE_enum("solver", None, ["dopri5", "rk4", "euler"],
                            "ffjord: ODE solver (default: the preset's dopri5).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "ffjord: steps of rk4 or euler.",
                                  lower_bound=1)
_TRACE = flags.DEFINE_enum("trace", None, ["hutchinson", "exact"],
                           "ffjord: training trace estimator.")
_NUM_SCALES = flags.DEFINE_integer("num_scales", 2, "glow: scales.", lower_bound=1)
_STEPS_PER_SCALE = flags.DEFINE_integer("steps_per_scale", 4, "glow: steps per scale.",
                                        lower_bound=1)
_HIDDEN_CHANNELS = flags.DEFINE_integer("hidden_channels", 64,
                                        "glow: width of the coupling networks; tarflow: "
                                        "width of the Transformer.",
                                        lower_bound=1)
_COUPLING = flags.DEFINE_enum("coupling", "affine", ["affine", "additive"],
                              "glow: coupling transformer.")
_LOGIT_ALPHA = flags.DEFINE_float("logit_alpha", 0.001,
                                  "glow: logit margin; 0 for linear pixel scaling.",
                                  lower_bound=0.0, upper_bound=0.49)

_EPOCHS = flags.DEFINE_integer("epochs", 60, "Training epochs.", lower_bound=1)
_STEPS_PER_EPOCH = flags.DEFINE_integer("steps_per_epoch", None,
                                        "Batches per epoch (default: the whole set).",
                                        lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 2e-3,
                                    "Peak Adam learning rate (cosine decay).",
                                    lower_bound=0.0)
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.0,
                                   "AdamW weight decay (0 for plain Adam).",
                                   lower_bound=0.0)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed (data, split, init, noise, samples).",
                             lower_bound=0, upper_bound=2**31 - 1)
_BACKUP_STEPS = flags.DEFINE_integer(
    "backup_steps", 100, "train: back up the training state to <output_dir>/backup "
    "every this many steps and at every epoch end.", lower_bound=1)
_RESUME = flags.DEFINE_boolean(
    "resume", True, "train: resume from the backup an interrupted run with the same "
    "settings left in <output_dir>/backup; --noresume deletes it and starts afresh.")
_JIT = flags.DEFINE_boolean("jit_compile", True, "Compile the train step with XLA.")
_RUN_EAGERLY = flags.DEFINE_boolean(
    "run_eagerly", False, "Train and evaluate eagerly, without tracing: for debugging, "
    "and faster for a few steps of a small model.")
_VERBOSE = flags.DEFINE_integer("verbose", 1,
                                "fit verbosity: 1 progress bar, 2 a line per epoch, 0 none.",
                                lower_bound=0, upper_bound=2)
_LOGDIR = flags.DEFINE_string("logdir", None, "TensorBoard log directory.")
_SUMMARY_BATCH = flags.DEFINE_integer(
    "summary_batch", 256, "Held-out rows for the per-layer log-det and invertibility "
    "summaries.", lower_bound=1)
_EXPORT_SAVED_MODEL = flags.DEFINE_boolean("export_saved_model", True,
                                           "train: also write <output_dir>/saved_model.")
_PLOT = flags.DEFINE_boolean("plot", True, "Write PNG plots (needs matplotlib).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "sample: how many.", lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0,
                                  "sample: base temperature (a positive number).")
_NUM_DRAWS = flags.DEFINE_integer("num_draws", 8,
                                  "Dequantisation draws for held-out bits/dim.",
                                  lower_bound=1)

flags.register_validator(
    "hidden_units", lambda units: units is None or (
        bool(units) and all(u.strip().isdigit() and int(u) > 0 for u in units)),
    message="--hidden_units must be positive integers separated by commas, e.g. 64,64.")
flags.register_validator("temperature", lambda t: t > 0,
                         message="--temperature must be positive.")


@dataclasses.dataclass(frozen=True)
class Config:
  """Every setting of one command-line invocation, one field per flag.

  The defaults live in the flag definitions only. `output_dir` and `model_dir` are
  the flags as given (None when unset); the properties `run_dir` and `load_dir`
  resolve their documented defaults.
  """
  preset: str
  dataset: str
  data_file: str | None
  data_dir: str | None
  num_points: int
  test_fraction: float
  num_bits: int | None
  output_dir: str | None
  model_dir: str | None
  export_dir: str | None
  architecture: presets.Options
  epochs: int
  steps_per_epoch: int | None
  batch_size: int
  learning_rate: float
  weight_decay: float
  seed: int
  backup_steps: int
  resume: bool
  jit_compile: bool
  run_eagerly: bool
  verbose: int
  logdir: str | None
  summary_batch: int
  export_saved_model: bool
  plot: bool
  num_samples: int
  temperature: float
  num_draws: int

  @property
  def run_dir(self):
    """Where train writes: --output_dir, else runs/<preset>_<dataset>."""
    return self.output_dir or os.path.join("runs", f"{self.preset}_{self.dataset}")

  @property
  def load_dir(self):
    """The trained run that sample, evaluate and export read: --model_dir, else run_dir."""
    return self.model_dir or self.run_dir


def from_flags():
  """The `Config` of the parsed absl flags (`absl.flags.FLAGS` must be parsed)."""
  return Config(
      preset=_PRESET.value, dataset=_DATASET.value, data_file=_DATA_FILE.value,
      data_dir=_DATA_DIR.value, num_points=_NUM_POINTS.value,
      test_fraction=_TEST_FRACTION.value,
      num_bits=_NUM_BITS.value, output_dir=_OUTPUT_DIR.value, model_dir=_MODEL_DIR.value,
      export_dir=_EXPORT_DIR.value,
      architecture=presets.Options(
          num_layers=_NUM_LAYERS.value,
          hidden_units=(None if _HIDDEN_UNITS.value is None
                        else tuple(int(u) for u in _HIDDEN_UNITS.value)),
          num_bins=_NUM_BINS.value, autoregressive=_AUTOREGRESSIVE.value,
          lipschitz=_LIPSCHITZ.value, num_scales=_NUM_SCALES.value,
          steps_per_scale=_STEPS_PER_SCALE.value, hidden_channels=_HIDDEN_CHANNELS.value,
          coupling=_COUPLING.value, logit_alpha=_LOGIT_ALPHA.value, solver=_SOLVER.value,
          num_steps=_NUM_STEPS.value, trace=_TRACE.value, seed=_SEED.value),
      epochs=_EPOCHS.value, steps_per_epoch=_STEPS_PER_EPOCH.value,
      batch_size=_BATCH_SIZE.value, learning_rate=_LEARNING_RATE.value,
      weight_decay=_WEIGHT_DECAY.value, seed=_SEED.value,
      backup_steps=_BACKUP_STEPS.value, resume=_RESUME.value, jit_compile=_JIT.value,
      run_eagerly=_RUN_EAGERLY.value, verbose=_VERBOSE.value, logdir=_LOGDIR.value,
      summary_batch=_SUMMARY_BATCH.value, export_saved_model=_EXPORT_SAVED_MODEL.value,
      plot=_PLOT.value, num_samples=_NUM_SAMPLES.value, temperature=_TEMPERATURE.value,
      num_draws=_NUM_DRAWS.value)
