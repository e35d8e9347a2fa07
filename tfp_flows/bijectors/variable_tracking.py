"""Variables a bijector holds so that TFP's tools (tfp.vi, tf.Module tracking) find them.

A TFP bijector is a `tf.Module`: its `trainable_variables` are the `tf.Variable`s found
by walking its attributes, and TFP's optimisation loops (`tfp.vi.fit_surrogate_posterior`,
`tfp.math.minimize`) watch exactly those. Two things hide a flow's weights from that walk:

* Keras 3 variables are not `tf.Variable`s: a `keras.Variable` under the TensorFlow
  backend wraps one (its `.value`), and `tf.GradientTape.watch` and TFP's
  `tensor_util.convert_nonref_to_tensor` do not recognise the wrapper, so a bijector
  given one converts it to a constant snapshot.
* A conditioner network is a callable, and `tf.Module` does not look inside callables.

`unwrap_variable` fixes the first (bijectors call it on their parameters); a layer fixes
the second by `hold_variables(bijector, layer.weights)`. No Keras import: a Keras variable
is recognised by the `tf.Variable` it wraps.

Keras freezes a layer (`layer.trainable = False`) by marking its Keras variables only; the
`tf.Variable`s inside stay trainable, so TFP's walk would still list them and every
gradient tape would still watch them when read (and `tfp.math.minimize` trains what its
tape watched). `match_keras_trainable` marks the `tf.Variable`s as Keras marks their
wrappers; `hold_variables` applies it on every build of a layer's bijector.
"""

import itertools

import tensorflow as tf

__all__ = ["hold_variables", "match_keras_trainable", "unwrap_variable"]

_BUILDS = itertools.count()

# The attribute under which a bijector holds its layer's variables (a tuple, which
# `tf.Module`'s attribute walk flattens).
_ATTRIBUTE = "_held_variables"


def unwrap_variable(value):
  """The `tf.Variable` inside a Keras 3 variable; any other value unchanged.

  Bijectors call this on parameters before `convert_nonref_to_tensor`, so a bijector
  built from a Keras layer's weights keeps the variable (read when the bijector is
  called, watched by gradient tapes, carried by its composite-tensor form) instead of a
  snapshot of its value.
  """
  if isinstance(value, tf.Variable):
    return value
  inner = getattr(value, "value", None)
  return inner if isinstance(inner, tf.Variable) else value


def match_keras_trainable(variables):
  """Makes the `tf.Variable` inside each Keras variable trainable exactly when it is.

  Keras variables decide (a frozen layer's are not trainable); plain `tf.Variable`s are
  left alone. A distributed variable's per-replica components are marked too, because a
  tape inside a replica watches the component it reads. `trainable` is read-only on
  `tf.Variable`, so this sets the attribute behind it (TensorFlow's `_trainable`).
  """
  for variable in variables:
    inner = unwrap_variable(variable)
    if inner is variable or inner.trainable == bool(variable.trainable):
      continue
    for component in (inner, *getattr(inner, "values", ())):
      component._trainable = bool(variable.trainable)  # pylint: disable=protected-access


def hold_variables(bijector, variables):
  """Makes `bijector` hold `variables` (Keras or tf) and returns it.

  Afterwards `bijector.trainable_variables` (and those of any `tfb.Chain`, `tfb.Invert`
  or `tfd.TransformedDistribution` around it) include the trainable ones, as the
  `tf.Variable`s a `tf.GradientTape` watches and optimizers update in place. Those of
  frozen Keras layers are not trainable (`match_keras_trainable`).

  Each call also makes `bijector` equal only to itself. TFP shares one cache of
  computed values among equal bijectors (equal `parameters`), and a layer's builds
  hold the same variables and networks, so a build made after the weights changed would
  be served what an earlier build computed for the same input tensor: stale values
  without gradients. (A bijector object kept across weight updates keeps its own cache
  of the inputs it has seen, as every TFP bijector over variables does.)
  """
  variables = tuple(variables)
  match_keras_trainable(variables)
  setattr(bijector, _ATTRIBUTE, tuple(unwrap_variable(v) for v in variables))
  build = ("tfp_flows build", next(_BUILDS))
  # TFP's __eq__ and __hash__ compare this; counter values, unlike ids, are never reused.
  bijector._get_parameterization = lambda: build  # pylint: disable=protected-access
  return bijector
