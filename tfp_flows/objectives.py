"""What `FlowModel.fit` minimises: maximum likelihood and flow matching.

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

__all__ = ["Objective", "MaximumLikelihood", "FlowMatching", "Result", "get", "unpack",
           "EVALUATION_SEED"]

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
  """Base class: an objective `FlowModel.fit` minimises. Subclasses implement `compute`."""

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
    x, _ = unpack(data)
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
      x = tf.cast(x, model.compute_dtype)
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


_BY_NAME = {"maximum_likelihood": MaximumLikelihood, "flow_matching": FlowMatching}


def get(objective, optimal_transport=False):
  """An `Objective` from an objective object or a built-in name.

  Args:
    objective: an `Objective`, or "maximum_likelihood" / "flow_matching".
    optimal_transport: with "flow_matching", pair batches by entropic OT (an objective
      object carries its own options instead).

  Raises:
    ValueError: for an unknown name, or `optimal_transport` without flow matching.
  """
  if isinstance(objective, Objective):
    if optimal_transport:
      raise ValueError("optimal_transport=True goes with objective='flow_matching'; an "
                       "objective object carries its own options: pass "
                       "tff.objectives.FlowMatching(optimal_transport=True).")
    return objective
  if objective not in _BY_NAME:
    raise ValueError(f"objective must be one of {tuple(_BY_NAME)} or a "
                     f"tff.objectives.Objective; got {objective!r}.")
  if objective == "flow_matching":
    return FlowMatching(optimal_transport=optimal_transport)
  if optimal_transport:
    raise ValueError("optimal_transport=True pairs flow-matching batches: use it with "
                     "objective='flow_matching'.")
  return MaximumLikelihood()


def unpack(data):
  """`(x, context)` of a batch: `x`, or `(x, context)` as Keras passes `fit(x, context)`."""
  if isinstance(data, (tuple, list)):
    if len(data) == 1:
      return data[0], None
    return data[0], data[1]
  return data, None
