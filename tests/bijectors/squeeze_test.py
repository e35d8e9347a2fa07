"""Edge cases of tfp_flows.bijectors.Squeeze against tf.nn.space_to_depth and numpy."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfp_flows import bijectors as tffb

tfb = tfp.bijectors


def _numpy_squeeze(x, f):
  """y[..., i, j, (a*f + b)*C + c] = x[..., i*f + a, j*f + b, c], by explicit loops."""
  *batch, h, w, c = x.shape
  y = np.zeros(batch + [h // f, w // f, f * f * c], x.dtype)
  for i in range(h // f):
    for j in range(w // f):
      for a in range(f):
        for b in range(f):
          y[..., i, j, (a * f + b) * c:(a * f + b + 1) * c] = x[..., i * f + a, j * f + b, :]
  return y


@pytest.mark.parametrize("factor,shape", [(2, [2, 4, 6, 3]), (3, [1, 6, 3, 2])])
def test_equals_space_to_depth_on_rank_4(factor, shape):
  x = np.random.default_rng(0).normal(size=shape)
  bijector = tffb.Squeeze(factor)
  y = bijector.forward(x).numpy()
  np.testing.assert_array_equal(y, tf.nn.space_to_depth(x, factor).numpy())
  np.testing.assert_array_equal(y, _numpy_squeeze(x, factor))
  np.testing.assert_array_equal(bijector.inverse(tf.constant(y)).numpy(),
                                tf.nn.depth_to_space(y, factor).numpy())
  np.testing.assert_array_equal(tfb.Invert(bijector).forward(tf.constant(y)).numpy(), x)


def test_factor_one_is_the_identity():
  x = np.random.default_rng(2).normal(size=[2, 3, 5, 2])
  np.testing.assert_array_equal(tffb.Squeeze(1).forward(x).numpy(), x)
  np.testing.assert_array_equal(tffb.Squeeze(1).inverse(x).numpy(), x)


@pytest.mark.parametrize("shape", [[4, 6, 2], [2, 3, 4, 2, 5]])
def test_other_batch_ranks(shape):
  x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  bijector = tffb.Squeeze()
  y = bijector.forward(x).numpy()
  np.testing.assert_array_equal(y, _numpy_squeeze(x, 2))
  np.testing.assert_array_equal(bijector.inverse(tf.constant(y)).numpy(), x)


def test_unknown_batch_size_under_tf_function():
  forward = tf.function(tffb.Squeeze().forward,
                        input_signature=[tf.TensorSpec([None, 4, 4, 1], tf.float32)])
  x = np.arange(32, dtype=np.float32).reshape(2, 4, 4, 1)
  assert forward.get_concrete_function().structured_outputs.shape.as_list() == [
      None, 2, 2, 4]
  np.testing.assert_array_equal(forward(x).numpy(), tf.nn.space_to_depth(x, 2).numpy())


def test_log_det_is_zero_and_shapes_are_consistent():
  bijector = tffb.Squeeze()
  x = np.ones([3, 4, 4, 2])
  fldj = bijector.forward_log_det_jacobian(x, event_ndims=3).numpy()
  np.testing.assert_array_equal(np.broadcast_to(fldj, [3]), np.zeros(3))
  ildj = bijector.inverse_log_det_jacobian(np.ones([3, 2, 2, 8]), event_ndims=3).numpy()
  np.testing.assert_array_equal(np.broadcast_to(ildj, [3]), np.zeros(3))
  assert bijector.forward_event_shape([5, 4, 6, 3]) == [5, 2, 3, 12]
  assert bijector.inverse_event_shape([2, 3, 12]) == [4, 6, 3]
  np.testing.assert_array_equal(bijector.forward_event_shape_tensor([4, 6, 3]).numpy(),
                                [2, 3, 12])
  np.testing.assert_array_equal(bijector.inverse_event_shape_tensor([2, 3, 12]).numpy(),
                                [4, 6, 3])
  assert tffb.Squeeze(3).forward_event_shape([6, 9, 1]) == [2, 3, 9]


@pytest.mark.parametrize("factor", [0, -2, 1.5])
def test_bad_factor_raises(factor):
  with pytest.raises(ValueError, match=f"factor must be a positive integer; got {factor}"):
    tffb.Squeeze(factor)


def test_shape_errors():
  bijector = tffb.Squeeze()
  with pytest.raises(ValueError, match=r"divisible by 2; got event shape \[3, 4, 1\]"):
    bijector.forward(np.ones([1, 3, 4, 1]))
  with pytest.raises(ValueError, match=r"divisible by 2; got event shape \[3, 4, 1\]"):
    bijector.forward_event_shape([3, 4, 1])
  with pytest.raises(ValueError, match=r"channels divisible by 4; got event shape \[2, 2, 6\]"):
    bijector.inverse(np.ones([1, 2, 2, 6]))
  with pytest.raises(ValueError, match=r"known rank >= 3"):
    bijector.forward(np.ones([4, 4]))


def test_event_shape_tensors_check_what_the_static_shapes_check():
  # forward_event_shape_tensor([3, 4, 1]) returned [1, 2, 4], rounding the height down.
  bijector = tffb.Squeeze()
  with pytest.raises(ValueError, match=r"divisible by 2; got event shape \[3, 4, 1\]"):
    bijector.forward_event_shape_tensor([3, 4, 1])
  with pytest.raises(ValueError, match=r"channels divisible by 4; got event shape \[2, 2, 6\]"):
    bijector.inverse_event_shape_tensor([2, 2, 6])
  np.testing.assert_array_equal(bijector.forward_event_shape_tensor([4, 6, 3]), [2, 3, 12])
  np.testing.assert_array_equal(bijector.inverse_event_shape_tensor([2, 3, 12]), [4, 6, 3])
  # Shapes known only when the graph runs: an assertion with validate_args, as in TFP.
  checked = tffb.Squeeze(validate_args=True)
  forward = tf.function(checked.forward_event_shape_tensor,
                        input_signature=[tf.TensorSpec([3], tf.int32)])
  np.testing.assert_array_equal(forward(tf.constant([4, 6, 3])), [2, 3, 12])
  with pytest.raises(tf.errors.InvalidArgumentError, match="divisible by 2"):
    forward(tf.constant([3, 4, 1]))
  inverse = tf.function(checked.inverse_event_shape_tensor,
                        input_signature=[tf.TensorSpec([3], tf.int32)])
  with pytest.raises(tf.errors.InvalidArgumentError, match="channels divisible by 4"):
    inverse(tf.constant([2, 2, 6]))


def test_an_unknown_event_rank_gives_an_unknown_shape_as_stock_tfp_does():
  bijector = tffb.Squeeze()
  unknown = tf.TensorShape(None)
  assert tfb.Reshape([4, 4, 1], [16]).inverse_event_shape(unknown).rank is None
  assert bijector.forward_event_shape(unknown).rank is None
  assert bijector.inverse_event_shape(unknown).rank is None
  assert tfb.Invert(bijector).forward_event_shape(unknown).rank is None
  for shape_function in (bijector.forward_event_shape, bijector.inverse_event_shape,
                         bijector.forward_event_shape_tensor,
                         bijector.inverse_event_shape_tensor):
    with pytest.raises(ValueError, match=r"rank 3 or more.*got event shape \[4, 4\]"):
      shape_function([4, 4])
