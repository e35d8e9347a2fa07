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


# The affine cases (Jacobian independent of x): TFP caches their log-det and
# `TransformedDistribution.mean()` / `entropy()` answer in closed form. Additive
# couplings are volume preserving but not affine (the shift depends on x), so they do
# not declare it: TFP's mean() would return forward(0), which is not their mean.
CONSTANT_JACOBIAN = {"act_norm", "conv1x1_plain", "conv1x1_lu", "conditional_affine",
                     "conditional_affine_context", "factor_out", "squeeze",
                     "invert_squeeze"}
# Those with a closed-form mean and entropy over an unconditional standard normal.
CLOSED_FORM = {"act_norm", "conv1x1_plain", "conv1x1_lu", "conditional_affine",
               "factor_out"}


def _reshape_sample(value, event_ndims, sample_shape):
  return tf.reshape(value, sample_shape + value.shape[value.shape.rank - event_ndims:])


@pytest.mark.parametrize("name", sorted(CASES))
def test_tfp_batch_and_sample_shapes(name):
  """TFP's bijector_properties_test checks: batch shape, any sample shape, constant J."""
  params = Params(tf.float64, seed=sorted(CASES).index(name))
  case = CASES[name](params)
  bijector, x, event_ndims = case.bijector, case.x, case.event_ndims
  # Parameterised by callables or unbatched tensors: a batch shape of [] (stock RealNVP
  # and MAF say the same); this raised for bijectors without _parameter_properties.
  assert bijector.experimental_batch_shape() == tf.TensorShape([])
  assert bijector.is_constant_jacobian == (name in CONSTANT_JACOBIAN)

  y = bijector.forward(x, **case.kwargs)
  fldj = bijector.forward_log_det_jacobian(x, event_ndims=event_ndims, **case.kwargs)
  # A constant Jacobian's log-det comes back without the sample shape, as in TFP.
  fldj = tf.broadcast_to(fldj, [BATCH])
  y_event_ndims = y.shape.rank - 1

  def kwargs_for(index=None, sample_shape=None):
    if case.context is None:
      return {}
    context = case.context
    if index is not None:
      context = context[index]
    if sample_shape is not None:
      context = _reshape_sample(context, 1, sample_shape)
    return tffb.conditional_kwargs(bijector, context)

  # One event (no sample axis), as td.sample(), log_prob(one_point), vectorized_map.
  for i in range(BATCH):
    kwargs = kwargs_for(index=i)
    np.testing.assert_allclose(bijector.forward(x[i], **kwargs), y[i], rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(bijector.inverse(y[i], **kwargs), x[i], rtol=1e-8,
                               atol=1e-8)
    np.testing.assert_allclose(
        bijector.forward_log_det_jacobian(x[i], event_ndims=event_ndims, **kwargs),
        fldj[i], rtol=1e-10, atol=1e-10)
  if case.context is None:
    mapped = tf.vectorized_map(
        lambda row: bijector.inverse_log_det_jacobian(row, event_ndims=y_event_ndims), y)
    np.testing.assert_allclose(tf.broadcast_to(mapped, [BATCH]), -fldj, rtol=1e-10,
                               atol=1e-10)
  # Two sample axes [3, 1] (td.sample([S, N])), also for image events.
  kwargs = kwargs_for(sample_shape=[BATCH, 1])
  x31 = _reshape_sample(x, event_ndims, [BATCH, 1])
  np.testing.assert_allclose(bijector.forward(x31, **kwargs),
                             _reshape_sample(y, y_event_ndims, [BATCH, 1]), rtol=1e-10,
                             atol=1e-10)
  np.testing.assert_allclose(
      tf.broadcast_to(bijector.forward_log_det_jacobian(x31, event_ndims=event_ndims,
                                                        **kwargs), [BATCH, 1]),
      tf.reshape(fldj, [BATCH, 1]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_constant_jacobian_mean_and_entropy(name):
  """mean() = forward(0) and entropy() = H(base) + log|det J| over a standard normal."""
  params = Params(tf.float64, seed=sorted(CASES).index(name))
  case = CASES[name](params)
  bijector, x, event_ndims = case.bijector, case.x, case.event_ndims
  event_shape = x.shape[1:]
  base = tfd.Sample(tfd.Normal(tf.constant(0, tf.float64), 1.0), event_shape)
  distribution = tfd.TransformedDistribution(base, bijector)
  size = event_shape.num_elements()
  log_det = bijector.forward_log_det_jacobian(x[0], event_ndims=event_ndims).numpy()
  # Independent closed forms: the affine map y = A z + b has mean b and entropy
  # H(N(0, I)) + log|det A|; b and log|det A| read off the parameters.
  if name == "act_norm":
    loc, log_scale = params.variables
    expected_mean = np.broadcast_to(loc.numpy(), event_shape)
    expected_log_det = size // 4 * np.sum(log_scale.numpy())
  elif name == "conditional_affine":
    shift, log_scale = params.variables
    expected_mean, expected_log_det = shift.numpy(), np.sum(log_scale.numpy())
  elif name == "factor_out":
    loc, log_scale = params.variables  # the inner ActNorm on the kept half's latent
    expected_mean = bijector.forward(tf.zeros([1, *event_shape], tf.float64))[0].numpy()
    expected_log_det = 4 * np.sum(log_scale.numpy())  # a [2, 2, 8] latent: 4 pixels
    np.testing.assert_allclose(expected_mean[..., 2:], 0.0)  # factored out: unchanged
  else:  # 1x1 convolutions: a linear map at each of the 16 pixels, mean 0
    matrix = bijector.matrix().numpy()
    expected_mean = np.zeros(event_shape)
    expected_log_det = 16 * np.linalg.slogdet(matrix)[1]
  np.testing.assert_allclose(log_det, expected_log_det, rtol=1e-10)
  np.testing.assert_allclose(distribution.mean(), expected_mean, rtol=1e-10, atol=1e-12)
  gaussian_entropy = 0.5 * size * math.log(2 * math.pi * math.e)
  np.testing.assert_allclose(distribution.entropy(), gaussian_entropy + expected_log_det,
                             rtol=1e-10)


def test_additive_coupling_is_volume_preserving_but_not_affine():
  """Why additive couplings do not declare is_constant_jacobian (issue 15 asked for it).

  Their log-det is exactly 0, but the Jacobian [[I, 0], [dt/dx_a, I]] depends on x, so
  the map is not affine: TFP's `mean()` for constant-Jacobian bijectors,
  forward(base mean), would be wrong. Monte Carlo shows the difference.
  """
  params = Params(tf.float64, seed=0)
  case = CASES["coupling_additive"](params)
  bijector = case.bijector
  # A base centred at 1: the test conditioner is odd, so a centred one would hide it.
  z = tf.constant(1.0 + np.random.default_rng(0).normal(size=[20000, 5]))
  np.testing.assert_array_equal(bijector.forward_log_det_jacobian(z, event_ndims=1), 0.0)
  mean = tf.reduce_mean(bijector.forward(z), 0).numpy()
  standard_error = tf.math.reduce_std(bijector.forward(z), 0).numpy() / math.sqrt(20000)
  at_mean = bijector.forward(tf.ones([1, 5], tf.float64))[0].numpy()
  assert np.max(np.abs(mean - at_mean) / standard_error) > 10
  assert not bijector.is_constant_jacobian
