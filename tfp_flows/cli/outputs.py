"""What the commands print and write: held-out metrics, samples and their plot, SavedModels."""

import math
import os

import numpy as np
import tensorflow as tf

from tfp_flows import data
from tfp_flows import export
from tfp_flows.cli import plots

__all__ = ["held_out_metrics", "print_metrics", "write_samples", "write_saved_model"]

_BATCH = 512  # rows per log_prob call


def held_out_metrics(model, x, num_bits, num_draws, run_eagerly):
  """Mean NLL in nats per row; bits/dim for images and integer data.

  Args:
    model: a `FlowModel`.
    x: rows shaped like the model's events.
    num_bits: bits of integer data, or None for continuous data.
    num_draws: uniform dequantisation draws averaged for integer data's bits/dim
      (`data.dequantized_bits_per_dim`).
    run_eagerly: call `log_prob` eagerly instead of through one `tf.function`.

  Returns:
    A dict: "rows", "nll" and, for integer data and images, "bits_per_dim" and a
    "bits_note" saying how it was computed.
  """
  log_prob = (model.log_prob if run_eagerly
              else tf.function(model.log_prob, reduce_retracing=True))
  values = np.concatenate([np.asarray(log_prob(x[i:i + _BATCH]), dtype=np.float64)
                           for i in range(0, len(x), _BATCH)])
  metrics = {"rows": len(x), "nll": float(-values.mean())}
  if num_bits:
    metrics["bits_per_dim"] = data.dequantized_bits_per_dim(model, x, num_draws=num_draws)
    metrics["bits_note"] = f"{num_draws} dequantisation draws, {num_bits}-bit pixel space"
  elif model.is_image_model:
    metrics["bits_per_dim"] = metrics["nll"] / (math.log(2.0) * math.prod(model.event_shape))
    metrics["bits_note"] = "continuous density"
  return metrics


def print_metrics(metrics):
  print(f"held-out NLL: {metrics['nll']:.6f} nats/row over {metrics['rows']} rows "
        "(evaluation-mode log_prob)")
  if "bits_per_dim" in metrics:
    print(f"held-out bits/dim: {metrics['bits_per_dim']:.4f} ({metrics['bits_note']})")


def write_samples(model, run, output_dir, num, *, seed, temperature, plot, data_rows=None,
                  save_npy=True):
  """Draws `num` samples; writes samples.npy (if `save_npy`) and samples.png (if `plot`).

  Args:
    model: a `FlowModel`.
    run: the run's description (run.json): its "row_shape", "image_shape" and
      "value_range" shape the rows and the plot.
    output_dir: directory to write to (created if needed).
    num: number of samples.
    seed: sampling seed.
    temperature: base-distribution temperature.
    plot: write samples.png (`plots.write_plot`, next to `data_rows` if given).
    data_rows: data rows to show next to the samples, or None.
    save_npy: write samples.npy, the samples shaped like the data rows.
  """
  samples = np.asarray(model.sample(num, seed=seed, temperature=temperature))
  samples = samples.reshape(num, *run["row_shape"])
  bad = int((~np.isfinite(samples.reshape(num, -1)).all(axis=1)).sum())
  os.makedirs(output_dir, exist_ok=True)
  written = []
  if save_npy:
    written.append(os.path.join(output_dir, "samples.npy"))
    np.save(written[-1], samples)
  if plot:
    written.append(os.path.join(output_dir, "samples.png"))
    plots.write_plot(written[-1], samples, model=model, data=data_rows,
                     image_shape=run["image_shape"], value_range=run["value_range"])
  print(f"Drew {num} samples ({bad} non-finite); wrote {', '.join(written) or 'nothing'}.")


def write_saved_model(model, path):
  """Exports `model` with `tfp_flows.export.save` and says where."""
  export.save(model, path)
  print(f"Wrote the SavedModel {path} (its serving signatures are listed in "
        "tfp_flows.export.save's docstring).")
