"""Keras training of a `FlowModel`: its train and test steps, `fit` and `evaluate`.

`FlowTraining` is mixed into `FlowModel` ahead of `keras.Model`. It runs the model's
objective as Keras' train and test steps, applies a step only when its loss and
gradients are finite (`step_guard`), runs `steps_per_execution` steps as one XLA loop
(`compiled_loop`), batches arrays without tf.data's autotuning and checks them
(`fit_data`), and resumes from a `tfp_flows.callbacks.BackupAndRestore`.
"""

import contextlib
import warnings

import keras
import numpy as np
import tensorflow as tf

from tfp_flows import callbacks as callbacks_lib
from tfp_flows import compiled_loop
from tfp_flows import fit_data
from tfp_flows import flow_inputs
from tfp_flows import objectives
from tfp_flows import step_guard

__all__ = ["FlowTraining"]


class FlowTraining:
  """Keras' `fit`, `evaluate` and `train_on_batch` for a flow trained by its objective.

  The model provides `objective`, the metric trackers `_trackers` and
  `_loss_max_tracker`, and the step guard `_step_guard` (`FlowModel.__init__` makes
  them).
  """

  def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None,
              weighted_metrics=None, run_eagerly=False, steps_per_execution=1,
              jit_compile="auto", auto_scale_loss=True):
    """`keras.Model.compile` without targets: the flow trains on its objective.

    `loss`, `loss_weights`, `metrics` and `weighted_metrics` score predictions against
    targets `y`, which a flow does not have (`fit(x, context)` reads the second element
    as context); Keras would accept them and `fit` would never use them. They are an
    error here (empty ones are taken as none). The objective
    (`FlowModel(objective=...)`) sets the loss, and `fit` logs the objective's metrics
    itself (`nll` for maximum likelihood).
    """
    given = [name for name, value in (
        ("loss", loss), ("loss_weights", loss_weights), ("metrics", metrics),
        ("weighted_metrics", weighted_metrics)) if not _is_none_or_empty(value)]
    if given:
      raise ValueError(
          f"{type(self).__name__}.compile takes no {', '.join(given)}: a flow has no "
          "targets to score. It minimises its objective (FlowModel(objective=...), "
          "maximum likelihood by default), and fit logs 'loss' and the objective's "
          "metrics (e.g. 'nll') itself; for another quantity use a Keras callback. Pass "
          "only the optimizer and the loop's options (jit_compile, steps_per_execution, "
          "run_eagerly).")
    super().compile(optimizer=optimizer, run_eagerly=run_eagerly,
                    steps_per_execution=steps_per_execution, jit_compile=jit_compile,
                    auto_scale_loss=auto_scale_loss)

  def compile_from_config(self, config):
    """Compiles a model made from a config, as `keras.Model.compile_from_config` would.

    Keras skips this for models that override `compile`. A `.keras` file written by a
    version that accepted `compile(loss=...)` may name a loss or metrics, which never
    took part in training: they are dropped with a warning, before anything in them is
    deserialised (a custom metric need not be registered to load the file).
    """
    config = dict(config)
    dropped = [name for name in ("loss", "loss_weights", "metrics", "weighted_metrics")
               if not _is_none_or_empty(config.pop(name, None))]
    if dropped:
      warnings.warn(f"Compiling {type(self).__name__} {self.name!r} from its config, which "
                    f"names {', '.join(dropped)}: a flow does not use them; compiling "
                    "without.", stacklevel=2)
    self.compile(**keras.saving.deserialize_keras_object(config))
    if self.built:
      self.optimizer.build(self.trainable_variables)

  def train_step(self, data):
    """One step of the objective, applied only if its loss and gradients are finite.

    A non-finite step (NaN or inf in the batch, or a diverged loss) changes neither the
    weights nor the optimizer state, on every replica alike; `fit` then stops with an
    error naming the step (`step_guard`).
    """
    variables = self.objective.trainable_variables(self)
    with tf.GradientTape() as tape:
      result = self.objective.compute(self, data, training=True)
      loss = self._with_layer_losses(result.loss)
      # Gradients are summed over replicas, so each replica's loss is divided by their count.
      scaled = self.optimizer.scale_loss(
          loss / tf.distribute.get_strategy().num_replicas_in_sync)
    gradients = tape.gradient(scaled, variables)
    # LossScaleOptimizer skips steps with overflowing (scaled) gradients by itself.
    check_gradients = not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
    finite, empty = step_guard.all_finite(
        [loss] + (list(gradients) if check_gradients else []), result.num_examples)
    if not self.optimizer.built:  # as Keras does, but before the update becomes conditional
      self.optimizer.build(self.trainable_variables)
    # The host raises after the execution that held a non-finite step; the steps after
    # it in that execution (steps_per_execution > 1) are skipped too, so the weights
    # stay those before it, as the error says.
    step_guard.apply_if(finite & self._step_guard.clean(), self.optimizer, gradients,
                        variables)
    self._step_guard.record(finite, empty)
    # The largest step loss of the epoch shows a spike that the epoch mean hides.
    self._loss_max_tracker.update_state(step_guard.global_mean(loss, result.num_examples))
    return self._log(result, loss, {"loss_max": self._loss_max_tracker.result()})

  def test_step(self, data):
    result = self.objective.compute(self, data, training=False)
    return self._log(result, self._with_layer_losses(result.loss))

  def _with_layer_losses(self, loss):
    """The objective's loss plus the layers' Keras losses (regularisers) of this call."""
    if self.losses:
      return loss + tf.add_n([tf.cast(l, loss.dtype) for l in self.losses])
    return loss

  def _log(self, result, loss, extra=None):
    """Updates Keras' `loss` and the objective's metrics; returns the step's logs.

    Weighted by the batch's examples, so an epoch logs per-example means also when the
    last batch is smaller.
    """
    weight = tf.cast(result.num_examples, loss.dtype)
    # A batch without rows (a replica's empty shard) has NaN means; weight 0 alone would
    # still carry them into the epoch's mean as 0 * NaN.
    some = weight > 0
    self._loss_tracker.update_state(tf.where(some, loss, 0.0), sample_weight=weight)
    for name, value in result.metrics.items():
      self._trackers[name].update_state(tf.where(some, value, tf.zeros_like(value)),
                                        sample_weight=weight)
    logs = self._tracker_logs(result.metrics, extra)
    if _is_multi_worker(tf.distribute.get_strategy()):
      # Keras reduces the step logs across workers with strategy.reduce(MEAN, axis=0),
      # which rejects scalars (tensorflow/tensorflow#72388); epoch logs still come
      # from the metrics' own scalar results.
      logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs

  def _tracker_logs(self, names, extra=None):
    """The logs of a step: `loss`, `extra`, then the trackers of `names`, as results."""
    logs = {"loss": self._loss_tracker.result(), **(extra or {})}
    for name in names:
      logs[name] = self._trackers[name].result()
    return logs

  def make_train_function(self, force=False):
    """Keras' train function; with `jit_compile=True`, one XLA loop per execution.

    With `steps_per_execution=k > 1` on one replica, the k steps of an execution run
    as one `tf.while_loop` inside one XLA computation over the execution's k batches
    (`tfp_flows.compiled_loop`), instead of k compiled calls driven by Keras' graph
    loop, each paying a launch. Same steps, batches, seeds and logs; the logs are the
    metrics after the k-th step, and `on_train_batch_end` runs once per execution, as
    in Keras. Other cases are Keras' own function.
    """
    if self.train_function is not None and not force:
      return self.train_function
    super().make_train_function(force=True)
    if (self.run_eagerly or not self.jit_compile or self.steps_per_execution < 2
        or self.distribute_strategy.num_replicas_in_sync > 1):
      return self.train_function
    if not self.optimizer.built:  # its variables cannot be created inside the loop
      self.optimizer.build(self.trainable_variables)
    names = self.objective.metric_names(self, training=True)
    self.train_function = compiled_loop.make_train_function(
        self, self.train_function,
        lambda: self._tracker_logs(names, {"loss_max": self._loss_max_tracker.result()}),
        reads_batches=self.objective.requires_data)
    return self.train_function

  def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
               steps=None, **kwargs):
    """`keras.Model.evaluate`; like `fit`, it takes no `sample_weight`.

    An objective that draws its own samples takes no data: `evaluate(steps=...)`.
    """
    fit_data.reject_example_weights({"sample_weight": sample_weight})
    x, y = self._context_pair(x, y)
    if not self.objective.requires_data:
      if x is None:
        if steps is None:
          raise ValueError(f"{type(self.objective).__name__} draws its own samples: pass "
                           "steps= (the batches to evaluate) to evaluate.")
        x = self._placeholder_batches()
    else:
      fit_data.check_rows(x, self.event_shape, "evaluate")
      fit_data.check_batched(x, self.event_shape, "evaluate")
      fit_data.check_replica_shards(x, batch_size, {},
                                    self.distribute_strategy.num_replicas_in_sync,
                                    call="evaluate")
    self._evaluating = True
    try:
      with _floatx_of(self):
        return super().evaluate(x, y, batch_size=batch_size, verbose=verbose, steps=steps,
                                **kwargs)
    finally:
      self._evaluating = False

  def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
    """`keras.Model.predict`: the log-density of each row, arrays kept in the model's dtype.

    A conditional flow takes its context as `fit` does: `predict((x, context))`. Under
    a strategy, arrays whose last batch would leave a replica no rows are an error, as
    for `fit` and `evaluate`.
    """
    points = fit_data.check_rows(x, self.event_shape, "predict", allow_empty=True)
    if points is not None and points.shape[0] == 0:  # Keras' predict fails on no batches
      flow_inputs.checked_points(tf.convert_to_tensor(points), self.event_shape)
      sample_rank = len(points.shape) - len(self.event_shape)
      return np.zeros(list(points.shape)[:sample_rank], self.dtype)
    fit_data.check_batched(x, self.event_shape, "predict")
    fit_data.check_replica_shards(x, batch_size, {},
                                  self.distribute_strategy.num_replicas_in_sync,
                                  call="predict")
    with _floatx_of(self):
      return super().predict(x, batch_size=batch_size, verbose=verbose, steps=steps,
                             callbacks=callbacks)

  def predict_step(self, data):
    """Log-densities of a batch: `x`, or `(x, context)` as `fit` and `evaluate` read it."""
    # Keras hands over a dataset's (x, context) as (x, y), and arrays given as one
    # (x, context) structure as x.
    x, context, _ = keras.utils.unpack_x_y_sample_weight(data)
    if context is None and isinstance(x, (tuple, list)):
      x, context = objectives.unpack(x)
    return self(x, context=context, training=False)

  def _context_pair(self, x, y):
    """`(x, y)` with a conditional flow's `(x, context)` given as one `x` split into them.

    `predict` takes the pair that way (Keras passes it one argument); `fit` and
    `evaluate` take it so too, beside `fit(x, context)`.
    """
    if (y is None and self.context_shape is not None and isinstance(x, (tuple, list))
        and len(x) == 2):
      return tuple(x)
    return x, y

  def _placeholder_batches(self):
    """Batches for objectives that draw their own samples, which ignore them.

    One row per replica, as a distribution strategy splits each batch over replicas.
    """
    replicas = self.distribute_strategy.num_replicas_in_sync
    return fit_data.without_autotuning(tf.data.Dataset.from_tensors(
        tf.zeros([replicas, 1], self.compute_dtype)).repeat())

  def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
          **kwargs):
    """`keras.Model.fit`, stopping with an error at a non-finite step (see `train_step`).

    An objective that draws its own samples (`objectives.ReverseKL`) takes no data:
    `fit(epochs=..., steps_per_epoch=...)`. With a `tfp_flows.callbacks.BackupAndRestore`
    among the callbacks and no `initial_epoch`, the fit starts at the backup's epoch,
    so `fit(..., callbacks=[backup])` alone resumes an interrupted run.

    A conditional flow's context comes as `y` or with the points as `x=(x, context)`.
    Arrays are batched and shuffled as Keras does, by a pipeline without tf.data's
    autotuning (`fit_data`), which on small machines can take compute threads from the
    training step. Float arrays that Keras reads itself (validation data,
    `validation_split`, `steps_per_epoch`) are cast to the model's dtype, not to floatx
    (see `_floatx_of`).
    """
    fit_data.reject_example_weights(kwargs)
    x, y = self._context_pair(x, y)
    if self.objective.requires_data:
      fit_data.check_rows(x, self.event_shape, "fit")
      fit_data.check_batched(x, self.event_shape, "fit")
      fit_data.check_replica_shards(x, batch_size, kwargs,
                                    self.distribute_strategy.num_replicas_in_sync)
    validation = kwargs.get("validation_data")
    if validation is not None:  # checked now, not after the first epoch has trained
      fit_data.check_rows(validation, self.event_shape, "fit's validation_data")
      fit_data.check_batched(validation, self.event_shape, "fit's validation_data")
    given = (callbacks.callbacks if isinstance(callbacks, keras.callbacks.CallbackList)
             else callbacks or ())
    backups = [c for c in given if isinstance(c, callbacks_lib.BackupAndRestore)]
    if backups and "initial_epoch" not in kwargs:
      kwargs["initial_epoch"] = backups[0].initial_epoch
    if x is None and not self.objective.requires_data:
      if kwargs.get("steps_per_epoch") is None:
        raise ValueError(f"{type(self.objective).__name__} draws its own samples: pass "
                         "steps_per_epoch= (the steps of one epoch) to fit.")
      x = self._placeholder_batches()
      kwargs.setdefault("shuffle", False)
    elif fit_data.takes_arrays(x, y, kwargs):
      x, y, batch_size = _as_dataset(x, y, batch_size, kwargs)
    if backups and kwargs.get("steps_per_epoch") is not None:
      x, y, batch_size = self._as_one_stream(x, y, batch_size, kwargs, backups[0])
    guard = step_guard.NonFiniteStop(self._step_guard)
    if isinstance(callbacks, keras.callbacks.CallbackList):
      guard.set_model(self)
      callbacks.callbacks.insert(0, guard)
    else:
      callbacks = [guard, *(callbacks or [])]
    with _floatx_of(self):
      return super().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                         callbacks=callbacks, **kwargs)

  def _as_one_stream(self, x, y, batch_size, kwargs, backup):
    """`(x, y, batch_size)` as the endless stream Keras draws epochs of steps_per_epoch from.

    With `steps_per_epoch`, Keras' epochs continue one iterator, starting a new pass
    over finite data at the first epoch end after the pass ran out (and ending an epoch
    early when it runs out mid-epoch). When a pass holds a whole number of epochs, that
    is the batches of the data repeated endlessly, which `backup` can then resume
    exactly (`follow_stream`); arrays are batched here for that (`fit_data`), in the
    order Keras would batch them. Otherwise the resumed run may see other batches, and
    a warning says so.
    """
    steps_per_epoch = kwargs["steps_per_epoch"]
    per_epoch = -(-int(steps_per_epoch) // self.steps_per_execution) * self.steps_per_execution
    arrays = fit_data.takes_arrays(x, y, {**kwargs, "steps_per_epoch": None})
    if arrays:
      batches = -(-int(x.shape[0]) // (batch_size or 32))
    else:
      batches = int(x.cardinality()) if isinstance(x, tf.data.Dataset) else None
    if batches == tf.data.INFINITE_CARDINALITY:
      backup.follow_stream(per_epoch)
      return x, y, batch_size
    if batches is not None and batches > 0 and batches % per_epoch == 0:
      backup.follow_stream(per_epoch)
      if arrays:
        x, y, batch_size = _as_dataset(x, y, batch_size, kwargs)
      return x.repeat(), y, batch_size
    warnings.warn(
        f"fit with steps_per_epoch={steps_per_epoch} draws each epoch where the previous "
        "one stopped; BackupAndRestore resumes such a run exactly only when the data "
        "repeat endlessly or a pass over them holds a whole number of epochs (here "
        f"{batches if batches is not None and batches >= 0 else 'unknown'} batches per "
        f"pass, {per_epoch} per epoch): a resumed run may see other batches.",
        stacklevel=3)
    return x, y, batch_size

  def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                     return_dict=False):
    """`keras.Model.train_on_batch`; raises like `fit` for example weights and for a step
    that was not finite."""
    fit_data.reject_example_weights({"sample_weight": sample_weight,
                                     "class_weight": class_weight})
    x, y = self._context_pair(x, y)
    self._step_guard.reset()
    logs = super().train_on_batch(x, y, return_dict=return_dict)
    self._step_guard.raise_if_non_finite()
    return logs

  def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
    """`keras.Model.test_on_batch`, taking what `evaluate` takes."""
    fit_data.reject_example_weights({"sample_weight": sample_weight})
    x, y = self._context_pair(x, y)
    return super().test_on_batch(x, y, return_dict=return_dict)

  @property
  def metrics(self):
    """The trackers the running loop logs: `evaluate`'s while it runs, else training's.

    Keras returns a loop's results from these trackers (totals summed over replicas)
    only when they are exactly the ones its steps log; otherwise it returns the last
    step's logs, averaged over replicas without their rows as weights.
    """
    # Keras' loss tracker exists once the model is compiled.
    loss = [self._loss_tracker] if self.compiled and self._loss_tracker is not None else []
    training = not self._evaluating
    names = dict.fromkeys(self.objective.metric_names(self, training=training))
    return [*loss, *([self._loss_max_tracker] if training else []),
            *(self._trackers[name] for name in names)]


def _as_dataset(x, y, batch_size, fit_kwargs):
  """Arrays `x` (and context `y`) as `fit_data`'s batches: `(dataset, None, None)`.

  Updates `fit_kwargs` for Keras' loop over a dataset that batches and shuffles itself.
  """
  dataset = fit_data.array_dataset((x,) if y is None else (x, y), batch_size or 32,
                                   fit_kwargs.get("shuffle", True))
  # Keras batches validation arrays by validation_batch_size or batch_size.
  fit_kwargs.setdefault("validation_batch_size", batch_size)
  # The dataset shuffles itself; Keras would warn that it cannot.
  fit_kwargs["shuffle"] = False
  return dataset, None, None


def _is_none_or_empty(value):
  """Whether a compile argument names nothing: None, or an empty list, tuple or dict."""
  return value is None or (isinstance(value, (list, tuple, dict)) and not value)


@contextlib.contextmanager
def _floatx_of(model):
  """Keras' floatx set to `model`'s compute dtype for the duration of a Keras loop.

  Keras' array adapter casts float arrays to floatx when it slices them
  (`keras/src/trainers/data_adapters/array_slicing.py`), so a float64 model in a
  float32 process would train on, evaluate and score data rounded to float32. Layers
  take their dtype from Keras' global policy, which is fixed from floatx when first read
  and is read here first, so only what reads floatx itself (the adapter, ops given no
  dtype) sees the change.
  """
  floatx = keras.config.floatx()
  if model.compute_dtype == floatx:
    yield
    return
  keras.config.dtype_policy()
  keras.config.set_floatx(model.compute_dtype)
  try:
    yield
  finally:
    keras.config.set_floatx(floatx)


def _is_multi_worker(strategy):
  """Whether `strategy` is a MultiWorkerMirroredStrategy over more than one task."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return False
  spec = strategy.cluster_resolver.cluster_spec()
  return sum(spec.num_tasks(job) for job in spec.jobs) > 1
