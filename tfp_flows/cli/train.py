"""`python -m tfp_flows train`: fit a preset to a dataset and write the run directory."""

import math
import os
import time

import keras
import numpy as np

from tfp_flows import data
from tfp_flows import fit_data
from tfp_flows.cli import backup as backup_lib
from tfp_flows.cli import datasets
from tfp_flows.cli import diagnostics
from tfp_flows.cli import outputs
from tfp_flows.cli import plots
from tfp_flows.cli import presets
from tfp_flows.cli import run_files

__all__ = ["train"]

_PLOT_ROWS = 5000  # data rows drawn next to 2-D densities and scatter plots


def train(config):
  """Trains `config.preset` on `config.dataset` and writes `config.run_dir`.

  Writes model.keras and run.json (`run_files`), samples.png (unless `config.plot` is
  off) and the SavedModel saved_model/ (if `config.export_saved_model`); prints the
  held-out metrics, the independent-pixel baseline for integer data, the per-layer
  log-dets and the invertibility error. Training backs up to run_dir/backup and
  resumes from a backup an interrupted run left there (`tfp_flows.cli.backup`).

  Args:
    config: the command line's `tfp_flows.cli.config.Config`.

  Returns:
    The exit status, 0.

  Raises:
    UsageError: for data, presets or settings the user must change.
    Interrupted: on Ctrl-C during training, saying where the backup is.
  """
  if config.plot:
    plots.require_matplotlib()
  dataset = datasets.load(
      config.dataset, data_file=config.data_file, num_points=config.num_points,
      test_fraction=config.test_fraction, num_bits=config.num_bits, seed=config.seed,
      data_dir=config.data_dir)
  keras.utils.set_random_seed(config.seed)
  model, event_shape = presets.build(config.preset, config.architecture,
                                     dataset.row_shape, dataset.num_bits)
  x_train = dataset.x_train.reshape(len(dataset.x_train), *event_shape)
  x_test = dataset.x_test.reshape(len(dataset.x_test), *event_shape)
  steps = config.steps_per_epoch or math.ceil(len(x_train) / config.batch_size)
  _compile(model, config, steps)
  run_dir = config.run_dir
  backup = backup_lib.Backup(run_dir, config, total_steps=config.epochs * steps)
  backup.prepare()
  callbacks = backup.callbacks()
  if config.logdir:
    callbacks.append(diagnostics.FlowSummaries(config.logdir,
                                               x_test[:config.summary_batch]))
  print(f"Data {dataset.describe()}.")
  num_weights = sum(math.prod(w.shape) for w in model.trainable_weights)
  print(f"Training {config.preset} ({num_weights} trainable weights, event shape "
        f"{event_shape}) for {config.epochs} epochs of {steps} steps.")
  start = time.time()
  with backup.stop_on_ctrl_c():
    model.fit(**_training_data(x_train, config), epochs=config.epochs,
              steps_per_epoch=config.steps_per_epoch, verbose=config.verbose,
              initial_epoch=backup.initial_epoch, callbacks=callbacks)
  print(f"Training took {time.time() - start:.0f} s for {backup.steps_this_run} steps.")

  run = {"preset": config.preset, "dataset": dataset.name,
         "data_file": config.data_file and os.path.abspath(config.data_file),
         "data_dir": config.data_dir and os.path.abspath(config.data_dir),
         "num_points": config.num_points, "test_fraction": config.test_fraction,
         "seed": config.seed, "num_bits": dataset.num_bits,
         "image_shape": dataset.image_shape, "row_shape": dataset.row_shape,
         "event_shape": event_shape,
         "value_range": [float(dataset.x_train.min()), float(dataset.x_train.max())]}
  run_files.write(run_dir, model, run)
  backup.delete()
  _report(model, config, dataset, x_test)
  if config.plot:
    rows = dataset.x_train[np.random.default_rng(config.seed).permutation(
        len(dataset.x_train))[:_PLOT_ROWS]]
    outputs.write_samples(model, run, run_dir, 64 if dataset.image_shape else _PLOT_ROWS,
                          seed=config.seed, temperature=config.temperature, plot=True,
                          data_rows=rows, save_npy=False)
  if config.export_saved_model:
    outputs.write_saved_model(model, os.path.join(run_dir, "saved_model"))
  return 0


def _training_data(x, config):
  """`fit`'s data arguments: one shuffled pass per epoch, or a stream of batches.

  With `--steps_per_epoch`, Keras stops at the end of arrays ("ran out of data"), so
  an epoch longer than the data would run fewer steps than it announced. The data
  then comes as an endless stream of `fit`'s own array batches, reshuffled every pass
  (from the global seed `config.seed` set), and each epoch runs exactly
  `steps_per_epoch` batches, continuing where the last one stopped.
  """
  if config.steps_per_epoch is None:
    return {"x": x, "batch_size": config.batch_size, "shuffle": True}
  stream = fit_data.array_dataset((x,), config.batch_size, shuffle=True).repeat()
  return {"x": stream, "shuffle": False}  # shuffled by the stream itself


def _compile(model, config, steps_per_epoch):
  """Adam (AdamW with weight decay) under a cosine decay over the whole run."""
  schedule = keras.optimizers.schedules.CosineDecay(
      config.learning_rate, decay_steps=config.epochs * steps_per_epoch, alpha=0.05)
  optimizer = (keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
               if config.weight_decay else keras.optimizers.Adam(schedule))
  model.compile(optimizer=optimizer, jit_compile=config.jit_compile and not config.run_eagerly,
                run_eagerly=config.run_eagerly)


def _report(model, config, dataset, x_test):
  """Prints the held-out metrics, the pixel baseline and the flow diagnostics."""
  outputs.print_metrics(outputs.held_out_metrics(
      model, x_test, dataset.num_bits, num_draws=config.num_draws,
      run_eagerly=config.run_eagerly))
  if dataset.num_bits:
    baseline = data.independent_pixel_bits_per_dim(
        dataset.x_train, dataset.x_test, 2 ** dataset.num_bits)
    print(f"independent-pixel baseline: {baseline:.4f} bits/dim")
  log_dets, _, z = diagnostics.layer_log_dets(model, x_test[:config.summary_batch])
  print(f"max |inverse(forward(z)) - z| on {len(z)} held-out latents: "
        f"{diagnostics.invertibility_error(model, z):.3g}; per-layer mean log-det: "
        + ", ".join(f"{name} {value:.3f}" for name, value in log_dets))
