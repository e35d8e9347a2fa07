"""tfp_flows.layers.GaussianPrior: class-conditional label shapes and label checks."""

import sys

import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff

NUM_CLASSES = 3


def _prior(event_shape, seed=0):
  """A built class-conditional prior with a random (non-identity) table."""
  layer = tff.layers.GaussianPrior(num_classes=NUM_CLASSES)
  layer.build((None, *event_shape))
  rng = np.random.default_rng(seed)
  layer.table.assign(rng.normal(scale=0.5, size=layer.table.shape).astype("float32"))
  return layer


def _closed_form(layer, x, labels):
  """z = (x - mu_y) / sigma_y and ildj = -sum over the event of log sigma_y, in numpy."""
  table = layer.table.numpy().astype(np.float64)
  channels = table.shape[1] // 2
  labels = np.asarray(labels)
  event_ndims = layer.event_ndims
  shape = labels.shape + (1,) * (event_ndims - 1) + (channels,)
  mu = table[labels, :channels].reshape(shape)
  log_sigma = table[labels, channels:].reshape(shape)
  z = (np.asarray(x, np.float64) - mu) * np.exp(-log_sigma)
  ildj = -np.broadcast_to(log_sigma, np.shape(x)).sum(
      axis=tuple(range(-event_ndims, 0)))
  return z, ildj


@pytest.mark.parametrize("event_shape", [[3], [2, 2, 3]])
def test_labels_of_any_batch_shape(event_shape):
  # A single label scores one event (log-det of shape []); labels [2, 4] score x
  # [2, 4, *event]. Both were wrong before: labels were flattened to one axis.
  layer = _prior(event_shape)
  bijector = layer.bijector
  rng = np.random.default_rng(1)
  ndims = len(event_shape)
  for labels in [np.int32(2), np.array([[0, 1, 2, 1], [2, 2, 0, 1]], np.int32)]:
    x = rng.normal(size=labels.shape + tuple(event_shape)).astype("float32")
    z = bijector.inverse(x, conditional_input=labels)
    ildj = bijector.inverse_log_det_jacobian(x, event_ndims=ndims,
                                             conditional_input=labels)
    want_z, want_ildj = _closed_form(layer, x, labels)
    assert ildj.shape == labels.shape
    np.testing.assert_allclose(z.numpy(), want_z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ildj.numpy(), want_ildj, rtol=1e-5, atol=1e-5)
  # Whole float labels are read as their integer value.
  x = rng.normal(size=[3, *event_shape]).astype("float32")
  np.testing.assert_allclose(
      layer(x, context=tf.constant([2.0, 0.0, 1.0]))[1].numpy(),
      _closed_form(layer, x, [2, 0, 1])[1], rtol=1e-5, atol=1e-5)


BAD_LABELS = [3, -1, 100, 1.5, float("nan")]


@pytest.mark.parametrize("bad", BAD_LABELS)
def test_bad_labels_raise_eagerly_and_in_graphs(bad):
  layer = _prior([3])
  x = np.zeros([3, 3], np.float32)
  dtype = tf.float32 if isinstance(bad, float) else tf.int32
  labels = tf.constant([0, bad, 2], dtype)
  message = r"class labels must be integers in \[0, 3\) \(num_classes=3\)"
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    layer(x, context=labels)
  graph = tf.function(lambda x, c: layer(x, context=c, training=False))
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    graph(x, labels)


@pytest.mark.parametrize("bad", BAD_LABELS)
def test_bad_labels_give_nan_rows_under_xla(bad):
  # XLA cannot raise, and its gather clamps (label 100 would be scored as class 2): the
  # bad row is NaN instead, the others keep their values.
  model = tff.FlowModel([tff.layers.GaussianPrior(num_classes=NUM_CLASSES)], [3],
                        context_shape=[], context_dtype="float32")
  layer = model.flow_layers[0]
  layer.table.assign(np.random.default_rng(2).normal(size=[3, 6]).astype("float32"))
  x = np.random.default_rng(3).normal(size=[3, 3]).astype("float32")
  good = model.log_prob(x, context=np.array([0.0, 1.0, 2.0], np.float32)).numpy()
  compiled = tf.function(lambda x, c: model(x, context=c, training=False),
                         jit_compile=True)
  got = compiled(tf.constant(x), tf.constant([0.0, bad, 2.0])).numpy()
  assert np.isnan(got[1])
  np.testing.assert_allclose(got[[0, 2]], good[[0, 2]], rtol=1e-6)


def test_out_of_range_int_labels_in_a_class_conditional_model():
  # Int labels, as Glow takes them: eagerly an error, under XLA NaN for that row only.
  model = tff.FlowModel([tff.layers.GaussianPrior(num_classes=NUM_CLASSES)], [2, 2, 1],
                        context_shape=[], context_dtype="int32")
  x = np.random.default_rng(4).normal(size=[3, 2, 2, 1]).astype("float32")
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"integers in \[0, 3\)"):
    model.log_prob(x, context=np.array([0, 7, 2], np.int32))
  compiled = tf.function(lambda x, c: model(x, context=c, training=False),
                         jit_compile=True)
  got = compiled(tf.constant(x), tf.constant([0, 100, 2])).numpy()
  good = model.log_prob(x, context=np.array([0, 2, 2], np.int32)).numpy()
  assert np.isnan(got[1])
  np.testing.assert_allclose(got[[0, 2]], good[[0, 2]], rtol=1e-6)



@pytest.mark.parametrize("bad, dtype", [(2**32 + 1, np.int64), (-(2**32) + 2, np.int64),
                                        (2**31, np.int64), (2**32 + 1, np.uint64)])
def test_int64_labels_outside_int32_are_rejected_not_wrapped(bad, dtype):
  # An int64 label 2**32 + 1 was cast to the model's int32 as 1 and scored as class 1.
  model = tff.FlowModel([tff.layers.GaussianPrior(num_classes=NUM_CLASSES)], [2, 2, 1],
                        context_shape=[], context_dtype="int32")
  x = np.random.default_rng(4).normal(size=[3, 2, 2, 1]).astype("float32")
  labels = np.array([0, bad, 2], dtype)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"integers in \[0, 3\)"):
    model.log_prob(x, context=labels)
  compiled = tf.function(lambda x, c: model(x, context=c, training=False),
                         jit_compile=True)
  got = compiled(tf.constant(x), tf.constant(labels)).numpy()
  good = model.log_prob(x, context=np.array([0, 2, 2], np.int32)).numpy()
  assert np.isnan(got[1])
  np.testing.assert_allclose(got[[0, 2]], good[[0, 2]], rtol=1e-6)

if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
