"""tff.estimators specs: the training/evaluation rule, in one place, for both families."""

import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tfp_flows.numerics import checks


def test_trace_spec_rule():
  spec = tff.estimators.TraceEstimator(training="hutchinson", probe="gaussian",
                                       exact_max_dims=4)
  assert spec.probe == "normal"
  assert spec.choose(True, 100) == tff.estimators.Estimator(
      "hutchinson", "normal", False, None, None)
  assert spec.choose(False, 4).method == "exact"
  evaluation = spec.choose(False, 5)
  assert evaluation == ("hutchinson", "rademacher", True, (20181003, 0), None)
  assert spec.describe(False, 5) == "hutchinson (keyed probe)"
  always_keyed = tff.estimators.TraceEstimator(evaluation="hutchinson", exact_max_dims=4)
  assert always_keyed.choose(False, 1).keyed_probes
  clone = tff.estimators.TraceEstimator(**spec.get_config())
  assert clone.get_config() == spec.get_config()


def test_log_det_spec_rule_sizes_the_evaluation_series_by_its_bias_bound():
  spec = tff.estimators.LogDetEstimator(exact_max_dims=2, evaluation_bias=1e-3)
  assert spec.choose(True, 3) == ("russian_roulette", "rademacher", False, None, 2)
  assert spec.choose(False, 2).method == "exact"
  lipschitz, size = 0.5, 3
  chosen = spec.choose(False, size, lipschitz=lipschitz)
  assert chosen.method == "series" and chosen.keyed_probes and chosen.seed == (20191104, 0)
  # The smallest n with D L^(n+1) / ((n+1)(1-L)) < 1e-3: 3 * 0.5^(n+1) / ((n+1) 0.5).
  bias = lambda n: size * lipschitz ** (n + 1) / ((n + 1) * (1 - lipschitz))
  assert bias(chosen.num_terms) < 1e-3 <= bias(chosen.num_terms - 1)
  assert chosen.num_terms == 9
  with pytest.raises(ValueError, match="Lipschitz bound"):
    spec.choose(False, size)
  assert tff.estimators.LogDetEstimator(**spec.get_config()).get_config() == spec.get_config()


def test_layers_take_specs_and_translate_their_old_arguments():
  old = tff.layers.ResidualBlock(log_det="series", n_exact_terms=3, exact_max_dims=7)
  assert old.log_det_estimator.get_config() == tff.estimators.LogDetEstimator(
      training="series", n_exact_terms=3, exact_max_dims=7).get_config()
  spec = tff.estimators.LogDetEstimator(training="exact", evaluation="series",
                                        evaluation_seed=(1, 2))
  new = tff.layers.ResidualBlock(log_det_estimator=spec)
  assert new.log_det == "exact" and new.log_det_estimator is spec
  clone = tff.layers.ResidualBlock.from_config(new.get_config())
  assert clone.log_det_estimator.get_config() == spec.get_config()
  ffjord = tff.layers.FFJORD(trace_estimator={"training": "exact", "exact_max_dims": 0})
  assert ffjord.trace == "exact" and ffjord.exact_max_dims == 0


@pytest.mark.parametrize("make, match", [
    (lambda: tff.estimators.TraceEstimator(training="hutch"), "trace must be one of"),
    (lambda: tff.estimators.TraceEstimator(evaluation="series"), "evaluation must be"),
    (lambda: tff.estimators.TraceEstimator(probe="uniform"), "noise must be one of"),
    (lambda: tff.estimators.TraceEstimator(evaluation_seed=(1,)), "evaluation_seed"),
    (lambda: tff.estimators.LogDetEstimator(gradient="adjoint"), "gradient must be"),
    (lambda: tff.estimators.LogDetEstimator(evaluation_bias=0.0), "evaluation_bias"),
    (lambda: tff.layers.FFJORD(trace_estimator="exact"), "TraceEstimator or its config"),
])
def test_spec_argument_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_nan_unless_masks_rows_and_raises_only_where_tensorflow_can():
  ok = tf.constant([True, False, True])
  values = tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
  masked = checks.nan_unless(ok, values, validate_args=False, message="m")
  np.testing.assert_array_equal(np.isnan(masked.numpy()), [[0, 0], [1, 1], [0, 0]])
  np.testing.assert_array_equal(masked.numpy()[[0, 2]], [[1.0, 2.0], [5.0, 6.0]])
  with pytest.raises(tf.errors.InvalidArgumentError, match="did not converge"):
    checks.nan_unless(ok, values, validate_args=True, message="did not converge")
  # XLA compiles the assertion away; the NaN rows remain.
  xla = tf.function(lambda k, v: checks.nan_unless(k, v, True, "did not converge"),
                    jit_compile=True)(ok, values)
  np.testing.assert_array_equal(np.isnan(xla.numpy()), np.isnan(masked.numpy()))
