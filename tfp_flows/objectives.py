"""What `FlowModel.fit` minimises: maximum likelihood, flow matching and reverse KL (VI).

An objective is a small stateless object that `FlowModel.train_step` and `test_step`
delegate to. It says

* `check(model)`: whether the model can be trained this way (a clear `ValueError` if not);
* `metric_names(model, training)`: the metrics it logs besides `loss`;
* `compute(model, data, training)`: the loss of one batch, the values of those metrics
  (means over the batch) and the number of examples they average over;
* `trainable_variables(model)`: what the optimizer updates.

The model adds its layers' Keras losses (regularisers) to `compute`'s loss, logs the sum
as `loss` with Keras' own loss tracker (so callbacks monitoring `loss` / `val_loss` work),
guards the update against non-finite values and aggregates over replicas; an objective
does none of that. `FlowModel(objective=...)` takes an objective object or the name of a
built-in one.
"""

import math
import typing

import keras
import tensorflow as tf

from tfp_flows.layers import _replica_seed
from tfp_flows.layers import dequantize as dequantize_lib
from tfp_flows.layers import residual_block as residual_block_lib

__all__ = ["Objective", "MaximumLikelihood", "FlowMatching", "ReverseKL", "Result", "get",
           "unpack", "EVALUATION_SEED"]

# The fixed stateless seed of evaluation-mode flow matching: `val_loss` is then a
# deterministic function of the validation data, as evaluation values are everywhere.
EVALUATION_SEED = (20221006, 0)


class Result(typing.NamedTuple):
  """What `Objective.compute` returns for one batch.

  Attributes:
    loss: scalar loss of the batch, without the layers' Keras losses.
    metrics: dict name -> scalar, each a mean over the batch's examples.
    num_examples: how many examples the batch holds (the metrics' weight, so an epoch
      logs per-example means also when the last batch is smaller).
  """
  loss: tf.Tensor
  metrics: dict
  num_examples: tf.Tensor


class Objective:
  """Base class: an objective `FlowModel.fit` minimises. Subclasses implement `compute`.

  `requires_data`: False for objectives that draw their own samples (`ReverseKL`);
  `FlowModel.fit` then runs `steps_per_epoch` steps without data.
  """

  requires_data = True

  def check(self, model):
    """Raises `ValueError` if `model` cannot be trained by this objective."""
    del model

  def metric_names(self, model, training):
    """Names of the metrics `compute` returns in training or evaluation mode."""
    raise NotImplementedError

  def compute(self, model, data, training):
    """`Result` of one batch `data` (`x` or `(x, context)`, as `fit` passes it)."""
    raise NotImplementedError

  def trainable_variables(self, model):
    """The variables the optimizer updates: by default all of the model's."""
    return model.trainable_variables

  def get_config(self):
    return {}

  @classmethod
  def from_config(cls, config):
    return cls(**config)


@keras.saving.register_keras_serializable(package="tfp_flows")
class MaximumLikelihood(Objective):
  """Maximum likelihood: the loss is the batch's mean negative log-likelihood.

  `loss = -mean_i log p(x_i | c_i)` in nats per example, with `log p` the model's
  training-mode log-density (ActNorm initialises from the batch, dequantisation adds
  noise, stochastic log-det and trace estimators draw). Logs `nll` (the same mean), for
  image event shapes `[H, W, C]` also `bits_per_dim = nll / (H W C ln 2)`, and the
  layers' statistics summed over layers (e.g. FFJORD's "nfe").
  """

  def metric_names(self, model, training):
    del training
    names = ("nll", "bits_per_dim") if model.is_image_model else ("nll",)
    return names + tuple(model.statistic_names)

  def compute(self, model, data, training):
    x, context = unpack(data)
    log_prob = model(x, context=context, training=training)
    nll = -tf.reduce_mean(log_prob)
    metrics = {"nll": nll}
    if model.is_image_model:
      metrics["bits_per_dim"] = nll / (math.log(2.0) * math.prod(model.event_shape))
    metrics.update(model.layer_statistics())
    return Result(nll, metrics, tf.size(log_prob))


@keras.saving.register_keras_serializable(package="tfp_flows")
class FlowMatching(Objective):
  """Conditional flow matching of the model's base-side continuous flow (FFJORD).

  The layers before the last one run on the batch (in training mode, so ActNorm
  initialises and dequantisation adds noise) but are not trained: their output `y` is a
  constant of the regression (shrinking it would shrink the loss). The last layer's
  vector field regresses on straight paths from the standard-normal base to `y`,
  `loss = mean |f(t, (1 - t/T) z + (t/T) y) - (y - z)/T|^2` with `z ~ N(0, I)` and
  `t ~ U(0, T)` (Lipman et al. 2022, arXiv:2210.02747), without solving the ODE. Logs
  `flow_matching_loss` (the same value). In evaluation (`evaluate`, validation) the
  loss uses a fixed seed, so `val_loss` is repeatable, and the exact likelihood
  metrics of `MaximumLikelihood` (`nll`, ...) are logged as well: the trained field is
  a density like any other.

  Args:
    optimal_transport: pair each batch with its base points by entropic optimal
      transport (Tong et al. 2023, arXiv:2302.00482), which straightens the paths.
  """

  def __init__(self, optimal_transport=False):
    self.optimal_transport = bool(optimal_transport)

  def check(self, model):
    last = model.flow_layers[-1]
    if not hasattr(last, "flow_matching_loss"):
      raise ValueError("objective='flow_matching' trains a continuous flow: the base-side "
                       f"(last) layer must be one, e.g. tff.layers.FFJORD; got {last.name!r}.")
    others = [l.name for l in model.flow_layers[:-1] if hasattr(l, "flow_matching_loss")]
    if others:
      raise ValueError("objective='flow_matching' trains one vector field; the flow has "
                       f"more continuous blocks ({others}): use a single block.")
    if model.has_custom_base or model.context_shape is not None:
      raise ValueError("objective='flow_matching' needs the default standard-normal base "
                       "and an unconditional flow.")

  def metric_names(self, model, training):
    if training:
      return ("flow_matching_loss",)
    return ("flow_matching_loss",) + MaximumLikelihood().metric_names(model, training)

  def compute(self, model, data, training):
    # The flow is unconditional (`check`): a context is an error, not dropped.
    x, _, _ = model.flat_batch(*unpack(data))
    for layer in model.flow_layers[:-1]:
      x, _ = layer(x, training=training)
    seed = None if training else tf.constant(EVALUATION_SEED, tf.int32)
    loss = model.flow_layers[-1].flow_matching_loss(
        tf.stop_gradient(x), seed=seed, optimal_transport=self.optimal_transport)
    metrics = {"flow_matching_loss": loss}
    if not training:
      metrics.update(MaximumLikelihood().compute(model, data, training=False).metrics)
    return Result(loss, metrics, tf.shape(x)[0])

  def trainable_variables(self, model):
    return model.flow_layers[-1].trainable_variables

  def get_config(self):
    return {"optimal_transport": self.optimal_transport}


@keras.saving.register_keras_serializable(package="tfp_flows")
class ReverseKL(Objective):
  """Variational inference: the reverse KL to an unnormalised target (negative ELBO).

  The flow q is fitted to a target known up to its normaliser Z, `p~(theta) = Z p(theta)`,
  by minimising over reparameterised samples `x = f(z)`, `z ~ base`, `theta = c(x)`:

  ```none
  log q(x) = log base(z) - log|det df/dz|
  log w(x) = log p~(c(x)) + log|det dc/dx| - log q(x)
  loss     = -mean_i log w(x_i)  ~=  KL(q || p) - log Z   (the negative ELBO)
  ```

  `c` is an optional stock constraining bijector (e.g. `tfb.Exp()` for scales, or a
  `tfb.Blockwise` of them over the parameter vector): the flow lives on unconstrained
  R^D and `target_log_prob` is the target's log-density over the constrained values, as
  a TFP JointDistribution's `unnormalized_log_prob` is. Logs `elbo = mean log w`, the
  importance-sampling `ess_fraction = (sum w)^2 / (N sum w^2)` (1 when q = p; a small
  value means q misses mass of p, see `tfp_flows.inference.importance_weights` for the
  PSIS k-hat) and `log_normalizer = log mean w`, an estimate of log Z (biased low for
  small ESS). `log q` comes from the sampling pass itself (forward and its log-det),
  never the inverse, so inverse-autoregressive flows cost one network pass.

  Families: sampling must be differentiable. Couplings (affine, additive, spline),
  inverse-autoregressive flows (`inverse_autoregressive=True`: one pass), masked
  autoregressive flows (D passes: correct but slow), ActNorm, 1x1 convolutions,
  permutations, Gaussian priors and FFJORD (gradients by the adjoint) are supported.
  Residual blocks sample by a fixed-point iteration that has no gradient here (implicit
  differentiation is not implemented) and dequantization is for discrete data: both
  are a `ValueError`. Conditional flows are not supported.

  `FlowModel(..., objective="reverse_kl", target_log_prob=fn)` is this objective with its
  default options; pass the object for others.

  `fit(epochs=..., steps_per_epoch=...)` takes no data. Training samples use stateless
  seeds drawn from a `keras.random.SeedGenerator(seed)` with the replica folded in (so
  replicas draw independent samples and a run is reproducible, also under XLA);
  evaluation uses `EVALUATION_SEED`.

  Args:
    target_log_prob: callable `theta [N, *event_shape] -> [N]`, the unnormalised log
      target over the constrained values.
    num_samples: samples per step (per replica).
    constraining_bijector: optional TFP bijector `c` from the flow's space to the
      target's, acting on one event of the flow.
    seed: int, the seed of the sampling seeds' generator.

  References: Rezende & Mohamed, Variational Inference with Normalizing Flows,
  arXiv:1505.05770; Kingma et al., IAF, arXiv:1606.04934.
  """

  requires_data = False

  def __init__(self, target_log_prob, num_samples=64, constraining_bijector=None, seed=0):
    if not callable(target_log_prob):
      raise ValueError("target_log_prob must be a callable theta -> log p~(theta); got "
                       f"{target_log_prob!r}.")
    if int(num_samples) < 2:
      raise ValueError(f"num_samples must be at least 2; got {num_samples!r}.")
    self.target_log_prob = target_log_prob
    self.num_samples = int(num_samples)
    self.constraining_bijector = constraining_bijector
    self.seed = int(seed)

  def check(self, model):
    if model.context_shape is not None:
      raise ValueError("ReverseKL fits an unconditional flow; this FlowModel has "
                       f"context_shape={model.context_shape}.")
    for layer in _all_layers(model.flow_layers):
      if isinstance(layer, residual_block_lib.ResidualBlock):
        raise ValueError(
            "ReverseKL needs differentiable sampling, and a ResidualBlock samples by a "
            "fixed-point iteration without a gradient (no implicit differentiation): "
            "use couplings, inverse-autoregressive layers or FFJORD for VI.")
      if isinstance(layer, dequantize_lib.Dequantize):
        raise ValueError("ReverseKL fits a continuous target: remove the Dequantize layer "
                         "(it is for discrete data).")
    # The sampling seeds' state, created here because FlowModel calls `check` in its
    # constructor: inside the user's distribution-strategy scope, before any tracing.
    self._seed_generator = keras.random.SeedGenerator(self.seed)

  def metric_names(self, model, training):
    del model, training
    return ("elbo", "ess_fraction", "log_normalizer")

  def _seed(self, training):
    if not training:
      return tf.constant(EVALUATION_SEED, tf.int32)
    return _replica_seed.draw_replica_seed(self._seed_generator)

  def log_weights(self, model, seed):
    """`(theta, log w)` of `num_samples` reparameterised draws with stateless `seed`."""
    base, bijector = model.base_distribution, model.bijector
    z = base.sample(self.num_samples, seed=seed)
    x = bijector.forward(z)
    log_q = base.log_prob(z) - bijector.forward_log_det_jacobian(
        z, event_ndims=len(model.latent_shape))
    theta = x
    if self.constraining_bijector is not None:
      theta = self.constraining_bijector.forward(x)
      log_q -= self.constraining_bijector.forward_log_det_jacobian(
          x, event_ndims=len(model.event_shape))
    log_p = tf.cast(self.target_log_prob(theta), log_q.dtype)
    return theta, log_p - log_q

  def compute(self, model, data, training):
    del data  # the objective draws its own samples
    _, log_w = self.log_weights(model, self._seed(training))
    elbo = tf.reduce_mean(log_w)
    n = tf.cast(self.num_samples, log_w.dtype)
    stopped = tf.stop_gradient(log_w)
    log_sum = tf.reduce_logsumexp(stopped)
    ess = tf.exp(2.0 * log_sum - tf.reduce_logsumexp(2.0 * stopped))
    metrics = {"elbo": tf.stop_gradient(elbo), "ess_fraction": ess / n,
               "log_normalizer": log_sum - tf.math.log(n)}
    return Result(-elbo, metrics, tf.constant(self.num_samples))

  def get_config(self):
    """The config `.keras` saving stores: the target by Keras' function serialization.

    Register `target_log_prob` with `keras.saving.register_keras_serializable` so a
    saved model loads it by name (a lambda needs `safe_mode=False` to load). An
    unregistered function or a bound method would save, by name, and fail every load:
    saving it is a `ValueError`. TFP bijectors have no Keras config, so a model with a
    `constraining_bijector` cannot be saved as `.keras` either.
    """
    if not _loadable(self.target_log_prob):
      raise ValueError(
          f"target_log_prob {self.target_log_prob!r} is not registered with Keras, so a "
          ".keras file could not find it on load. Decorate the function with "
          "@keras.saving.register_keras_serializable(), or save the weights "
          "(model.save_weights) and build the model in code.")
    if self.constraining_bijector is not None and not hasattr(
        self.constraining_bijector, "get_config"):
      raise ValueError(
          "A FlowModel trained by ReverseKL with constraining_bijector="
          f"{self.constraining_bijector.name!r} cannot be saved as .keras (TFP bijectors "
          "have no Keras config): save the weights (model.save_weights), or apply the "
          "constraint inside a registered target_log_prob (adding its log-det).")
    return {"target_log_prob": keras.saving.serialize_keras_object(self.target_log_prob),
            "num_samples": self.num_samples, "seed": self.seed,
            "constraining_bijector": None if self.constraining_bijector is None else
                                     keras.saving.serialize_keras_object(
                                         self.constraining_bijector)}

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    for key in ("target_log_prob", "constraining_bijector"):
      if config.get(key) is not None:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return cls(**config)


def _loadable(function):
  """Whether Keras can find `function` again from its serialization: registered, or a
  lambda (whose code is stored). Other functions and methods are stored by name only."""
  if getattr(function, "__name__", None) == "<lambda>":
    return True
  name = keras.saving.get_registered_name(function)
  return keras.saving.get_registered_object(name) is function


def _all_layers(flow_layers):
  for layer in flow_layers:
    yield layer
    yield from _all_layers(getattr(layer, "flow_layers", []))


_BY_NAME = {"maximum_likelihood": MaximumLikelihood, "flow_matching": FlowMatching,
            "reverse_kl": ReverseKL}


def get(objective, optimal_transport=False, target_log_prob=None):
  """An `Objective` from an objective object or a built-in name.

  As with Keras' string optimizers, a name builds the objective with its default
  options: "reverse_kl" is `ReverseKL(target_log_prob)` (64 samples a step, no
  constraining bijector, seed 0). For other options (`num_samples`,
  `constraining_bijector`, `seed`) pass the object.

  Args:
    objective: an `Objective`, or "maximum_likelihood" / "flow_matching" /
      "reverse_kl".
    optimal_transport: with "flow_matching", pair batches by entropic OT (an objective
      object carries its own options instead).
    target_log_prob: with "reverse_kl", the callable `theta -> log p~(theta)` the flow
      is fitted to (see `ReverseKL`).

  Raises:
    ValueError: for an unknown name, `optimal_transport` without flow matching,
      "reverse_kl" without `target_log_prob`, or `target_log_prob` with another
      objective.
  """
  if isinstance(objective, Objective):
    if optimal_transport:
      raise ValueError("optimal_transport=True goes with objective='flow_matching'; an "
                       "objective object carries its own options: pass "
                       "tff.objectives.FlowMatching(optimal_transport=True).")
    if target_log_prob is not None:
      raise ValueError("target_log_prob= goes with objective='reverse_kl'; an objective "
                       f"object carries its own options: got {type(objective).__name__} "
                       "and a target_log_prob. Pass tff.objectives.ReverseKL("
                       "target_log_prob, ...) alone.")
    return objective
  if objective not in _BY_NAME:
    raise ValueError(f"objective must be one of {tuple(_BY_NAME)} or a "
                     f"tff.objectives.Objective; got {objective!r}.")
  if optimal_transport and objective != "flow_matching":
    raise ValueError("optimal_transport=True pairs flow-matching batches: use it with "
                     "objective='flow_matching'.")
  if objective == "reverse_kl":
    if target_log_prob is None:
      raise ValueError("objective='reverse_kl' fits the flow to an unnormalised target: "
                       "pass target_log_prob=fn (theta -> log p~(theta)) as well, or "
                       "pass tff.objectives.ReverseKL(target_log_prob, num_samples=..., "
                       "constraining_bijector=...) as the objective.")
    return ReverseKL(target_log_prob)
  if target_log_prob is not None:
    raise ValueError("target_log_prob= is the target of variational inference: use it "
                     f"with objective='reverse_kl'; got objective={objective!r}.")
  if objective == "flow_matching":
    return FlowMatching(optimal_transport=optimal_transport)
  return MaximumLikelihood()


def unpack(data):
  """`(x, context)` of a batch: `x`, or `(x, context)` as Keras passes `fit(x, context)`."""
  if isinstance(data, (tuple, list)):
    if len(data) == 1:
      return data[0], None
    if len(data) > 2 and any(part is not None for part in data[2:]):
      raise ValueError("A FlowModel batch is x or (x, context); got a third element "
                       "(Keras' sample weights?), which no objective supports. To weight "
                       "examples, repeat or subsample their rows.")
    return data[0], data[1]
  return data, None
