"""In-memory arrays as the tf.data pipeline `FlowModel.fit` trains on.

Keras turns arrays given to `fit` into a tf.data pipeline whose parallelism and buffers
tf.data's autotuner sizes while training runs. On a small machine the autotuner's
choices can take compute threads from the training step: on 2 cores, whole epochs ran
on one core (CPU time / wall time 0.95 against 1.75), at 0.52x the steps/s of the
other epochs, for residual flows, NSF and Glow alike (benchmarks/RESULTS.md). Slicing
batches out of arrays already in memory needs no tuning, so the pipeline here is the
same computation as Keras' (a fresh permutation of the row indices every epoch, one
gather per batch) with autotuning off and a fixed prefetch of two batches.
"""

import numpy as np
import tensorflow as tf

__all__ = ["array_dataset", "takes_arrays", "without_autotuning"]

_KERAS_ONLY = ("steps_per_epoch",)


def takes_arrays(x, y, fit_kwargs):
  """Whether `fit(x, y, **fit_kwargs)` is arrays that `array_dataset` serves as Keras would.

  True for a NumPy array or tensor `x` (and `y`, a conditional flow's context, likewise
  or None) with `shuffle` True or False and none of the arguments that Keras' own array
  path handles (`validation_split`, `steps_per_epoch`; `FlowModel.fit` rejects per-example
  weights before).
  """
  arrays = (x,) if y is None else (x, y)
  if not all(isinstance(a, np.ndarray) or tf.is_tensor(a) for a in arrays):
    return False
  if any(isinstance(a, (tf.SparseTensor, tf.RaggedTensor)) for a in arrays):
    return False
  if any(fit_kwargs.get(name) is not None for name in _KERAS_ONLY):
    return False
  if fit_kwargs.get("validation_split"):
    return False
  return fit_kwargs.get("shuffle", True) in (True, False)


def array_dataset(arrays, batch_size, shuffle):
  """Batches of `arrays` (a tuple sliced together along the first axis), one epoch each.

  With `shuffle`, every iteration (epoch) draws a new uniform permutation of the rows,
  from TensorFlow's global seed when one is set (`keras.utils.set_random_seed`);
  otherwise the rows keep their order. The last batch has the remainder. The arrays
  ride along as one dataset element rather than graph constants, so their size is not
  bound by the 2 GB graph limit. Sharded by data under `tf.distribute`, as Keras does.

  Args:
    arrays: tuple of arrays or tensors with the same number of rows.
    batch_size: rows per batch (the global batch under a distribution strategy).
    shuffle: whether to permute the rows every epoch.

  Returns:
    A `tf.data.Dataset` of batches: tensors for one array, tuples for several (as
    Keras packs `x` alone and `(x, y)`; a one-element tuple would not reduce under a
    multi-worker strategy).

  Raises:
    ValueError: for a non-positive `batch_size` or arrays with different row counts.
  """
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
  arrays = tuple(tf.convert_to_tensor(a) for a in arrays)
  rows = {int(a.shape[0]) for a in arrays}
  if len(rows) != 1:
    raise ValueError("x and the context passed to fit must have the same number of rows; "
                     f"got {[int(a.shape[0]) for a in arrays]}.")
  num_rows = rows.pop()
  indices = tf.data.Dataset.range(num_rows)
  if shuffle:
    indices = indices.shuffle(num_rows, reshuffle_each_iteration=True)
  batches = tf.data.Dataset.zip(
      (indices.batch(batch_size), tf.data.Dataset.from_tensors(arrays).repeat()))
  dataset = batches.map(lambda index, data: _rows(data, index))
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return without_autotuning(dataset.prefetch(2).with_options(options))


def _rows(arrays, index):
  rows = tuple(tf.gather(a, index) for a in arrays)
  return rows[0] if len(rows) == 1 else rows


def without_autotuning(dataset):
  """`dataset` with tf.data's autotuning off, for in-memory pipelines (see the module)."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


def reject_example_weights(fit_kwargs):
  """Raises for Keras' per-example weights, which Keras would drop without `y`."""
  for name in ("sample_weight", "class_weight"):
    if fit_kwargs.get(name) is not None:
      raise ValueError(
          f"{name} is not supported: a FlowModel's objective weights every example "
          "alike. To weight examples, repeat or subsample their rows.")


def points_of(x):
  """The points of `fit`'s, `evaluate`'s or `predict`'s `x` (or of an `(x, context)` pair)
  when they are an array or a tensor, else None (datasets, generators)."""
  if isinstance(x, (tuple, list)) and x:
    x = x[0]
  return x if isinstance(x, np.ndarray) or tf.is_tensor(x) else None


def check_rows(x, event_shape, call, allow_empty=False):
  """`points_of(x)`, after raising for arrays that hold no rows of events: no row axis,
  or (unless `allow_empty`) none at all.

  Keras would fail on these deep in tf.data ("buffer_size must be greater than zero"),
  with a shape error of its iterator, or return nothing with a warning.
  """
  points = points_of(x)
  shape = None if points is None else tf.TensorShape(points.shape)
  if shape is None or shape.rank is None:
    return points
  shape, event = shape.as_list(), list(event_shape)
  if len(shape) < len(event) + 1:
    raise ValueError(
        f"{call} takes points of event_shape {event} along a first axis of rows, "
        f"[N, {str(event)[1:-1]}]; got x of shape {shape}.")
  if shape[0] == 0 and not allow_empty:
    raise ValueError(f"{call} got no rows to {'train on' if call == 'fit' else 'score'}: "
                     f"x has shape {shape}.")
  return points


def check_batched(x, event_shape, call):
  """Raises for a dataset whose elements are not dense batches of points.

  Single points (no `.batch()`): Keras passes them on as they are, so the flow would
  train on one point per step (and ActNorm initialise from one row) and ignore
  `batch_size`. Dicts and ragged or sparse batches fail inside Keras' loop with
  TypeErrors that do not say what a flow takes.
  """
  if not isinstance(x, tf.data.Dataset):
    return
  spec = x.element_spec
  if isinstance(spec, (tuple, list)) and spec:
    spec = spec[0]
  if not isinstance(spec, tf.TensorSpec):
    raise ValueError(
        f"{call} takes a dataset of dense batches x or (x, context) (x of shape "
        f"[N, *event_shape]); got elements {x.element_spec}. Map dicts to a tuple and "
        "ragged or sparse batches to dense ones first.")
  rank = spec.shape.rank
  if rank is not None and rank <= len(event_shape):
    raise ValueError(
        f"{call} got a dataset of single points (elements of shape "
        f"{spec.shape.as_list()}, event_shape {list(event_shape)}): batch it, e.g. "
        "dataset.batch(64). A FlowModel takes batches [N, *event_shape]; batch_size "
        "applies to arrays only.")


def check_replica_shards(x, batch_size, fit_kwargs, replicas, call="fit"):
  """Raises if arrays end in a batch too small to give every replica a row.

  A strategy splits each batch over its replicas; a replica given no rows computes the
  mean log-density of nothing (NaN), and some layers cannot walk an empty batch (a
  convolution on CPU fails). Checks `x` (or the points of an `(x, context)` pair) as
  `call` ("fit", "evaluate" or "predict") batches it: after Keras' `validation_split`,
  and the validation rows by `validation_batch_size` (default `batch_size`, default 32).
  """
  if replicas < 2:
    return
  x = points_of(x)
  size = batch_size or 32
  parts = {call: (x, size)}
  split = fit_kwargs.get("validation_split") or 0.0
  if _is_array(x) and split:
    cut = int(int(x.shape[0]) * (1.0 - split))  # Keras' split point
    parts = {call: (x[:cut], size), "validation_split": (x[cut:], size)}
  validation = fit_kwargs.get("validation_data")
  if isinstance(validation, (tuple, list)):
    validation = validation[0]
  parts["validation_data"] = (validation, fit_kwargs.get("validation_batch_size") or size)
  for what, (rows, size) in parts.items():
    if not _is_array(rows):
      continue
    last = int(rows.shape[0]) % int(size)
    if 0 < last < replicas:
      raise ValueError(
          f"{what}: {int(rows.shape[0])} rows in batches of {size} end in a batch of "
          f"{last} row(s), fewer than the {replicas} replicas, so a replica would get "
          "none. Pick a batch size whose last batch has a row per replica, or drop the "
          "last rows.")


def _is_array(x):
  return (isinstance(x, np.ndarray) or tf.is_tensor(x)) and len(x.shape) > 0
