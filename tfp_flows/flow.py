"""FlowModel: a Keras model that is a normalizing flow, trained by a pluggable objective."""

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import bijectors as bijectors_lib
from tfp_flows import callbacks as callbacks_lib
from tfp_flows import compiled_loop
from tfp_flows import distributions
from tfp_flows import fit_data
from tfp_flows import flow_inputs
from tfp_flows import objectives
from tfp_flows import step_guard
from tfp_flows.layers import flow_layer
from tfp_flows.numerics import probes

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

  Training (`fit`) minimises an objective (`tfp_flows.objectives`; maximum likelihood
  by default) plus any layer losses, and follows Keras' conventions: it logs `loss`
  (that sum, the value minimised) and `val_loss`, so stock callbacks (`EarlyStopping`,
  `ReduceLROnPlateau`, `ModelCheckpoint`) work with their defaults; `loss_max`, the
  largest step loss of the epoch (a spike the mean hides); and the objective's metrics,
  e.g. `nll` (nats per example) and, for image event shapes `[H, W, C]`,
  `bits_per_dim = nll / (H W C ln 2)`. A step whose loss or gradients are not finite
  (NaN or inf in the batch) is not applied, and `fit` stops with an error naming it.
  `fit(x, context)` trains a conditional flow: the second element of each batch is the
  context, not a target.

  Args:
    flow_layers: list of `tfp_flows.layers.FlowLayer`, data side first.
    event_shape: shape of one data point, e.g. `[2]` or `[8, 8, 1]`.
    base_distribution: a TFP distribution over the latent event shape; default a
      standard normal (`tfd.Sample(PhiloxNormal(0, 1), latent_shape)`, see
      `tfp_flows.distributions`). A custom base is not saved in the config; pass it
      again to `from_config` / `custom_objects`.
    context_shape: shape of one context row for conditional flows, else None.
    context_dtype: dtype of the context: None for the model's float dtype (float32, or
      float64 under a float64 dtype policy), or "int32" for class labels.
    objective: what `fit` minimises: a `tfp_flows.objectives.Objective`, or the name
      "maximum_likelihood", "flow_matching" (`objectives.FlowMatching`: regresses
      the vector field of a base-side continuous flow such as FFJORD on straight paths,
      without solving the ODE; `evaluate`/`log_prob` are still exact likelihoods) or
      "reverse_kl" with `target_log_prob` (variational inference, the same as
      `objectives.ReverseKL(target_log_prob)` with its defaults: `fit` without data,
      `steps_per_epoch=` steps an epoch). A name takes the objective's defaults; for
      other options (ReverseKL's `num_samples`, `constraining_bijector`, `seed`) pass
      the object.
    optimal_transport: with "flow_matching", pair each batch by entropic OT.
    target_log_prob: with "reverse_kl", the unnormalised log target
      `theta [N, *event_shape] -> [N]`. It is saved as part of the objective (see
      `objectives.ReverseKL.get_config`), not as an argument of its own.

  Layers may report per-call statistics (`statistic_names()`, `last_statistics`, e.g.
  FFJORD's "nfe", the vector-field evaluations of its solves); `fit` and `evaluate` log
  their sum over layers as metrics.
  """

  def __init__(self, flow_layers, event_shape, base_distribution=None, context_shape=None,
               context_dtype=None, objective="maximum_likelihood",
               optimal_transport=False, target_log_prob=None, **kwargs):
    super().__init__(**kwargs)
    policy = self.dtype_policy
    if policy.compute_dtype != policy.variable_dtype:
      raise ValueError(
          f"FlowModel does not support the mixed precision policy {policy.name!r}: a "
          "flow's log-density needs float32 or float64 throughout. Pass dtype='float32' "
          "to the FlowModel and to its flow layers (other models may keep "
          f"{policy.name!r}).")
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
    # The chain computes in its layers' dtype, not in a global (mixed) policy's.
    self.flow = flow_layer.FlowChain(flow_layers, name="flow",
                                     dtype=flow_layers[0].dtype_policy.name)
    self.flow.build((None, *event_shape))
    self.latent_shape = self.flow.bijector.inverse_event_shape(event_shape).as_list()
    self._custom_base = base_distribution is not None
    # The weights' dtype (float32 under mixed precision, float64 with floatx float64).
    base_dtype = np.dtype(self.dtype_policy.variable_dtype)
    self.base_distribution = base_distribution or distributions.standard_normal(
        self.latent_shape, base_dtype)
    self.statistic_names = tuple(sorted(
        {name for layer in flow_layers for name in _statistic_names(layer)}))
    self.objective = objectives.get(objective, optimal_transport=optimal_transport,
                                    target_log_prob=target_log_prob)
    self.objective.check(self)
    names = (self.objective.metric_names(self, training=True) +
             self.objective.metric_names(self, training=False))
    self._trackers = {name: keras.metrics.Mean(name=name) for name in dict.fromkeys(names)}
    self._loss_max_tracker = step_guard.Maximum(name="loss_max")
    self._step_guard = step_guard.StepGuard()
    for layer in self.flow._flatten_layers():  # pylint: disable=protected-access
      if hasattr(layer, "watch_steps"):
        layer.watch_steps(self._step_guard.clean)
    self._create_weights()
    # Every weight exists now. Keras callbacks (BackupAndRestore) refuse unbuilt models.
    self.built = True

  @property
  def flow_layers(self):
    return self.flow.flow_layers

  @property
  def is_image_model(self):
    return len(self.event_shape) == 3

  @property
  def has_custom_base(self):
    """Whether the base distribution was given (else the standard normal)."""
    return self._custom_base

  def layer_statistics(self):
    """The layers' statistics of their last call (e.g. FFJORD's "nfe"), summed by name."""
    totals = {}
    for layer in self.flow_layers:
      for name, value in getattr(layer, "last_statistics", {}).items():
        totals[name] = totals[name] + value if name in totals else value
    return totals

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
    """The context cast to `context_dtype`, checked (`flow_inputs.checked_context`)."""
    return flow_inputs.checked_context(context, self.context_shape, self.context_dtype,
                                       x, sample_shape)

  def call(self, inputs, context=None, training=None):
    """Log-density of `inputs`, `[*sample_shape, *event_shape]` -> `[*sample_shape]`.

    As in TFP any leading sample shape works (one point gives a scalar); the points
    walk the layers as one batch `[N, *event_shape]`, and so does the context.
    """
    x, context, output_shape = self.flat_batch(inputs, context)
    if x.shape[0] == 0:  # no points: nothing to walk (and some layers cannot walk none)
      return tf.zeros(output_shape, self.base_distribution.dtype)
    z, ildj = self.flow(x, context=context, training=training)
    return tf.reshape(self.base_distribution.log_prob(z) + ildj, output_shape)

  def flat_batch(self, x, context=None):
    """`(x, context, sample_shape)`: points and context checked, as one flat batch.

    `x` `[*sample_shape, *event_shape]` becomes `[N, *event_shape]` (integer pixels cast
    to the compute dtype) and the context `[N, *context_shape]`, after the checks of
    `flow_inputs` (shapes, one context row per point, none for an unconditional flow).
    `sample_shape` is a shape tensor, to restore per-point results.
    """
    x, sample_shape = flow_inputs.checked_points(tf.convert_to_tensor(x),
                                                 self.event_shape)
    context = self._check_context(context, x, sample_shape)
    if not x.dtype.is_floating:
      x = tf.cast(x, self.compute_dtype)
    output_shape = tf.shape(x)[:sample_shape.rank]
    x = tf.reshape(x, [-1, *self.event_shape])
    if context is not None:
      context = tf.reshape(context, [-1, *self.context_shape])
    return x, context, output_shape

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
    context, rows, total = self._sample_context(n, context, temperature)
    if not tf.is_tensor(total) and total == 0:  # no draws: nothing to map (and some layers cannot map none)
      return tf.zeros([n, *rows, *self.event_shape], self.base_distribution.dtype)
    z = self.base_distribution.sample(total, seed=probes.stateless_seed(seed)) * temperature
    bijector = self.bijector
    x = bijector.forward(z, **bijectors_lib.conditional_kwargs(bijector, context))
    x = self.flow.postprocess_sample(x)
    return tf.reshape(x, [n, *rows, *self.event_shape])

  def _sample_context(self, n, context, temperature):
    """`sample`'s arguments checked: `(context, rows, total)`.

    The context is repeated for `n` samples per row (`[n * m, *context_shape]`, or None),
    `rows` is the shape of its rows (`[m]`, or `[]` for one row or none) and `total` the
    number of base draws.
    """
    if temperature != 1.0 and self._custom_base:
      raise ValueError("temperature needs the default standard-normal base distribution.")
    if not temperature > 0:
      raise ValueError(f"temperature must be positive; got {temperature!r}.")
    if not tf.is_tensor(n) and (not isinstance(n, (int, np.integer)) or n < 0):
      raise ValueError(f"n must be a non-negative int; got {n!r}.")
    context = self._check_context(context)
    if context is None:
      return None, [], n
    rows = context.shape[:context.shape.rank - len(self.context_shape)].as_list()
    context = tf.reshape(context, [-1, *self.context_shape])
    num_rows = int(np.prod(rows)) if rows else 1
    context = tf.tile(context[tf.newaxis], [n] + [1] * context.shape.rank)
    return tf.reshape(context, [n * num_rows, *self.context_shape]), rows, n * num_rows

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
    finite = step_guard.all_finite([loss] + (list(gradients) if check_gradients else []))
    if not self.optimizer.built:  # as Keras does, but before the update becomes conditional
      self.optimizer.build(self.trainable_variables)
    # The host raises after the execution that held a non-finite step; the steps after
    # it in that execution (steps_per_execution > 1) are skipped too, so the weights
    # stay those before it, as the error says.
    step_guard.apply_if(finite & self._step_guard.clean(), self.optimizer, gradients,
                        variables)
    self._step_guard.record(finite)
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
    self._loss_tracker.update_state(loss, sample_weight=weight)
    for name, value in result.metrics.items():
      self._trackers[name].update_state(value, sample_weight=weight)
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
    if not self.objective.requires_data:
      if x is None:
        if steps is None:
          raise ValueError(f"{type(self.objective).__name__} draws its own samples: pass "
                           "steps= (the batches to evaluate) to evaluate.")
        x = self._placeholder_batches()
    else:
      fit_data.check_replica_shards(x, batch_size, {},
                                    self.distribute_strategy.num_replicas_in_sync)
    return super().evaluate(x, y, batch_size=batch_size, verbose=verbose, steps=steps,
                            **kwargs)

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

    Arrays (`x`, and a conditional flow's context as `y`) are batched and shuffled as
    Keras does, by a pipeline without tf.data's autotuning (`fit_data`), which on small
    machines can take compute threads from the training step.
    """
    fit_data.reject_example_weights(kwargs)
    if self.objective.requires_data:
      fit_data.check_replica_shards(x, batch_size, kwargs,
                                    self.distribute_strategy.num_replicas_in_sync)
    if "initial_epoch" not in kwargs:
      given = (callbacks.callbacks if isinstance(callbacks, keras.callbacks.CallbackList)
               else callbacks or ())
      backups = [c for c in given if isinstance(c, callbacks_lib.BackupAndRestore)]
      if backups:
        kwargs["initial_epoch"] = backups[0].initial_epoch
    if x is None and not self.objective.requires_data:
      if kwargs.get("steps_per_epoch") is None:
        raise ValueError(f"{type(self.objective).__name__} draws its own samples: pass "
                         "steps_per_epoch= (the steps of one epoch) to fit.")
      x = self._placeholder_batches()
      kwargs.setdefault("shuffle", False)
    elif fit_data.takes_arrays(x, y, kwargs):
      x = fit_data.array_dataset((x,) if y is None else (x, y), batch_size or 32,
                                 kwargs.get("shuffle", True))
      # Keras batches validation arrays by validation_batch_size or batch_size.
      kwargs.setdefault("validation_batch_size", batch_size)
      # The dataset shuffles itself; Keras would warn that it cannot.
      y, batch_size, kwargs["shuffle"] = None, None, False
    guard = step_guard.NonFiniteStop(self._step_guard)
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

  @property
  def metrics(self):
    # Keras' loss tracker exists once the model is compiled.
    loss = [self._loss_tracker] if self.compiled and self._loss_tracker is not None else []
    return [*loss, self._loss_max_tracker, *self._trackers.values()]

  def _seed_states(self):
    """The layers' `keras.random.SeedGenerator` states: the variables that are not weights."""
    weights = {id(v) for v in self.weights}
    return [v for v in self.variables if id(v) not in weights]

  def save_own_variables(self, store):
    """Keras' saving, plus the layers' random-generator states, which Keras leaves out.

    A model reloaded from `.keras` then trains on with the same random draws
    (dequantisation noise, Russian-roulette counts, Hutchinson probes) as the original.
    """
    super().save_own_variables(store)
    for i, state in enumerate(self._seed_states()):
      store[f"{_SEED_STATE}{i}"] = state

  def load_own_variables(self, store):
    names = [name for name in store.keys() if name.startswith(_SEED_STATE)]
    super().load_own_variables({name: store[name] for name in store.keys()
                                if name not in names})
    states = self._seed_states()
    if names and len(names) != len(states):
      raise ValueError(f"The saved model has {len(names)} random-generator states; this "
                       f"one has {len(states)}: it was saved from another architecture.")
    for i, state in enumerate(states if names else []):
      state.assign(store[f"{_SEED_STATE}{i}"])

  def get_config(self):
    return {"name": self.name,
            "flow_layers": [keras.saving.serialize_keras_object(l) for l in self.flow_layers],
            "event_shape": self.event_shape, "context_shape": self.context_shape,
            "context_dtype": self.context_dtype,
            "objective": keras.saving.serialize_keras_object(self.objective),
            "dtype": self.dtype_policy.name}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    config["flow_layers"] = [keras.saving.deserialize_keras_object(c, custom_objects)
                             for c in config["flow_layers"]]
    # Files saved before the model kept its dtype: the layers' is the model's, whatever
    # the loading process' floatx.
    config.setdefault("dtype", config["flow_layers"][0].dtype_policy.name)
    if isinstance(config.get("objective"), dict):  # a string in configs of version 0.1
      config["objective"] = keras.saving.deserialize_keras_object(
          config["objective"], custom_objects)
    return cls(**config)


# Key prefix of the random-generator states in the model's `.keras` variable store.
_SEED_STATE = "seed_generator_state_"


def _statistic_names(layer):
  names = getattr(layer, "statistic_names", None)
  return tuple(names()) if names else ()


def _is_multi_worker(strategy):
  """Whether `strategy` is a MultiWorkerMirroredStrategy over more than one task."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return False
  spec = strategy.cluster_resolver.cluster_spec()
  return sum(spec.num_tasks(job) for job in spec.jobs) > 1
