"""One property test over every bijector family (STYLE.md point 6, first tier).

Each case builds a bijector, a forward input `x` (the base side) and keyword arguments.
For float64 and float32 the test checks invertibility, log-det against the autodiff
Jacobian, `fldj == -ildj`, finite values and gradients (w.r.t. the input and every
parameter), XLA against eager, and `tfd.TransformedDistribution.log_prob` over a stock
standard-normal `tfd.Sample` base against the change-of-variables formula.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tests.testing import bijector_checks
from tfp_flows import bijectors as tffb

tfb = tfp.bijectors
tfd = tfp.distributions

BATCH = 3
IMAGE = [4, 4, 4]


class Params:
  """Deterministic random parameters as `tf.Variable`s, remembered for gradient checks."""

  def __init__(self, dtype, seed):
    self.dtype = dtype
    self.rng = np.random.default_rng(seed)
    self.variables = []

  def normal(self, shape, scale=1.0, mean=0.0):
    value = mean + scale * self.rng.normal(size=shape)
    self.variables.append(tf.Variable(value.astype(self.dtype.as_numpy_dtype)))
    return self.variables[-1]

  def data(self, shape, scale=1.0):
    """A constant input tensor (not a parameter)."""
    return tf.constant((scale * self.rng.normal(size=shape)).astype(
        self.dtype.as_numpy_dtype))

  def dense_conditioner(self, in_shape, out_shape, context_size=None, gain=1.5):
    """tanh(flatten(x) @ W [+ c @ V]) reshaped to `out_shape`: mixes the whole event."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    weight = self.normal([n_in, n_out], gain / math.sqrt(n_in))
    context_weight = (None if context_size is None else
                      self.normal([context_size, n_out], gain / math.sqrt(context_size)))

    def conditioner(x, conditional_input=None):
      batch = tf.shape(x)[:tf.rank(x) - len(in_shape)]
      h = tf.matmul(tf.reshape(x, [-1, n_in]), weight)
      if conditional_input is not None:
        h += tf.matmul(tf.reshape(conditional_input, [-1, context_size]), context_weight)
      return tf.reshape(tf.tanh(h), tf.concat([batch, out_shape], 0))

    return conditioner


class Case:
  """A bijector, its forward input `x` (events of rank `event_ndims`), a context or None."""

  def __init__(self, bijector, x, event_ndims, context=None):
    self.bijector = bijector
    self.x = x
    self.event_ndims = event_ndims
    self.context = context
    # Method kwargs: `conditional_input` routed by name through Chains (as TFP expects).
    self.kwargs = tffb.conditional_kwargs(bijector, context)


def _act_norm(p):
  bijector = tffb.ActNorm(p.normal([4], 0.5), p.normal([4], 0.5))
  return Case(bijector, p.data([BATCH] + IMAGE), 3)


def _conv_plain(p):
  weight = p.normal([4, 4], 0.4)
  weight.assign_add(tf.eye(4, dtype=p.dtype))
  return Case(tffb.InvertibleConv1x1(weight=weight), p.data([BATCH] + IMAGE), 3)


def _conv_lu(p):
  bijector = tffb.InvertibleConv1x1(
      permutation=[2, 0, 3, 1], lower=p.normal([4, 4], 0.5), upper=p.normal([4, 4], 0.5),
      log_abs_diag=p.normal([4], 0.3), sign=tf.constant([1., -1., -1., 1.], p.dtype))
  return Case(bijector, p.data([BATCH] + IMAGE), 3)


def _coupling_vector(scale, reverse, transformer=None):
  def build(p):
    k = 2  # 5 channels: an uneven split, so `reverse` changes the shapes.
    kept, moved = (5 - k, k) if reverse else (k, 5 - k)
    t = transformer or tffb.AffineTransformer(scale=scale)
    conditioner = p.dense_conditioner([kept], [moved * t.num_params])
    bijector = tffb.Coupling(conditioner, t, num_channels=5, split_index=k,
                             reverse=reverse, dtype=p.dtype)
    return Case(bijector, p.data([BATCH, 5]), 1)
  return build


def _coupling_checkerboard(p):
  t = tffb.AffineTransformer(scale="sigmoid")
  mask = tffb.checkerboard_mask(4, 4, 4, parity=1, dtype=p.dtype)
  conditioner = p.dense_conditioner(IMAGE, [4, 4, 4 * 2])
  bijector = tffb.Coupling(conditioner, t, num_channels=4, event_ndims=3, mask=mask,
                           dtype=p.dtype)
  return Case(bijector, p.data([BATCH] + IMAGE), 3)


def _coupling_conditional(p):
  t = tffb.AffineTransformer(scale="exp")
  conditioner = p.dense_conditioner([3], [3 * 2], context_size=2)
  bijector = tffb.Coupling(conditioner, t, num_channels=6, split_index=3,
                           conditional=True, dtype=p.dtype)
  context = p.data([BATCH, 2])
  return Case(bijector, p.data([BATCH, 6]), 1, context)


def _spline_coupling(circular):
  def build(p):
    t = (tffb.CircularRationalQuadraticTransformer(num_bins=5, bound=2.0) if circular
         else tffb.RationalQuadraticTransformer(num_bins=5, bound=2.0))
    conditioner = p.dense_conditioner([2], [3 * t.num_params], gain=3.0)
    bijector = tffb.Coupling(conditioner, t, num_channels=5, split_index=2,
                             dtype=p.dtype)
    # Scale 1.5 puts some entries in the tails (|x| > 2) of the linear-tailed spline.
    x = p.data([BATCH, 5], 1.5)
    if circular:
      x = tf.clip_by_value(x, -1.9, 1.9)
    return Case(bijector, x, 1)
  return build


def _autoregressive(transformer):
  def build(p):
    size = 4
    weight = p.normal([size, size, transformer.num_params], 1.0)
    mask = np.tril(np.ones([size, size]), -1)[:, :, None].astype(p.dtype.as_numpy_dtype)
    context_weight = p.normal([2, size, transformer.num_params], 1.0)

    def conditioner(y, conditional_input):
      # Row i reads y_j for j < i only: strictly lower-triangular masked weights.
      h = tf.einsum("ijp,...j->...ip", weight * mask, y)
      return tf.tanh(h + tf.einsum("cip,...c->...ip", context_weight, conditional_input))

    bijector = tffb.Autoregressive(conditioner, transformer, size, conditional=True,
                                   dtype=p.dtype)
    return Case(bijector, p.data([BATCH, size], 1.5), 1, p.data([BATCH, 2]))
  return build


def _squeeze(p):
  return Case(tffb.Squeeze(), p.data([BATCH] + IMAGE), 3)


def _unsqueeze(p):
  return Case(tfb.Invert(tffb.Squeeze()), p.data([BATCH] + IMAGE), 3)


def _logit(p):
  return Case(tffb.Logit(alpha=0.05), p.data([BATCH, 6], 1.5), 1)


def _conditional_affine(p):
  shift, log_scale = p.normal([5], 0.5), p.normal([5], 0.5)
  bijector = tffb.ConditionalAffine(lambda: (shift, log_scale), dtype=p.dtype)
  return Case(bijector, p.data([BATCH, 5]), 1)


def _conditional_affine_context(p):
  shift_fn = p.dense_conditioner([3], [5])
  log_scale_fn = p.dense_conditioner([3], [5])
  bijector = tffb.ConditionalAffine(lambda c: (shift_fn(c), log_scale_fn(c)),
                                    conditional=True, dtype=p.dtype)
  return Case(bijector, p.data([BATCH, 5]), 1, p.data([BATCH, 3]))


def _factor_out(p):
  # Kept channels [4, 4, 2] unsqueeze from a latent [2, 2, 8].
  inner = tfb.Chain([tfb.Invert(tffb.Squeeze()),
                     tffb.ActNorm(p.normal([8], 0.5), p.normal([8], 0.5))])
  bijector = tffb.FactorOut(inner, num_kept=2, event_shape=IMAGE)
  return Case(bijector, p.data([BATCH] + IMAGE), 3)


def _factor_out_conditional(p):
  coupling = tffb.Coupling(
      p.dense_conditioner([2, 2, 4], [2, 2, 4 * 2], context_size=2),
      tffb.AffineTransformer(scale="exp"), num_channels=8, event_ndims=3,
      conditional=True, dtype=p.dtype, name="inner_coupling")
  inner = tfb.Chain([tfb.Invert(tffb.Squeeze()), coupling])
  bijector = tffb.FactorOut(inner, num_kept=2, event_shape=IMAGE)
  return Case(bijector, p.data([BATCH] + IMAGE), 3, p.data([BATCH, 2]))


def _chain(p):
  """Base [2, 2, 16] -> data [4, 4, 4] near (0, 1): a small Glow-like stack."""
  coupling = tffb.Coupling(
      p.dense_conditioner([2, 2, 8], [2, 2, 8 * 2], context_size=2),
      tffb.AffineTransformer(scale="sigmoid"), num_channels=16, event_ndims=3,
      conditional=True, dtype=p.dtype, name="chain_coupling")
  conv = tffb.InvertibleConv1x1(
      permutation=np.random.default_rng(0).permutation(16), lower=p.normal([16, 16], 0.2),
      upper=p.normal([16, 16], 0.2), log_abs_diag=p.normal([16], 0.2),
      sign=tf.ones([16], p.dtype))
  prior_shift, prior_log_scale = p.normal([16], 0.3), p.normal([16], 0.3)
  bijector = tfb.Chain([
      tffb.Logit(alpha=0.05),
      tffb.ActNorm(p.normal([4], 0.2), p.normal([4], 0.2, mean=-1.0)),
      tfb.Invert(tffb.Squeeze()),
      coupling,
      conv,
      tffb.ConditionalAffine(lambda: (prior_shift, prior_log_scale), event_ndims=3,
                             dtype=p.dtype, name="prior"),
  ])
  return Case(bijector, p.data([BATCH, 2, 2, 16]), 3, p.data([BATCH, 2]))


CASES = {
    "act_norm": _act_norm,
    "conv1x1_plain": _conv_plain,
    "conv1x1_lu": _conv_lu,
    "coupling_affine_sigmoid": _coupling_vector("sigmoid", reverse=False),
    "coupling_affine_exp_reverse": _coupling_vector("exp", reverse=True),
    "coupling_additive": _coupling_vector(
        None, reverse=False, transformer=tffb.AdditiveTransformer()),
    "coupling_checkerboard": _coupling_checkerboard,
    "coupling_conditional": _coupling_conditional,
    "coupling_spline": _spline_coupling(circular=False),
    "coupling_circular_spline": _spline_coupling(circular=True),
    "autoregressive_affine": _autoregressive(tffb.AffineTransformer(scale="exp")),
    "autoregressive_spline": _autoregressive(
        tffb.RationalQuadraticTransformer(num_bins=4, bound=2.0)),
    "squeeze": _squeeze,
    "invert_squeeze": _unsqueeze,
    "logit": _logit,
    "conditional_affine": _conditional_affine,
    "conditional_affine_context": _conditional_affine_context,
    "factor_out": _factor_out,
    "factor_out_conditional": _factor_out_conditional,
    "chain": _chain,
}


def _standard_normal_log_prob(z, event_ndims):
  """float64 numpy log N(z; 0, I) summed over the last `event_ndims` axes."""
  z = np.asarray(z, np.float64)
  axes = tuple(range(z.ndim - event_ndims, z.ndim))
  return np.sum(-0.5 * z**2 - 0.5 * math.log(2 * math.pi), axis=axes)


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_bijector_properties(name, dtype):
  params = Params(dtype, seed=sorted(CASES).index(name))
  with tf.GradientTape() as tape:
    case = CASES[name](params)
    bijector, x, event_ndims, kwargs = case.bijector, case.x, case.event_ndims, case.kwargs
    param_loss = tf.reduce_sum(bijector.forward(x, **kwargs)) + tf.reduce_sum(
        bijector.forward_log_det_jacobian(x, event_ndims=event_ndims, **kwargs))
  tol = bijector_checks.TOLERANCES[dtype]

  # Parameter gradients: every parameter used gets a finite gradient.
  variables = params.variables
  for variable, grad in zip(variables, tape.gradient(param_loss, variables)):
    assert grad is not None, f"no gradient for parameter {variable.shape}"
    assert np.all(np.isfinite(grad.numpy())), f"non-finite gradient {grad}"

  # Bijective, log-det == autodiff Jacobian, fldj == -ildj, finite values and gradients.
  result = bijector_checks.assert_bijective_and_log_det(bijector, x, event_ndims, **kwargs)
  # The transform must do something: a case that is the identity would prove little.
  assert np.max(np.abs(result["y"].reshape(x.shape) - x.numpy())) > 1e-2
  y = bijector_checks.fresh(result["y"])
  y_event_ndims = y.shape.rank - (x.shape.rank - event_ndims)

  # XLA equals eager for forward, inverse and both log-dets.
  def all_directions(x, y, kwargs):
    return (bijector.forward(x, **kwargs), bijector.inverse(y, **kwargs),
            bijector.forward_log_det_jacobian(x, event_ndims=event_ndims, **kwargs),
            bijector.inverse_log_det_jacobian(y, event_ndims=y_event_ndims, **kwargs))
  bijector_checks.assert_xla_matches_eager(
      all_directions, bijector_checks.fresh(x), y, bijector_checks.fresh(kwargs),
      atol=1e-5, rtol=1e-5)

  # In a TransformedDistribution over a stock standard-normal base, log_prob is the
  # change of variables: log N(inverse(y)) + ildj(y), with log N in float64 numpy.
  base = tfd.Sample(tfd.Normal(tf.constant(0, dtype), tf.constant(1, dtype)),
                    sample_shape=x.shape[x.shape.rank - event_ndims:])
  distribution = tfd.TransformedDistribution(base, bijector)
  assert bool(kwargs) == (case.context is not None)
  log_prob = distribution.log_prob(y, bijector_kwargs=kwargs).numpy()
  expected = _standard_normal_log_prob(result["x_back"], event_ndims) + result["ildj"]
  assert log_prob.shape == (BATCH,)
  np.testing.assert_allclose(log_prob, expected, rtol=tol.log_det, atol=tol.log_det)
  assert distribution.event_shape == y.shape[1:]
