"""The command line's PNG plots: image grids of samples, 2-D densities next to data."""

import math

import numpy as np
import tensorflow as tf

from tfp_flows.cli.errors import UsageError

__all__ = ["require_matplotlib", "write_plot"]

_GRID_POINTS = 100  # per axis of a 2-D density heat map
_GRID_CHUNKS = 4  # log_prob batches over the grid


def write_plot(path, samples, model=None, data=None, image_shape=None, value_range=None):
  """Writes a PNG that shows `samples` (non-finite rows are left out).

  * With `image_shape`: a square grid of the samples as images (grey for one channel,
    RGB for three, else the first channel), pixel values mapped from `value_range`.
  * 2-D rows with a `model`: `data` (if given) as a 2-D histogram, the model's density
    `exp(log_prob)` on a grid over the data's range, and the samples.
  * Other rows: the first two coordinates of `data` and of the samples side by side
    (histograms for one-dimensional rows).

  Raises:
    UsageError: if matplotlib is not installed.
  """
  plt = _pyplot()
  samples = np.asarray(samples, dtype=np.float64)
  samples = samples[np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)]
  if image_shape is not None:
    fig = _image_grid(plt, samples.reshape(len(samples), *image_shape), value_range)
  elif samples.shape[1] == 2 and model is not None:
    fig = _density_2d(plt, model, samples, data)
  else:
    fig = _scatter(plt, samples, data)
  fig.savefig(path, dpi=80, bbox_inches="tight")
  plt.close(fig)


def require_matplotlib():
  """Imports matplotlib with its file-only backend, or says how to install it.

  Commands call this before their work, so that a missing matplotlib stops them at
  once rather than after training.

  Raises:
    UsageError: if matplotlib is not installed (an optional dependency).
  """
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UsageError("Writing PNG plots needs matplotlib, which is not installed: pip "
                     "install 'tfp_flows[cli]' (or pass --noplot).") from None
  matplotlib.use("Agg")


def _pyplot():
  require_matplotlib()
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _image_grid(plt, images, value_range):
  """One mosaic of the images, a pixel of background between them, in a single axes."""
  side = max(1, math.ceil(math.sqrt(len(images))))
  low, high = value_range or (float(images.min(initial=0.0)), float(images.max(initial=1.0)))
  images = np.clip((images - low) / max(high - low, 1e-12), 0.0, 1.0)
  if images.shape[-1] != 3:
    images = images[..., :1]
  height, width, channels = images.shape[1:]
  mosaic = np.zeros([side * (height + 1) + 1, side * (width + 1) + 1, channels])
  for index, image in enumerate(images):
    row, col = divmod(index, side)
    top, left = 1 + row * (height + 1), 1 + col * (width + 1)
    mosaic[top:top + height, left:left + width] = image
  fig, axis = plt.subplots(figsize=(side, side))
  if channels == 3:
    axis.imshow(mosaic)
  else:
    axis.imshow(mosaic[..., 0], cmap="gray_r", vmin=0.0, vmax=1.0)
  axis.axis("off")
  return fig


def _density_2d(plt, model, samples, data):
  reference = data if data is not None and len(data) else samples
  low, high = np.percentile(reference, [0.5, 99.5], axis=0)
  margin = 0.15 * (high - low) + 1e-3
  low, high = low - margin, high + margin
  axes_points = [np.linspace(low[i], high[i], _GRID_POINTS) for i in range(2)]
  grid = np.stack(np.meshgrid(*axes_points), axis=-1).reshape(-1, 2).astype("float32")
  # One trace for equal chunks: eager evaluation of, e.g., a residual flow's exact
  # Jacobian log-det is tens of times slower on a grid this size.
  log_prob_fn = tf.function(model.log_prob)
  log_prob = np.concatenate([np.asarray(log_prob_fn(chunk))
                             for chunk in grid.reshape(_GRID_CHUNKS, -1, 2)])
  density = np.where(np.isfinite(log_prob), np.exp(log_prob), 0.0)
  panels = [("data", data), ("model density", None), ("samples", samples)]
  panels = [p for p in panels if p[0] != "data" or data is not None]
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
  extent = [low[0], high[0], low[1], high[1]]
  for axis, (title, points) in zip(axes.flat, panels):
    if points is None:
      axis.imshow(density.reshape(_GRID_POINTS, _GRID_POINTS), origin="lower",
                  extent=extent, aspect="auto", cmap="viridis")
    else:
      bins = int(np.clip(np.sqrt(len(points)), 20, 100))
      axis.hist2d(points[:, 0], points[:, 1], bins=bins, range=[extent[:2], extent[2:]],
                  cmap="viridis")
    axis.set_title(title)
    axis.set_xticks([])
    axis.set_yticks([])
  return fig


def _scatter(plt, samples, data):
  panels = ([("data", data)] if data is not None else []) + [("samples", samples)]
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False,
                           sharex=True, sharey=True)
  for axis, (title, points) in zip(axes.flat, panels):
    points = points.reshape(len(points), -1)
    if points.shape[1] == 1:
      axis.hist(points[:, 0], bins=50)
      axis.set_title(title)
    else:
      axis.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
      axis.set_title(f"{title}: coordinates 1 and 2")
  return fig
