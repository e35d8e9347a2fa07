"""FlowModel: a Keras model that is a normalizing flow, trained by a pluggable objective."""

import math
import warnings

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import bijectors as bijectors_lib
from tfp_flows import distributions
from tfp_flows import export as export_lib
from tfp_flows import flow_inputs
from tfp_flows import flow_training
from tfp_flows import objectives
from tfp_flows import step_guard
from tfp_flows.layers import flow_layer
from tfp_flows.numerics import probes

__all__ = ["FlowModel"]

tfb = tfp.bijectors
tfd = tfp.distributions


@keras.saving.register_keras_serializable(package="tfp_flows")
class FlowModel(flow_training.FlowTraining, keras.Model):
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
    base_distribution: a fixed TFP distribution over the latent event shape; default a
      standard normal (`tfd.Sample(PhiloxNormal(0, 1), latent_shape)`, see
      `tfp_flows.distributions`). `fit` does not train variables it holds, nor do
      `.keras` files save them (a warning says so): a learned Gaussian base is the
      flow layer `tfp_flows.layers.GaussianPrior`, placed last. A custom base is not saved in
      the config, which records only that there was one: load the model with
      `keras.models.load_model(path, custom_objects={"base_distribution": base})`
      (likewise `from_config` and `keras.models.clone_model` inside
      `keras.saving.custom_object_scope`); without it loading is an error.
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

  Raises:
    TypeError: for a flow layer that is not a `tfp_flows.layers.FlowLayer`.
    ValueError: for no flow layers, a non-positive event size, layers of another dtype
      than the model, a mixed precision policy, or an objective the flow cannot
      train by (see `tfp_flows.objectives`).
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
      if layer.dtype_policy.compute_dtype != policy.compute_dtype:
        raise ValueError(
            f"FlowModel {self.name!r} computes in {policy.compute_dtype}, but its flow "
            f"layer {layer.name!r} computes in {layer.dtype_policy.compute_dtype}: a "
            "flow's log-density needs one dtype throughout. Pass the same dtype= to the "
            "FlowModel and to every flow layer (or set it for all with "
            "keras.config.set_floatx).")
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
    if base_distribution is not None:
      _warn_of_base_variables(base_distribution)
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
    self._evaluating = False  # which trackers `metrics` lists (`FlowTraining.metrics`)
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
    # Row counts known only at run time (Keras' predict traces with a batch of None)
    # are read from the context's shape.
    rank = context.shape.rank - len(self.context_shape)
    rows = [size if size is not None else tf.shape(context)[axis]
            for axis, size in enumerate(context.shape[:rank].as_list())]
    context = tf.reshape(context, [-1, *self.context_shape])
    num_rows = math.prod(rows)  # a scalar tensor if a count is known only at run time
    context = tf.tile(context[tf.newaxis], [n] + [1] * context.shape.rank)
    return tf.reshape(context, [n * num_rows, *self.context_shape]), rows, n * num_rows

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
    store[_STRUCTURE] = self._structure()

  def load_own_variables(self, store):
    names = [name for name in store.keys() if name.startswith(_SEED_STATE)]
    if _STRUCTURE in store.keys():  # absent from files written before it was saved
      self._check_structure(np.asarray(store[_STRUCTURE]))
    super().load_own_variables({name: store[name] for name in store.keys()
                                if name not in names and name != _STRUCTURE})
    states = self._seed_states()
    if names and len(names) != len(states):
      raise ValueError(f"The saved model has {len(names)} random-generator states; this "
                       f"one has {len(states)}: it was saved from another architecture.")
    for i, state in enumerate(states if names else []):
      state.assign(store[f"{_SEED_STATE}{i}"])

  def _structure(self):
    """The flow's weight shapes, as integers for the variable store.

    `[number of weights, rank, *shape, rank, *shape, ...]`, the shapes sorted, so that
    the record does not depend on the order in which layers create their weights.
    Keras matches a weights file to a model by layer paths and ignores entries the
    model lacks, so weights saved from a flow with more layers, or other ones, would
    load into some of this flow's layers and give other densities without an error.
    """
    numbers = [len(self.weights)]
    for shape in sorted(tuple(weight.shape) for weight in self.weights):
      numbers += [len(shape), *shape]
    return np.array(numbers, np.int64)

  def _check_structure(self, saved):
    if not np.array_equal(saved, self._structure()):
      difference = (f"the file has {int(saved[0])} weights, this flow {len(self.weights)}"
                    if saved[0] != len(self.weights) else
                    "the file's weights have other shapes")
      raise ValueError(
          f"These weights were saved from a flow built differently from {self.name!r} "
          f"({difference}): loading them would give other densities. Build the model "
          "with the same preset arguments or layers as the one that saved them.")

  def load_weights(self, filepath, skip_mismatch=False, **kwargs):
    """`keras.Model.load_weights`, all or nothing.

    Keras reports a file that does not fit the model (`_check_structure`, or a weight of
    another shape) only after loading every layer that does fit; here the model's
    variables and the optimizer's are then restored before the error is raised, so a
    refused file leaves the model as it was. `skip_mismatch=True` asks for Keras' partial
    load: the layers that fit are loaded, the others kept, with Keras' warning.
    """
    optimizer = getattr(self, "optimizer", None)  # set by compile
    variables = [*self.variables, *getattr(optimizer, "variables", ())]
    values = [keras.ops.convert_to_numpy(v) for v in variables]
    try:
      return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
    except Exception:
      for variable, value in zip(variables, values):
        variable.assign(value)
      raise

  def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,  # pylint: disable=redefined-builtin
             **kwargs):
    """Keras' `Model.export`: the SavedModel of `tfp_flows.export.save`.

    Its signatures are the model's own (`log_prob`, also `serving_default`; `sample`,
    `sample_fresh`, `forward`, `inverse`), with their inputs checked in the graph.
    Keras' inferred signature would serve `call`'s log-density alone, without the
    checks, and it cannot infer one for a FlowModel anyway.

    Raises:
      ValueError: for another format than "tf_saved_model", or an `input_signature`
        or other option, which the model's fixed signatures leave no room for.
    """
    del verbose
    if format != "tf_saved_model":
      raise ValueError(f"A FlowModel exports as format='tf_saved_model' only (the "
                       f"SavedModel of tfp_flows.export.save); got format={format!r}.")
    given = sorted(kwargs) + ([] if input_signature is None else ["input_signature"])
    if given:
      raise ValueError("FlowModel.export takes no input_signature or other options: the "
                       "signatures are the model's own (see tfp_flows.export.save); got "
                       f"{given}.")
    export_lib.save(self, filepath)

  def get_config(self):
    return {"name": self.name,
            "flow_layers": [keras.saving.serialize_keras_object(l) for l in self.flow_layers],
            "event_shape": self.event_shape, "context_shape": self.context_shape,
            "context_dtype": self.context_dtype,
            "objective": keras.saving.serialize_keras_object(self.objective),
            "dtype": self.dtype_policy.name,
            # Only when set, so that configs with the standard base load in older versions.
            **({"custom_base": True} if self._custom_base else {})}

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    if config.pop("custom_base", False) and config.get("base_distribution") is None:
      base = keras.saving.get_registered_object("base_distribution", custom_objects)
      if base is None:
        raise ValueError(
            f"FlowModel {config.get('name')!r} has a custom base distribution, "
            "which its config cannot hold; a standard normal in its place would give "
            "other densities. Pass the base: keras.models.load_model(path, "
            "custom_objects={'base_distribution': base}), or call from_config / "
            "clone_model inside keras.saving.custom_object_scope({'base_distribution': "
            "base}).")
      config["base_distribution"] = base
    config["flow_layers"] = [keras.saving.deserialize_keras_object(c, custom_objects)
                             for c in config["flow_layers"]]
    # Files saved before the model kept its dtype: the layers' is the model's, whatever
    # the loading process' floatx.
    config.setdefault("dtype", config["flow_layers"][0].dtype_policy.name)
    if isinstance(config.get("objective"), dict):  # a string in configs of version 0.1
      config["objective"] = keras.saving.deserialize_keras_object(
          config["objective"], custom_objects)
    return cls(**config)


def _warn_of_base_variables(base_distribution):
  """Warns that `fit` leaves a base's trainable variables as they are.

  They are not Keras weights of the model, so `fit` does not train them and `.keras`
  files do not save them. That is what a base taken from a frozen, pretrained flow
  wants, and what a base meant to be learned does not; a `keras.Variable` given to a
  TFP distribution is moreover converted to a constant when the distribution is made.
  """
  names = [v.name for v in getattr(base_distribution, "trainable_variables", ())]
  names += [v.path for v in _keras_variables_in(base_distribution) if v.trainable]
  if names:
    warnings.warn(
        f"base_distribution holds trainable variables {names}, which are not weights of "
        "the FlowModel: fit leaves them as they are and .keras files do not save them. "
        "For a learned diagonal Gaussian base, add tfp_flows.layers.GaussianPrior() as "
        "the last flow layer; for a fixed base, build it from constants.", stacklevel=3)


def _keras_variables_in(distribution):
  """The Keras variables among the parameters of `distribution` and those nested in it."""
  found, pending, seen = [], [distribution], set()
  while pending:
    value = pending.pop()
    if id(value) in seen:
      continue
    seen.add(id(value))
    if isinstance(value, keras.Variable):
      found.append(value)
    elif isinstance(value, (list, tuple)):
      pending.extend(value)
    elif isinstance(value, dict):
      pending.extend(value.values())
    elif isinstance(value, (tfd.Distribution, tfb.Bijector)):
      pending.extend(value.parameters.values())
  return found


# Key prefix of the random-generator states in the model's `.keras` variable store.
_SEED_STATE = "seed_generator_state_"
# Key of the flow's structure (`FlowModel._structure`) in the same store.
_STRUCTURE = "flow_structure"


def _statistic_names(layer):
  names = getattr(layer, "statistic_names", None)
  return tuple(names()) if names else ()
