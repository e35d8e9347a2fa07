"""Command line: python -m tfp_flows {train,sample,evaluate,export} [--flags]

  train     fits --preset (glow, nsf, residual, ffjord) to --dataset (two_moons, ring,
            checkerboard, digits, digits_vectors, npy with --data_file) and writes
            --output_dir: model.keras, run.json, a PNG (image grid or 2-D density) and,
            unless --noexport_saved_model, the SavedModel saved_model/; prints held-out
            NLL. --logdir adds TensorBoard summaries (metrics, per-layer log-dets, an
            invertibility check).
  sample    loads --model_dir and writes --num_samples samples as samples.npy and
            samples.png.
  evaluate  prints the held-out NLL of --model_dir (nats per row; bits/dim for images
            and integer data), on the run's held-out split or on --data_file.
  export    writes --model_dir's SavedModel to --export_dir (tfp_flows.export.save).

With no command and no flags it trains Glow on scikit-learn's 8x8 digits, as before.
--model_dir defaults to --output_dir, which defaults to runs/<preset>_<dataset>.
User errors (bad flag values, missing model directory, malformed input file) print one
message to stderr and exit with status 2. --helpfull lists every flag.
"""

import json
import math
import os
import sys
import time

from absl import app
from absl import flags

from tfp_flows import cli_data
from tfp_flows import cli_presets
from tfp_flows.cli_errors import UsageError

_PRESET = flags.DEFINE_enum("preset", "glow", list(cli_presets.PRESETS), "Flow preset.")
_DATASET = flags.DEFINE_enum("dataset", "digits", list(cli_data.DATASETS),
                             "Training data; npy reads --data_file.")
_DATA_FILE = flags.DEFINE_string(
    "data_file", None, "A .npy array of vectors [N, D] or images [N, H, W, C]: the "
    "training data with --dataset=npy; with evaluate, rows to evaluate instead of the "
    "run's held-out split.")
_NUM_POINTS = flags.DEFINE_integer("num_points", 10000, "Points of a 2-D toy dataset.",
                                   lower_bound=2)
_TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.2, "Held-out fraction.",
                                    lower_bound=0.0, upper_bound=1.0)
_NUM_BITS = flags.DEFINE_integer(
    "num_bits", None, "Bits of integer data (dequantised, bits/dim reported); 0 for "
    "continuous data; unset: 5 for the digits, the fewest bits for a .npy of "
    "non-negative integers, else continuous.", lower_bound=0, upper_bound=16)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where train writes the model and sample writes samples "
    "(default runs/<preset>_<dataset>; sample: --model_dir).")
_MODEL_DIR = flags.DEFINE_string("model_dir", None,
                                 "A train --output_dir to load (default --output_dir).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None,
                                  "Where export writes (default <model_dir>/saved_model).")

_NUM_LAYERS = flags.DEFINE_integer(
    "num_layers", None, "nsf: spline layers; residual, ffjord: blocks (default: the "
    "preset's).", lower_bound=1)
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
                                        "glow: width of the coupling networks.",
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
_PLOT = flags.DEFINE_boolean("plot", True, "Write PNG plots.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "sample: how many.", lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "sample: base temperature.",
                                  lower_bound=0.0)
_NUM_DRAWS = flags.DEFINE_integer("num_draws", 8,
                                  "Dequantisation draws for held-out bits/dim.",
                                  lower_bound=1)

flags.register_validator(
    "hidden_units", lambda units: units is None or (
        bool(units) and all(u.strip().isdigit() and int(u) > 0 for u in units)),
    message="--hidden_units must be positive integers separated by commas, e.g. 64,64.")
flags.register_validator("temperature", lambda t: t > 0,
                         message="--temperature must be positive.")

_MODEL_FILE = "model.keras"
_RUN_FILE = "run.json"
_RUN_KEYS = {"preset", "dataset", "data_file", "num_points", "test_fraction", "seed",
             "num_bits", "image_shape", "row_shape", "event_shape", "value_range"}
_PLOT_ROWS = 5000  # data rows drawn next to 2-D densities and scatter plots


def _default_dir():
  return _OUTPUT_DIR.value or os.path.join("runs", f"{_PRESET.value}_{_DATASET.value}")


def _options():
  return cli_presets.Options(
      num_layers=_NUM_LAYERS.value,
      hidden_units=(None if _HIDDEN_UNITS.value is None
                    else tuple(int(u) for u in _HIDDEN_UNITS.value)),
      num_bins=_NUM_BINS.value, autoregressive=_AUTOREGRESSIVE.value,
      lipschitz=_LIPSCHITZ.value, num_scales=_NUM_SCALES.value,
      steps_per_scale=_STEPS_PER_SCALE.value, hidden_channels=_HIDDEN_CHANNELS.value,
      coupling=_COUPLING.value, logit_alpha=_LOGIT_ALPHA.value, solver=_SOLVER.value,
      num_steps=_NUM_STEPS.value, trace=_TRACE.value, seed=_SEED.value)


def _train():
  import keras  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from tfp_flows import cli_diagnostics  # pylint: disable=import-outside-toplevel
  from tfp_flows import data  # pylint: disable=import-outside-toplevel

  dataset = cli_data.load(
      _DATASET.value, data_file=_DATA_FILE.value, num_points=_NUM_POINTS.value,
      test_fraction=_TEST_FRACTION.value, num_bits=_NUM_BITS.value, seed=_SEED.value)
  keras.utils.set_random_seed(_SEED.value)
  model, event_shape = cli_presets.build(_PRESET.value, _options(), dataset.row_shape,
                                         dataset.num_bits)
  x_train = dataset.x_train.reshape(len(dataset.x_train), *event_shape)
  x_test = dataset.x_test.reshape(len(dataset.x_test), *event_shape)
  steps = _STEPS_PER_EPOCH.value or math.ceil(len(x_train) / _BATCH_SIZE.value)
  schedule = keras.optimizers.schedules.CosineDecay(
      _LEARNING_RATE.value, decay_steps=_EPOCHS.value * steps, alpha=0.05)
  optimizer = (keras.optimizers.AdamW(schedule, weight_decay=_WEIGHT_DECAY.value)
               if _WEIGHT_DECAY.value else keras.optimizers.Adam(schedule))
  model.compile(optimizer=optimizer, jit_compile=_JIT.value and not _RUN_EAGERLY.value,
                run_eagerly=_RUN_EAGERLY.value)
  callbacks = []
  if _LOGDIR.value:
    callbacks.append(cli_diagnostics.FlowSummaries(_LOGDIR.value,
                                                   x_test[:_SUMMARY_BATCH.value]))
  print(f"Data {dataset.describe()}.")
  num_weights = sum(math.prod(w.shape) for w in model.trainable_weights)
  print(f"Training {_PRESET.value} ({num_weights} trainable weights, event shape "
        f"{event_shape}) for {_EPOCHS.value} epochs of {steps} steps.")
  start = time.time()
  model.fit(x_train, epochs=_EPOCHS.value, batch_size=_BATCH_SIZE.value,
            steps_per_epoch=_STEPS_PER_EPOCH.value, verbose=_VERBOSE.value, shuffle=True,
            callbacks=callbacks)
  print(f"Training took {time.time() - start:.0f} s.")

  output_dir = _default_dir()
  os.makedirs(output_dir, exist_ok=True)
  model.save(os.path.join(output_dir, _MODEL_FILE))
  run = {"preset": _PRESET.value, "dataset": dataset.name,
         "data_file": _DATA_FILE.value and os.path.abspath(_DATA_FILE.value),
         "num_points": _NUM_POINTS.value, "test_fraction": _TEST_FRACTION.value,
         "seed": _SEED.value, "num_bits": dataset.num_bits,
         "image_shape": dataset.image_shape, "row_shape": dataset.row_shape,
         "event_shape": event_shape,
         "value_range": [float(dataset.x_train.min()), float(dataset.x_train.max())]}
  with open(os.path.join(output_dir, _RUN_FILE), "w", encoding="utf-8") as f:
    json.dump(run, f, indent=2)
  print(f"Wrote {os.path.join(output_dir, _MODEL_FILE)} and {_RUN_FILE}.")

  _print_metrics(_held_out_metrics(model, x_test, dataset.num_bits))
  if dataset.num_bits:
    baseline = data.independent_pixel_bits_per_dim(
        dataset.x_train, dataset.x_test, 2 ** dataset.num_bits)
    print(f"independent-pixel baseline: {baseline:.4f} bits/dim")
  log_dets, _, z = cli_diagnostics.layer_log_dets(model, x_test[:_SUMMARY_BATCH.value])
  print(f"max |inverse(forward(z)) - z| on {len(z)} held-out latents: "
        f"{cli_diagnostics.invertibility_error(model, z):.3g}; per-layer mean log-det: "
        + ", ".join(f"{name} {value:.3f}" for name, value in log_dets))
  if _PLOT.value:
    rows = dataset.x_train[np.random.default_rng(_SEED.value).permutation(
        len(dataset.x_train))[:_PLOT_ROWS]]
    num = 64 if dataset.image_shape else _PLOT_ROWS
    _write_samples(model, run, output_dir, num, data=rows, save_npy=False)
  if _EXPORT_SAVED_MODEL.value:
    _export(model, os.path.join(output_dir, "saved_model"))
  return 0


def _load_run():
  """The model and run.json in --model_dir."""
  import keras  # pylint: disable=import-outside-toplevel
  model_dir = _MODEL_DIR.value or _default_dir()
  model_file, run_file = (os.path.join(model_dir, f) for f in (_MODEL_FILE, _RUN_FILE))
  if not (os.path.isfile(model_file) and os.path.isfile(run_file)):
    raise UsageError(f"--model_dir={model_dir!r} holds no trained model ({_MODEL_FILE} and "
                     f"{_RUN_FILE}); train one with: python -m tfp_flows train "
                     f"--output_dir={model_dir}")
  try:
    with open(run_file, encoding="utf-8") as f:
      run = json.load(f)
    model = keras.saving.load_model(model_file, compile=False)
  except (OSError, ValueError) as e:
    raise UsageError(f"cannot load the model in {model_dir!r}: {e}") from None
  missing = sorted(_RUN_KEYS - set(run if isinstance(run, dict) else ()))
  if missing:
    raise UsageError(f"{run_file!r} lacks {', '.join(missing)}: write it again with "
                     f"python -m tfp_flows train --output_dir={model_dir}")
  return model_dir, model, run


def _sample():
  model_dir, model, run = _load_run()
  _write_samples(model, run, _OUTPUT_DIR.value or model_dir, _NUM_SAMPLES.value,
                 data=None, save_npy=True)
  return 0


def _evaluate():
  _, model, run = _load_run()
  if _DATA_FILE.value:
    x = cli_data.load_file(_DATA_FILE.value, run["num_bits"])
    what = _DATA_FILE.value
  else:
    x = cli_data.load(run["dataset"], data_file=run["data_file"],
                      num_points=run["num_points"], test_fraction=run["test_fraction"],
                      num_bits=run["num_bits"] or 0, seed=run["seed"]).x_test
    what = f"the held-out split of {run['dataset']}"
  if list(x.shape[1:]) != list(run["row_shape"]):
    raise UsageError(f"{what} has rows of shape {list(x.shape[1:])}; the model takes "
                     f"{list(run['row_shape'])}.")
  print(f"Evaluating on {what}.")
  _print_metrics(_held_out_metrics(model, x.reshape(len(x), *run["event_shape"]),
                                   run["num_bits"]))
  return 0


def _export_command():
  model_dir, model, _ = _load_run()
  _export(model, _EXPORT_DIR.value or os.path.join(model_dir, "saved_model"))
  return 0


def _export(model, path):
  from tfp_flows import export  # pylint: disable=import-outside-toplevel
  export.save(model, path)
  print(f"Wrote the SavedModel {path} (its serving signatures are listed in "
        "tfp_flows.export.save's docstring).")


def _held_out_metrics(model, x, num_bits):
  """Mean NLL in nats per row; bits/dim for images and integer data."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  from tfp_flows import data  # pylint: disable=import-outside-toplevel
  log_prob = (model.log_prob if _RUN_EAGERLY.value
              else tf.function(model.log_prob, reduce_retracing=True))
  batch = 512
  values = np.concatenate([np.asarray(log_prob(x[i:i + batch]), dtype=np.float64)
                           for i in range(0, len(x), batch)])
  metrics = {"rows": len(x), "nll": float(-values.mean())}
  if num_bits:
    metrics["bits_per_dim"] = data.dequantized_bits_per_dim(model, x,
                                                            num_draws=_NUM_DRAWS.value)
    metrics["bits_note"] = (f"{_NUM_DRAWS.value} dequantisation draws, {num_bits}-bit "
                            "pixel space")
  elif model.is_image_model:
    metrics["bits_per_dim"] = metrics["nll"] / (math.log(2.0) * math.prod(model.event_shape))
    metrics["bits_note"] = "continuous density"
  return metrics


def _print_metrics(metrics):
  print(f"held-out NLL: {metrics['nll']:.6f} nats/row over {metrics['rows']} rows "
        "(evaluation-mode log_prob)")
  if "bits_per_dim" in metrics:
    print(f"held-out bits/dim: {metrics['bits_per_dim']:.4f} ({metrics['bits_note']})")


def _write_samples(model, run, output_dir, num, data, save_npy):
  import numpy as np  # pylint: disable=import-outside-toplevel

  from tfp_flows import cli_plots  # pylint: disable=import-outside-toplevel
  samples = np.asarray(model.sample(num, seed=_SEED.value, temperature=_TEMPERATURE.value))
  samples = samples.reshape(num, *run["row_shape"])
  bad = int((~np.isfinite(samples.reshape(num, -1)).all(axis=1)).sum())
  os.makedirs(output_dir, exist_ok=True)
  written = []
  if save_npy:
    written.append(os.path.join(output_dir, "samples.npy"))
    np.save(written[-1], samples)
  if _PLOT.value:
    written.append(os.path.join(output_dir, "samples.png"))
    cli_plots.write_plot(written[-1], samples, model=model, data=data,
                         image_shape=run["image_shape"], value_range=run["value_range"])
  print(f"Drew {num} samples ({bad} non-finite); wrote {', '.join(written) or 'nothing'}.")


def main(argv):
  """Runs the command in `argv[1]` (flags already parsed); returns the exit status."""
  commands = {"train": _train, "sample": _sample, "evaluate": _evaluate,
              "export": _export_command}
  command = argv[1] if len(argv) > 1 else "train"
  if command not in commands or len(argv) > 2:
    print(f"usage: python -m tfp_flows {{{','.join(commands)}}} [--flags]; got "
          f"{' '.join(argv[1:])!r}. Run python -m tfp_flows --help for the flags.",
          file=sys.stderr)
    return 2
  try:
    return commands[command]()
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def run():
  app.run(main)


if __name__ == "__main__":
  run()
