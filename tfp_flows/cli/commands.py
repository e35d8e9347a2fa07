"""`python -m tfp_flows sample|evaluate|export`: use a trained run directory."""

import os

from tfp_flows.cli import datasets
from tfp_flows.cli import outputs
from tfp_flows.cli import plots
from tfp_flows.cli import run_files
from tfp_flows.cli.errors import UsageError

__all__ = ["sample", "evaluate", "export"]


def sample(config):
  """Writes `config.num_samples` samples of the run in `config.load_dir` (npy, png)."""
  if config.plot:
    plots.require_matplotlib()
  model, run = run_files.load(config.load_dir)
  outputs.write_samples(model, run, config.output_dir or config.load_dir,
                        config.num_samples, seed=config.seed,
                        temperature=config.temperature, plot=config.plot)
  return 0


def evaluate(config):
  """Prints the held-out metrics of the run in `config.load_dir`.

  On the run's own held-out split, rebuilt from run.json, or on the rows of
  `config.data_file`.
  """
  model, run = run_files.load(config.load_dir)
  if config.data_file:
    x = datasets.load_file(config.data_file, run["num_bits"])
    what = config.data_file
  else:
    x = datasets.load(run["dataset"], data_file=run["data_file"],
                      num_points=run["num_points"], test_fraction=run["test_fraction"],
                      num_bits=run["num_bits"] or 0, seed=run["seed"],
                      data_dir=run.get("data_dir")).x_test
    what = f"the held-out split of {run['dataset']}"
  if list(x.shape[1:]) != list(run["row_shape"]):
    raise UsageError(f"{what} has rows of shape {list(x.shape[1:])}; the model takes "
                     f"{list(run['row_shape'])}.")
  print(f"Evaluating on {what}.")
  outputs.print_metrics(outputs.held_out_metrics(
      model, x.reshape(len(x), *run["event_shape"]), run["num_bits"],
      num_draws=config.num_draws, run_eagerly=config.run_eagerly))
  return 0


def export(config):
  """Writes the SavedModel of the run in `config.load_dir` to `config.export_dir`."""
  model, _ = run_files.load(config.load_dir)
  outputs.write_saved_model(
      model, config.export_dir or os.path.join(config.load_dir, "saved_model"))
  return 0
