"""FlowModel: a Keras model that is a normalizing flow, trained by maximum likelihood."""

import math

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows.bijectors import conditioning
from tfp_flows.layers import flow_layer

__all__ = ["FlowModel"]

tfb = tfp.bijectors
tfd = tfp.distributions


@keras.saving.register_keras_serializable(package="tfp_flows")
class FlowModel(keras.Model):
  """A base distribution pushed through flow layers: `tfd.TransformedDistribution` in Keras.

  ```python
  model = tff.FlowModel([tff.layers.AffineCoupling(), ...], event_shape=[2])
  model.compile(optimizer="adam")
  model.fit(x, epochs=10, batch_size=256)        # maximum likelihood, no targets
  model.log_prob(x); model.sample(100, seed=1)
  ```

  `flow_layers` are listed from the data side to the base side, the order of
  `tfb.Chain`: `model.bijector` is `tfb.Chain([layer.bijector ...])` (forward =
  base -> data) and `model.distribution` is `tfd.TransformedDistribution(base,
  model.bijector)`, so the trained flow composes with the rest of TFP.

  `log_prob` walks the layers data -> base (the same bijectors, so the same numbers as
  `model.distribution.log_prob` up to layer preprocessing such as dequantisation), which
  lets ActNorm initialise from the first training batch and dequantisation add noise in
  training. In evaluation `log_prob` is a deterministic, row-independent function of x.

  Training (`fit`) minimises the mean negative log-likelihood plus any layer losses and
  logs `nll` (nats per example) and, for image event shapes `[H, W, C]`,
  `bits_per_dim = nll / (H W C ln 2)`. `fit(x, context)` trains a conditional flow:
  the second element of each batch is the context, not a target.

  Args:
    flow_layers: list of `tfp_flows.layers.FlowLayer`, data side first.
    event_shape: shape of one data point, e.g. `[2]` or `[8, 8, 1]`.
    base_distribution: a TFP distribution over the latent event shape; default a
      standard normal (`tfd.Sample(tfd.Normal(0, 1), latent_shape)`). A custom base is
      not saved in the config; pass it again to `from_config` / `custom_objects`.
    context_shape: shape of one context row for conditional flows, else None.
    context_dtype: dtype of the context: None for the model's float dtype (float32, or
      float64 under a float64 dtype policy), or "int32" for class labels.
    objective: what `fit` minimises: "maximum_likelihood", or "flow_matching" for a flow
      whose base-side layer is a continuous flow with a `flow_matching_loss` (FFJORD):
      the layers before it run in training mode (ActNorm initialises, dequantisation
      adds noise) but are not trained by it (their output is a constant of the
      regression), and the last one regresses its vector field on straight paths from
      the standard-normal base, without solving the ODE; `fit` then logs
      `flow_matching_loss`, and `evaluate`/`log_prob` are still exact likelihoods.
    optimal_transport: with "flow_matching", pair each batch by entropic OT.

  Layers may report per-call statistics (`statistic_names()`, `last_statistics`, e.g.
  FFJORD's "nfe", the vector-field evaluations of its solves); `fit` and `evaluate` log
  their sum over layers as metrics.
  """

  def __init__(self, flow_layers, event_shape, base_distribution=None, context_shape=None,
               context_dtype=None, objective="maximum_likelihood",
               optimal_transport=False, **kwargs):
    super().__init__(**kwargs)
    flow_layers = list(flow_layers)
    if not flow_layers:
      raise ValueError("FlowModel needs at least one flow layer.")
    for layer in flow_layers:
      if not isinstance(layer, flow_layer.FlowLayer):
        raise TypeError(f"FlowModel takes tfp_flows flow layers; got {layer!r}.")
    event_shape = [int(d) for d in event_shape]
    if any(d < 1 for d in event_shape):
      raise ValueError(f"event_shape must be positive sizes; got {event_shape}.")
    self.event_shape = event_shape
    self.context_shape = None if context_shape is None else [int(d) for d in context_shape]
    self.context_dtype = tf.as_dtype(context_dtype or self.dtype_policy.variable_dtype).name
    self.flow = flow_layer.FlowChain(flow_layers, name="flow")
    self.flow.build((None, *event_shape))
    self.latent_shape = self.flow.bijector.inverse_event_shape(event_shape).as_list()
    self._custom_base = base_distribution is not None
    # The weights' dtype (float32 under mixed precision, float64 with floatx float64).
    base_dtype = np.dtype(self.dtype_policy.variable_dtype)
    self.base_distribution = base_distribution or tfd.Sample(
        tfd.Normal(base_dtype.type(0), base_dtype.type(1)), self.latent_shape)
    self._nll_tracker = keras.metrics.Mean(name="nll")
    self._bpd_tracker = keras.metrics.Mean(name="bits_per_dim")
    names = sorted({name for layer in flow_layers for name in _statistic_names(layer)})
    self._statistic_trackers = {name: keras.metrics.Mean(name=name) for name in names}
    self.objective = objective
    self.optimal_transport = bool(optimal_transport)
    self._check_objective()
    self._fm_tracker = keras.metrics.Mean(name="flow_matching_loss")
    self._loss_max_tracker = _Maximum(name="loss_max")
    self._step_guard = _StepGuard()
    self._create_weights()
    # Every weight exists now. Keras callbacks (BackupAndRestore) refuse unbuilt models.
    self.built = True

  def _check_objective(self):
    if self.objective not in _OBJECTIVES:
      raise ValueError(f"objective must be one of {_OBJECTIVES}; got {self.objective!r}.")
    if self.objective != "flow_matching":
      return
    last = self.flow_layers[-1]
    if not hasattr(last, "flow_matching_loss"):
      raise ValueError("objective='flow_matching' trains a continuous flow: the base-side "
                       f"(last) layer must be one, e.g. tff.layers.FFJORD; got {last.name!r}.")
    others = [l.name for l in self.flow_layers[:-1] if hasattr(l, "flow_matching_loss")]
    if others:
      raise ValueError("objective='flow_matching' trains one vector field; the flow has "
                       f"more continuous blocks ({others}): use a single block.")
    if self._custom_base or self.context_shape is not None:
      raise ValueError("objective='flow_matching' needs the default standard-normal base "
                       "and an unconditional flow.")

  @property
  def flow_layers(self):
    return self.flow.flow_layers

  @property
  def is_image_model(self):
    return len(self.event_shape) == 3

  def _create_weights(self):
    """Runs one evaluation pass so that every lazily built network has its weights."""
    x = tf.zeros([1, *self.event_shape])
    self.flow(x, context=self._dummy_context(1), training=False)

  def _dummy_context(self, n):
    if self.context_shape is None:
      return None
    return tf.zeros([n, *self.context_shape], self.context_dtype)

  def build(self, input_shape=None):
    self.built = True

  @property
  def bijector(self):
    """`tfb.Chain` of the layers' bijectors (forward: base -> data), from current weights."""
    return self.flow.bijector

  @property
  def distribution(self):
    """`tfd.TransformedDistribution(base_distribution, bijector)`.

    For a conditional flow pass the context as
    `bijector_kwargs=tfp_flows.bijectors.conditional_kwargs(model.bijector, context)`.
    """
    return tfd.TransformedDistribution(self.base_distribution, self.bijector)

  def _check_context(self, context, x=None, sample_shape=None):
    """The context cast to `context_dtype`, after checking its static shape.

    Its rows must have shape `context_shape`; with `x` (log_prob) there must be one row
    per point of x, `[*sample_shape, *context_shape]` (no broadcasting).
    """
    if self.context_shape is None:
      if context is not None:
        raise ValueError("This FlowModel has no context_shape, so it takes no context.")
      return None
    if context is None:
      raise ValueError(f"This FlowModel is conditional (context_shape="
                       f"{self.context_shape}): pass context=.")
    context = tf.convert_to_tensor(context)
    shape, size = context.shape, len(self.context_shape)
    if shape.rank is not None:
      if shape.rank < size or not shape[shape.rank - size:].is_compatible_with(
          self.context_shape):
        raise ValueError(f"context rows must have shape context_shape="
                         f"{self.context_shape}; got a context of shape {shape}.")
      if x is not None and not shape[:shape.rank - size].is_compatible_with(sample_shape):
        raise ValueError(f"log_prob takes one context row per row of x: a context of "
                         f"shape {sample_shape.as_list() + self.context_shape}; got "
                         f"{shape} for x of shape {x.shape}.")
    return tf.cast(context, self.context_dtype)

  def _sample_shape(self, x):
    """The leading (sample) shape of `x`, after checking that it ends in `event_shape`."""
    rank, size = x.shape.rank, len(self.event_shape)
    if rank is None or rank < size or not x.shape[rank - size:].is_compatible_with(
        self.event_shape):
      raise ValueError(f"log_prob takes points of event_shape {self.event_shape} after "
                       f"any sample shape, [..., {str(self.event_shape)[1:-1]}]; got x of "
                       f"shape {x.shape}.")
    return x.shape[:rank - size]

  def call(self, inputs, context=None, training=None):
    """Log-density of `inputs`, `[*sample_shape, *event_shape]` -> `[*sample_shape]`.

    As in TFP any leading sample shape works (one point gives a scalar); the points
    walk the layers as one batch `[N, *event_shape]`, and so does the context.
    """
    x = tf.convert_to_tensor(inputs)
    sample_shape = self._sample_shape(x)
    context = self._check_context(context, x, sample_shape)
    if not x.dtype.is_floating:
      x = tf.cast(x, self.compute_dtype)
    output_shape = tf.shape(x)[:sample_shape.rank]
    x = tf.reshape(x, [-1, *self.event_shape])
    if context is not None:
      context = tf.reshape(context, [-1, *self.context_shape])
    if x.shape[0] == 0:  # no points: nothing to walk (and some layers cannot walk none)
      return tf.zeros(output_shape, self.base_distribution.dtype)
    z, ildj = self.flow(x, context=context, training=training)
    return tf.reshape(self.base_distribution.log_prob(z) + ildj, output_shape)

  def log_prob(self, x, context=None):
    """Evaluation-mode log-density (nats) of each row of `x`; deterministic."""
    return self(x, context=context, training=False)

  def sample(self, n, seed=None, context=None, temperature=1.0):
    """Draws samples (forward, base -> data).

    Args:
      n: number of samples (per context row).
      seed: int or stateless seed; same seed, same samples. None draws fresh ones.
      context: for conditional flows, one context row (gives `[n, *event_shape]`) or
        `[m, *context_shape]` rows (gives `[n, m, *event_shape]`, a sample set per row).
      temperature: scales the standard-normal base (Glow's temperature); needs the
        default base.
    """
    if temperature != 1.0 and self._custom_base:
      raise ValueError("temperature needs the default standard-normal base distribution.")
    if not temperature > 0:
      raise ValueError(f"temperature must be positive; got {temperature!r}.")
    if not tf.is_tensor(n) and (not isinstance(n, (int, np.integer)) or n < 0):
      raise ValueError(f"n must be a non-negative int; got {n!r}.")
    context = self._check_context(context)
    rows = []
    if context is not None:
      rows = context.shape[:context.shape.rank - len(self.context_shape)].as_list()
      context = tf.reshape(context, [-1, *self.context_shape])
      num_rows = int(np.prod(rows)) if rows else 1
      context = tf.tile(context[tf.newaxis], [n] + [1] * context.shape.rank)
      context = tf.reshape(context, [n * num_rows, *self.context_shape])
      total = n * num_rows
    else:
      total = n
    if not tf.is_tensor(total) and total == 0:  # no draws: nothing to map (and some layers cannot map none)
      return tf.zeros([n, *rows, *self.event_shape], self.base_distribution.dtype)
    z = self.base_distribution.sample(total, seed=_stateless_seed(seed)) * temperature
    bijector = self.bijector
    x = bijector.forward(z, **conditioning.conditional_kwargs(bijector, context))
    x = self.flow.postprocess_sample(x)
    return tf.reshape(x, [n, *rows, *self.event_shape])

  def _loss_and_metrics(self, data, training):
    x, context = _unpack(data)
    log_prob = self(x, context=context, training=training)
    nll = -tf.reduce_mean(log_prob)
    # Weighted by batch size so that `evaluate` reports the per-example mean over the
    # whole dataset, also when the last batch is smaller.
    batch_size = tf.cast(tf.shape(log_prob)[0], nll.dtype)
    self._nll_tracker.update_state(nll, sample_weight=batch_size)
    if self.is_image_model:
      self._bpd_tracker.update_state(
          nll / (math.log(2.0) * math.prod(self.event_shape)), sample_weight=batch_size)
    self._update_statistics(batch_size)
    if self.losses:
      return nll + tf.add_n([tf.cast(l, nll.dtype) for l in self.losses])
    return nll

  def _update_statistics(self, batch_size):
    totals = {}
    for layer in self.flow_layers:
      for name, value in getattr(layer, "last_statistics", {}).items():
        totals[name] = totals[name] + value if name in totals else value
    for name, value in totals.items():
      self._statistic_trackers[name].update_state(value, sample_weight=batch_size)

  def _flow_matching_loss(self, data):
    x, _ = _unpack(data)
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
      x = tf.cast(x, self.compute_dtype)
    for layer in self.flow_layers[:-1]:
      x, _ = layer(x, training=True)
    # The layers before the field only transform the data (ActNorm initialises from it):
    # the regression must not train them, or shrinking the data would shrink the loss.
    x = tf.stop_gradient(x)
    loss = self.flow_layers[-1].flow_matching_loss(
        x, optimal_transport=self.optimal_transport)
    self._fm_tracker.update_state(loss, sample_weight=tf.cast(tf.shape(x)[0], loss.dtype))
    if self.losses:
      return loss + tf.add_n([tf.cast(l, loss.dtype) for l in self.losses])
    return loss

  def train_step(self, data):
    with tf.GradientTape() as tape:
      if self.objective == "flow_matching":
        loss = self._flow_matching_loss(data)
      else:
        loss = self._loss_and_metrics(data, training=True)
      self._track_loss(loss, data)
      # Gradients are summed over replicas, so each replica's loss is divided by their count.
      scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
    # Flow matching trains the field alone (see `_flow_matching_loss`).
    variables = (self.flow_layers[-1].trainable_variables
                 if self.objective == "flow_matching" else self.trainable_variables)
    gradients = tape.gradient(scaled, variables)
    # LossScaleOptimizer skips steps with overflowing (scaled) gradients by itself.
    check_gradients = not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
    finite = _all_finite([loss] + (list(gradients) if check_gradients else []))
    if not self.optimizer.built:  # as Keras does, but before the update becomes conditional
      self.optimizer.build(self.trainable_variables)
    _apply_if(finite, self.optimizer, gradients, variables)
    self._step_guard.record(finite)
    # The largest step loss of the epoch shows a spike that the epoch mean hides.
    self._loss_max_tracker.update_state(_global_mean(loss, tf.shape(_unpack(data)[0])[0]))
    results = {"loss_max": self._loss_max_tracker.result()}
    if self.objective == "flow_matching":
      results["flow_matching_loss"] = self._fm_tracker.result()
      return self._metric_results(results)
    return self._metric_results(results, likelihood=True)

  def test_step(self, data):
    self._track_loss(self._loss_and_metrics(data, training=False), data)
    return self._metric_results(likelihood=True)

  def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
          **kwargs):
    """`keras.Model.fit`, stopping with an error at a non-finite step (see `train_step`)."""
    guard = _NonFiniteStop(self._step_guard)
    if isinstance(callbacks, keras.callbacks.CallbackList):
      guard.set_model(self)
      callbacks.callbacks.insert(0, guard)
    else:
      callbacks = [guard, *(callbacks or [])]
    return super().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                       callbacks=callbacks, **kwargs)

  def train_on_batch(self, *args, **kwargs):
    """`keras.Model.train_on_batch`; raises like `fit` when the step was not finite."""
    self._step_guard.reset()
    logs = super().train_on_batch(*args, **kwargs)
    self._step_guard.raise_if_non_finite()
    return logs

  def _track_loss(self, loss, data):
    """Keras' own `loss` (and so `val_loss`), weighted by the batch's examples."""
    x, _ = _unpack(data)
    self._loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])

  def _metric_results(self, results=None, likelihood=False):
    results = {"loss": self._loss_tracker.result(), **(results or {})}
    if likelihood:
      results["nll"] = self._nll_tracker.result()
      if self.is_image_model:
        results["bits_per_dim"] = self._bpd_tracker.result()
      for name, tracker in self._statistic_trackers.items():
        results[name] = tracker.result()
    if _is_multi_worker(tf.distribute.get_strategy()):
      # Keras reduces the step logs across workers with strategy.reduce(MEAN, axis=0),
      # which rejects scalars (tensorflow/tensorflow#72388); epoch logs still come
      # from the metrics' own scalar results.
      results = {name: tf.reshape(value, [1]) for name, value in results.items()}
    return results

  @property
  def metrics(self):
    # Keras' loss tracker exists once the model is compiled.
    loss = [self._loss_tracker] if self.compiled and self._loss_tracker is not None else []
    return [*loss, self._loss_max_tracker, self._nll_tracker, self._bpd_tracker,
            self._fm_tracker, *self._statistic_trackers.values()]

  def get_config(self):
    return {"name": self.name,
            "flow_layers": [keras.saving.serialize_keras_object(l) for l in self.flow_layers],
            "event_shape": self.event_shape, "context_shape": self.context_shape,
            "context_dtype": self.context_dtype, "objective": self.objective,
            "optimal_transport": self.optimal_transport}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    config["flow_layers"] = [keras.saving.deserialize_keras_object(c, custom_objects)
                             for c in config["flow_layers"]]
    return cls(**config)


_OBJECTIVES = ("maximum_likelihood", "flow_matching")


def _statistic_names(layer):
  names = getattr(layer, "statistic_names", None)
  return tuple(names()) if names else ()


def _stateless_seed(seed):
  """A `[2]` stateless seed: TFP treats a Python int seed as stateful (not repeatable)."""
  if seed is None:
    return None
  if isinstance(seed, (int, np.integer)):
    seed = int(seed)
    if not 0 <= seed < 2**31:
      raise ValueError(f"seed must be an int in [0, 2**31) or a [2] tensor; got {seed}.")
    return tf.constant([0, seed], tf.int32)
  return seed


def _global_mean(value, weight):
  """The weighted mean of `value` over the replicas' batches: the global batch's value."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return value
  weight = tf.cast(weight, value.dtype)
  total, count = context.all_reduce(tf.distribute.ReduceOp.SUM, [value * weight, weight])
  return total / count


class _Maximum(keras.metrics.Metric):
  """The largest value since the last reset (Keras has no maximum metric).

  Under tf.distribute every replica updates it with the same (global) value, so the
  replicas' copies agree and their "mean" on read is that value.
  """

  def __init__(self, name, dtype=None):
    super().__init__(name=name, dtype=dtype)
    self.maximum = self.add_variable(shape=(), initializer=keras.initializers.Constant(
        -math.inf), aggregation="mean", name="maximum")

  def update_state(self, value):
    self.maximum.assign(tf.maximum(self.maximum, tf.cast(value, self.dtype)))

  def reset_state(self):
    self.maximum.assign(-math.inf)

  def result(self):
    return tf.convert_to_tensor(self.maximum)


def _all_finite(tensors):
  """Whether every tensor is finite on every replica (one all-reduce under tf.distribute).

  All replicas must agree: they either all apply a step (whose gradients are summed
  across them) or all skip it.
  """
  flags = [tf.reduce_all(tf.math.is_finite(
      t.values if isinstance(t, tf.IndexedSlices) else t)) for t in tensors if t is not None]
  finite = tf.reduce_all(tf.stack(flags))
  context = tf.distribute.get_replica_context()
  if context is not None and context.num_replicas_in_sync > 1:
    bad = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(~finite, tf.float32))
    finite = tf.equal(bad, 0.0)
  return finite


def _apply_if(finite, optimizer, gradients, variables):
  """`optimizer.apply(gradients, variables)` if `finite`, else nothing (no state changes).

  A `tf.cond`, so no host sync and XLA-compatible. Under strategies that use
  `merge_call` (MirroredStrategy on CPU) the optimizer's update calls `merge_call`,
  which a branch of a cond in replica context may not: the cond then runs in
  cross-replica context around the per-replica updates, as Keras' LossScaleOptimizer
  does.
  """
  def apply():
    optimizer.apply(gradients, variables)

  if tf.__internal__.distribute.strategy_supports_no_merge_call():
    tf.cond(finite, apply, lambda: None)
    return

  def cross_replica(strategy, finite, gradients):
    finite = strategy.experimental_local_results(finite)[0]
    tf.cond(finite, lambda: strategy.extended.call_for_each_replica(
        optimizer.apply, args=(gradients, variables)), lambda: None)

  tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, gradients))


class _StepGuard:
  """Counts training steps and records the first whose loss or gradients were not finite.

  Plain `tf.Variable`s in a holder Keras does not track: bookkeeping of one `fit`, not
  model state (not saved, not in `model.variables`). Written in the step, read by the
  host between steps.
  """

  def __init__(self):
    options = {"trainable": False, "synchronization": tf.VariableSynchronization.ON_WRITE,
               "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA}
    self.steps = tf.Variable(0, dtype=tf.int64, name="steps", **options)
    self.first_bad = tf.Variable(-1, dtype=tf.int64, name="first_non_finite", **options)

  def record(self, finite):
    self.first_bad.assign(tf.where(
        tf.logical_and(self.first_bad < 0, tf.logical_not(finite)), self.steps,
        self.first_bad))
    self.steps.assign_add(1)

  def reset(self):
    self.steps.assign(0)
    self.first_bad.assign(-1)

  def raise_if_non_finite(self, first_step_of_epoch=0, epoch=None):
    bad = int(self.first_bad.numpy())
    if bad < 0:
      return
    where = "" if epoch is None else (
        f" (epoch {epoch + 1}, batch {bad - first_step_of_epoch + 1})")
    raise FloatingPointError(
        f"non-finite loss or gradient at training step {bad + 1}{where}: check the data "
        "for NaN/inf. The step was not applied: the weights and optimizer state are "
        "those before it. If the data are finite the training diverged; lower the "
        "learning rate or clip the gradients.")


class _NonFiniteStop(keras.callbacks.Callback):
  """Ends `fit` with the `_StepGuard`'s error after a non-finite step (FlowModel.fit adds it)."""

  def __init__(self, guard):
    super().__init__()
    self.guard = guard
    self.epoch, self.first_step_of_epoch = 0, 0

  def on_train_begin(self, logs=None):
    self.guard.reset()

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch, self.first_step_of_epoch = epoch, int(self.guard.steps.numpy())

  def on_train_batch_end(self, batch, logs=None):
    self.guard.raise_if_non_finite(self.first_step_of_epoch, self.epoch)


def _is_multi_worker(strategy):
  """Whether `strategy` is a MultiWorkerMirroredStrategy over more than one task."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return False
  spec = strategy.cluster_resolver.cluster_spec()
  return sum(spec.num_tasks(job) for job in spec.jobs) > 1


def _unpack(data):
  """`x`, or `(x, context)` as Keras passes `fit(x, context)` batches."""
  if isinstance(data, (tuple, list)):
    if len(data) == 1:
      return data[0], None
    return data[0], data[1]
  return data, None
