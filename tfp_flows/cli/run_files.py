"""A trained run's directory: `model.keras` and `run.json`, written by train, read back."""

import json
import os

import keras

from tfp_flows.cli.errors import UsageError

__all__ = ["MODEL_FILE", "RUN_FILE", "write", "load"]

MODEL_FILE = "model.keras"
RUN_FILE = "run.json"
_RUN_KEYS = {"preset", "dataset", "data_file", "num_points", "test_fraction", "seed",
             "num_bits", "image_shape", "row_shape", "event_shape", "value_range"}


def write(run_dir, model, run):
  """Saves `model` as run_dir/model.keras and the dict `run` as run_dir/run.json."""
  os.makedirs(run_dir, exist_ok=True)
  model.save(os.path.join(run_dir, MODEL_FILE))
  with open(os.path.join(run_dir, RUN_FILE), "w", encoding="utf-8") as f:
    json.dump(run, f, indent=2)
  print(f"Wrote {os.path.join(run_dir, MODEL_FILE)} and {RUN_FILE}.")


def load(run_dir):
  """The model and the run description in `run_dir`.

  Returns:
    `(model, run)`: the uncompiled `FlowModel` and the dict of run.json.

  Raises:
    UsageError: if either file is missing or cannot be read.
  """
  model_file, run_file = (os.path.join(run_dir, f) for f in (MODEL_FILE, RUN_FILE))
  if not (os.path.isfile(model_file) and os.path.isfile(run_file)):
    raise UsageError(f"--model_dir={run_dir!r} holds no trained model ({MODEL_FILE} and "
                     f"{RUN_FILE}); train one with: python -m tfp_flows train "
                     f"--output_dir={run_dir}")
  try:
    with open(run_file, encoding="utf-8") as f:
      run = json.load(f)
    model = keras.saving.load_model(model_file, compile=False)
  except (OSError, ValueError) as e:
    raise UsageError(f"cannot load the model in {run_dir!r}: {e}") from None
  missing = sorted(_RUN_KEYS - set(run if isinstance(run, dict) else ()))
  if missing:
    raise UsageError(f"{run_file!r} lacks {', '.join(missing)}: write it again with "
                     f"python -m tfp_flows train --output_dir={run_dir}")
  return model, run
