"""Every use of TensorFlow Probability's private bijector internals, in one place.

Three things our bijectors and layers need that TFP has no public API for:

* Sharing a log-det computed together with a transform through TFP's bijector cache.
  TFP computes `inverse(y)` and `inverse_log_det_jacobian(y)` in separate calls (so do
  `tfd.TransformedDistribution.log_prob` and `tfb.Chain`). For bijectors whose value and
  log-det come out of one expensive pass (a conditioner network, a log-det series, an
  ODE solve), the pass stores its log-det on the cache edge of the same input, where
  TFP's `_call_*_log_det_jacobian` looks before calling `_*_log_det_jacobian` again.
  TFP keeps the unreduced inverse log-det of one minimal event under the key 'ildj' for
  both directions.
* Routing a conditional input through compositions: TFP passes keyword arguments
  through `tfb.Chain` by bijector name and through `tfb.Invert` unchanged, and
  `tfb.Invert` of a non-composite-tensor bijector (any bijector holding a callable) is
  an instance of TFP's private `_Invert` base, not of `tfb.Invert`.
* A bijector name that stays the same when the bijector is built again: the routing
  above goes by name, and TFP makes a name unique within a graph unless it ends in "/"
  (`stable_name`).

If a TFP release changes these internals, this module is the one to update.
"""

import tensorflow_probability as tfp
from tensorflow_probability.python.bijectors import invert as invert_lib

__all__ = ["OnePassLogDet", "conditional_kwargs", "is_conditional",
           "remember_forward_log_det", "remember_inverse_log_det", "stable_name"]

tfb = tfp.bijectors
# pylint: disable-next=protected-access
_INVERT_TYPES = (tfb.Invert, invert_lib._Invert)


def remember_inverse_log_det(bijector, y, ildj, kwargs):
  """Records `ildj` (one minimal event) for `bijector.inverse(y, **kwargs)`."""
  bijector._cache.inverse_attributes(y, **kwargs)["ildj"] = ildj  # pylint: disable=protected-access


def remember_forward_log_det(bijector, x, fldj, kwargs):
  """Records `fldj` (one minimal event) for `bijector.forward(x, **kwargs)`."""
  bijector._cache.forward_attributes(x, **kwargs)["ildj"] = -fldj  # pylint: disable=protected-access


def is_conditional(bijector):
  """True if `bijector`, or a bijector inside its compositions and inverts, is conditional."""
  if isinstance(bijector, tfb.Composition):
    return any(is_conditional(b) for b in bijector.bijectors)
  if isinstance(bijector, _INVERT_TYPES):
    return is_conditional(bijector.bijector)
  return bool(getattr(bijector, "is_conditional", False))


def conditional_kwargs(bijector, conditional_input):
  """Keyword arguments that pass `conditional_input` to every conditional bijector inside.

  The result is a nested dict mirroring the composition (`chain.forward(x,
  **{name: kwargs})`). Returns `{}` when `conditional_input` is None or nothing inside
  is conditional.
  """
  if conditional_input is None or not is_conditional(bijector):
    return {}
  if isinstance(bijector, tfb.Composition):
    return {b.name: conditional_kwargs(b, conditional_input)
            for b in bijector.bijectors if is_conditional(b)}
  if isinstance(bijector, _INVERT_TYPES):
    return conditional_kwargs(bijector.bijector, conditional_input)
  return {"conditional_input": conditional_input}


def stable_name(name):
  """The form of `name` that TFP keeps as given: `name` ending in "/".

  `tfb.Bijector.__init__` passes its name through `tf.name_scope`, which makes it unique
  within a graph: a second "coupling" built in the same `tf.function` becomes
  "coupling_1", so keyword arguments routed by name (`tfb.Chain`'s
  `**{name: kwargs}`, see `conditional_kwargs`) from another build would miss it. A
  name ending in "/" is taken as a finished scope and kept; the bijector's `.name` is
  then `name` without the "/" (TFP's `name_util.get_name_scope_name`).

  Args:
    name: a bijector name, with or without the trailing "/".

  Returns:
    `name` with exactly one trailing "/".
  """
  return name if name.endswith("/") else name + "/"


class OnePassLogDet:
  """Mixin for a `tfb.Bijector` whose value and log-det come out of one pass.

  The bijector implements `_forward_and_log_det(x, conditional_input)` and
  `_inverse_and_log_det(y, conditional_input)`, each returning the value and the
  log-det of one minimal event in that direction. The mixin provides TFP's `_forward`,
  `_inverse` and `_*_log_det_jacobian`: a transform leaves its log-det in the cache, so
  `TransformedDistribution.log_prob` (`inverse` then `inverse_log_det_jacobian` on the
  same input) runs the pass once.
  """

  def _forward(self, x, **kwargs):
    y, fldj = self._forward_and_log_det(x, kwargs.get("conditional_input"))
    remember_forward_log_det(self, x, fldj, kwargs)
    return y

  def _inverse(self, y, **kwargs):
    x, ildj = self._inverse_and_log_det(y, kwargs.get("conditional_input"))
    remember_inverse_log_det(self, y, ildj, kwargs)
    return x

  def _forward_log_det_jacobian(self, x, conditional_input=None):
    return self._forward_and_log_det(x, conditional_input)[1]

  def _inverse_log_det_jacobian(self, y, conditional_input=None):
    return self._inverse_and_log_det(y, conditional_input)[1]
