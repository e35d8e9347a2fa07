"""A trained run's directory: `model.keras` and `run.json`, written by train, read back.

Reading checks both files and reports any damage as one `UsageError` naming the file:
a truncated or corrupted `model.keras` (Keras itself calls a truncated archive "File
not found"), a `model.keras` that holds no `tfp_flows.FlowModel`, and a `run.json` that
is not JSON, lacks a key, or holds a value of the wrong type or range.
"""

import json
import math
import numbers
import os
import zipfile

import keras

from tfp_flows import flow
from tfp_flows.cli import datasets
from tfp_flows.cli import presets
from tfp_flows.cli.errors import UsageError

__all__ = ["MODEL_FILE", "RUN_FILE", "write", "load"]

MODEL_FILE = "model.keras"
RUN_FILE = "run.json"


def _is_int(value, low=None):
  return (isinstance(value, int) and not isinstance(value, bool)
          and (low is None or value >= low))


def _is_shape(value, rank=None):
  return (isinstance(value, list) and len(value) >= 1 and (rank is None or len(value) == rank)
          and all(_is_int(d, 1) for d in value))


def _is_number(value):
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


# Each key of run.json: (is the value valid, what it must be). "data_dir" is optional:
# runs written before --dataset=fashion_mnist lack it.
_RUN_KEYS = {
    "preset": (lambda v: v in presets.PRESETS, f"one of {', '.join(presets.PRESETS)}"),
    "dataset": (lambda v: v in datasets.DATASETS, f"one of {', '.join(datasets.DATASETS)}"),
    "data_file": (lambda v: v is None or isinstance(v, str), "null or a path"),
    "num_points": (lambda v: _is_int(v, 2), "an integer >= 2"),
    "test_fraction": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "seed": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "num_bits": (lambda v: v is None or (_is_int(v, 1) and v <= 16),
                 "null or an integer in [1, 16]"),
    "image_shape": (lambda v: v is None or _is_shape(v, 3),
                    "null or [height, width, channels]"),
    "row_shape": (_is_shape, "a list of positive integers"),
    "event_shape": (_is_shape, "a list of positive integers"),
    "value_range": (lambda v: isinstance(v, list) and len(v) == 2
                    and all(_is_number(x) for x in v), "[low, high]"),
}
_OPTIONAL_KEYS = {"data_dir": (lambda v: v is None or isinstance(v, str), "null or a path")}


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
    UsageError: if either file is missing, damaged or malformed, or they disagree.
  """
  model_file, run_file = (os.path.join(run_dir, f) for f in (MODEL_FILE, RUN_FILE))
  again = f"train again with: python -m tfp_flows train --output_dir={run_dir}"
  if not (os.path.isfile(model_file) and os.path.isfile(run_file)):
    raise UsageError(f"--model_dir={run_dir!r} holds no trained model ({MODEL_FILE} and "
                     f"{RUN_FILE}); {again}")
  try:
    with open(run_file, encoding="utf-8") as f:
      run = json.load(f)
  except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError included
    raise UsageError(f"{run_file!r} is not readable JSON ({e}); {again}") from None
  model = _load_model(run_dir, model_file, again)
  if not isinstance(run, dict):
    raise UsageError(f"{run_file!r} holds {type(run).__name__}, not a JSON object; {again}")
  missing = sorted(set(_RUN_KEYS) - set(run))
  if missing:
    raise UsageError(f"{run_file!r} lacks {', '.join(missing)}: write it again with "
                     f"python -m tfp_flows train --output_dir={run_dir}")
  for key, (valid, expected) in {**_RUN_KEYS, **_OPTIONAL_KEYS}.items():
    if key in run and not valid(run[key]):
      raise UsageError(f"{run_file!r} has {key}={json.dumps(run[key])}, expected "
                       f"{expected}; {again}")
  if not isinstance(model, flow.FlowModel):
    raise UsageError(f"{model_file!r} holds a {type(model).__name__}, not a "
                     f"tfp_flows.FlowModel; {again}")
  if (list(model.event_shape) != run["event_shape"]
      or math.prod(run["row_shape"]) != math.prod(run["event_shape"])):
    raise UsageError(f"{run_file!r} describes rows of shape {run['row_shape']} and events "
                     f"of shape {run['event_shape']}, but {MODEL_FILE} models events of "
                     f"shape {list(model.event_shape)}; {again}")
  return model, run


def _load_model(run_dir, model_file, again):
  # Keras reports a truncated archive as "File not found"; say what is wrong instead.
  if not zipfile.is_zipfile(model_file):
    raise UsageError(f"cannot load the model in {run_dir!r}: {model_file!r} is damaged "
                     f"(not a complete .keras zip archive); {again}")
  try:
    return keras.saving.load_model(model_file, compile=False)
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    detail = " ".join(str(e).split())  # one line
    raise UsageError(f"cannot load the model in {run_dir!r}: {model_file!r} is damaged "
                     f"({type(e).__name__}: {detail}); {again}") from None
