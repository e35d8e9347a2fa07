"""Flow layers in float64: every weight and output in float64, log-dets exact to 1e-8.

Each layer is built with `dtype="float64"` (or under a global float64 policy), its
trainable weights are set to random values (at the identity initialisation a float32
sublayer would go unnoticed), and its bijector is checked in float64 against the
autodiff Jacobian (`tests/testing/bijector_checks.py`: round trip to 1e-10, log-det to
1e-8), and the layer's own call against its bijector.
"""

import sys

import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tests.testing import bijector_checks
from tests.testing import flow_helpers
from tfp_flows.bijectors import conditioning

F64 = "float64"
VECTOR = [3]
IMAGE = [2, 2, 2]
BATCH = 3


def _coupling(cls, **kwargs):
  return lambda **d: cls(hidden_units=(6,), hidden_channels=4, **kwargs, **d)


# name -> (make(**dtype kwargs), event shape, context: None, "vector" or "labels")
CASES = {
    "affine_coupling_vector": (_coupling(tff.layers.AffineCoupling), VECTOR, None),
    "affine_coupling_exp_image": (
        _coupling(tff.layers.AffineCoupling, scale="exp", mask="checkerboard"), IMAGE, None),
    "affine_coupling_conditional_image": (
        _coupling(tff.layers.AffineCoupling, conditional=True), IMAGE, "vector"),
    "additive_coupling_vector": (_coupling(tff.layers.AdditiveCoupling, reverse=True),
                                 VECTOR, None),
    "spline_coupling_conditional_vector": (
        _coupling(tff.layers.SplineCoupling, num_bins=4, conditional=True), VECTOR,
        "vector"),
    "spline_coupling_circular_image": (
        _coupling(tff.layers.SplineCoupling, num_bins=3, circular=True, mask="checkerboard"),
        IMAGE, None),
    "affine_autoregressive": (
        lambda **d: tff.layers.AffineAutoregressive(hidden_units=(6,), **d), VECTOR, None),
    "affine_inverse_autoregressive_conditional": (
        lambda **d: tff.layers.AffineAutoregressive(
            hidden_units=(6,), inverse_autoregressive=True, conditional=True, **d),
        VECTOR, "vector"),
    "spline_autoregressive": (
        lambda **d: tff.layers.SplineAutoregressive(num_bins=4, hidden_units=(6,), **d),
        VECTOR, None),
    "conv1x1_lu": (lambda **d: tff.layers.InvertibleConv1x1(lu=True, seed=1, **d),
                   IMAGE, None),
    "conv1x1_plain": (lambda **d: tff.layers.InvertibleConv1x1(lu=False, seed=1, **d),
                      VECTOR, None),
    "gaussian_prior": (lambda **d: tff.layers.GaussianPrior(**d), IMAGE, None),
    "gaussian_prior_classes": (lambda **d: tff.layers.GaussianPrior(num_classes=3, **d),
                               VECTOR, "labels"),
    "dequantize": (lambda **d: tff.layers.Dequantize(num_bits=3, seed=1, **d), IMAGE,
                   None),
    "dequantize_linear": (
        lambda **d: tff.layers.Dequantize(num_bits=3, alpha=None, seed=1, **d), VECTOR,
        None),
    "permute": (lambda **d: tff.layers.Permute("random", seed=1, **d), VECTOR, None),
    "squeeze": (lambda **d: tff.layers.Squeeze(2, **d), IMAGE, None),
    "factor_out": (
        lambda **d: tff.layers.FactorOut(
            [tff.layers.Squeeze(2, **d),
             tff.layers.AffineCoupling(hidden_channels=4, scale="exp", **d)], **d),
        [2, 2, 2], None),
    "glow_step": (lambda **d: tff.layers.GlowStep(hidden_channels=4, seed=1, **d), IMAGE,
                  None),
    "glow_step_exp": (
        lambda **d: tff.layers.GlowStep(hidden_channels=4, seed=1, scale="exp", **d), IMAGE,
        None),
    "flow_chain": (
        lambda **d: tff.layers.FlowChain(
            [tff.layers.AffineCoupling(hidden_units=(6,), **d), tff.layers.Permute(**d),
             tff.layers.SplineAutoregressive(num_bins=3, hidden_units=(6,), **d)], **d),
        VECTOR, None),
}


def _inputs(event_shape, context_kind, discrete):
  rng = np.random.default_rng(0)
  shape = [BATCH, *event_shape]
  x = (rng.integers(0, 8, size=shape) if discrete else rng.normal(size=shape)).astype(F64)
  if context_kind == "vector":
    return x, rng.normal(size=[BATCH, 2]).astype(F64)
  if context_kind == "labels":
    return x, np.array([0, 2, 1], np.int32)
  return x, None


def _check_float64(layer, event_shape, context_kind):
  discrete = isinstance(layer, tff.layers.Dequantize)
  x, c = _inputs(event_shape, context_kind, discrete)
  context = None if c is None else tf.constant(c)
  z, ildj = layer(tf.constant(x), context=context, training=False)
  flow_helpers.perturb_weights(layer, scale=0.3)  # every sublayer takes part
  assert layer.weights or not layer.trainable_weights
  for weight in layer.weights:
    assert weight.dtype in (F64, "int32"), weight.path
  z, ildj = layer(tf.constant(x), context=context, training=False)
  assert z.dtype == tf.float64 and ildj.dtype == tf.float64
  bijector = layer.bijector
  kwargs = conditioning.conditional_kwargs(bijector, context)
  ndims = len(event_shape)
  # The layer's call is its bijector's inverse and ILDJ (at the bin centre for pixels).
  centred = x + 0.5 if discrete else x
  np.testing.assert_allclose(z.numpy(), bijector.inverse(centred, **kwargs).numpy(),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(
      ildj.numpy(),
      bijector.inverse_log_det_jacobian(centred, event_ndims=ndims, **kwargs).numpy(),
      rtol=1e-12, atol=1e-12)
  # Round trip to 1e-10 and log-det == the autodiff Jacobian's to 1e-8, from the base.
  result = bijector_checks.assert_bijective_and_log_det(
      bijector, tf.constant(z.numpy()), z.shape.rank - 1, **kwargs)
  assert np.abs(result["fldj"]).max() > 1e-3 or isinstance(
      layer, (tff.layers.Permute, tff.layers.Squeeze, tff.layers.AdditiveCoupling))


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_layer(name):
  make, event_shape, context_kind = CASES[name]
  _check_float64(make(dtype=F64), event_shape, context_kind)


@pytest.mark.parametrize("name", ["dequantize", "affine_coupling_conditional_image",
                                  "factor_out", "spline_autoregressive"])
def test_global_float64_policy(name, float64_policy):
  make, event_shape, context_kind = CASES[name]
  layer = make()
  assert layer.compute_dtype == F64
  _check_float64(layer, event_shape, context_kind)


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
