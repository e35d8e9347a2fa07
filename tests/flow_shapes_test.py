"""FlowModel.log_prob and sample follow TFP's shape contract, in every family.

`log_prob` takes points `[*sample_shape, *event_shape]` with any sample shape (one
point gives a scalar) and returns `[*sample_shape]`: the same numbers as the flat batch
`[N, *event_shape]`, since evaluation-mode log-densities are row-independent. Shapes
whose trailing dimensions are not the event shape are a clear error, and empty inputs
give empty outputs (`log_prob` of `[0, *event]` is `[0]`, `sample(0)` is
`[0, *event_shape]`).
"""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff

_FAMILIES = {
    "coupling": lambda: tff.models.NeuralSplineFlow(2, num_layers=1, hidden_units=(4,)),
    "autoregressive": lambda: tff.models.NeuralSplineFlow(
        2, num_layers=1, hidden_units=(4,), autoregressive=True),
    "residual": lambda: tff.models.ResidualFlow([2], num_blocks=1, hidden_units=(4,)),
    "ffjord": lambda: tff.models.FFJORDFlow([2], hidden_units=(4,)),
    "glow": lambda: tff.models.Glow([4, 4, 1], num_scales=1, steps_per_scale=1,
                                    hidden_channels=4),
}


def _points(model, n=6):
  rng = np.random.default_rng(0)
  if model.is_image_model:
    return rng.integers(0, 256, size=(n, *model.event_shape)).astype("float32")
  return rng.normal(size=(n, *model.event_shape)).astype("float32")


def _perturbed(name):
  keras.utils.set_random_seed(0)
  model = _FAMILIES[name]()
  rng = np.random.default_rng(1)
  for weight in model.trainable_weights:  # away from the identity start
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + 0.1 * rng.normal(size=value.shape).astype(value.dtype))
  return model


@pytest.mark.parametrize("name", sorted(_FAMILIES))
def test_any_sample_shape_gives_the_flat_batch_values(name):
  model = _perturbed(name)
  x = _points(model)
  event = model.event_shape
  flat = model.log_prob(x).numpy()
  assert flat.shape == (6,) and np.all(np.isfinite(flat))
  one = model.log_prob(x[0]).numpy()
  assert one.shape == ()
  np.testing.assert_allclose(one, flat[0], rtol=1e-5, atol=1e-5)
  grid = model.log_prob(x.reshape(2, 3, *event)).numpy()
  assert grid.shape == (2, 3)
  np.testing.assert_allclose(grid, flat.reshape(2, 3), rtol=1e-5, atol=1e-5)
  assert model.log_prob(x[:0]).shape == (0,)
  assert model.log_prob(x[:0].reshape(0, 3, *event)).shape == (0, 3)
  assert model.sample(0, seed=1).shape == (0, *event)


@pytest.mark.parametrize("name", ["coupling", "glow"])
def test_sample_shapes_under_xla(name):
  model = _perturbed(name)
  x = _points(model)
  log_prob = tf.function(model.log_prob, jit_compile=True)
  np.testing.assert_allclose(log_prob(tf.constant(x[0])).numpy(),
                             model.log_prob(x[:1]).numpy()[0], rtol=1e-5, atol=1e-5)
  assert log_prob(tf.constant(x.reshape(2, 3, *model.event_shape))).shape == (2, 3)


@pytest.mark.parametrize("name", sorted(_FAMILIES))
def test_trailing_dimensions_other_than_the_event_shape_are_an_error(name):
  model = _FAMILIES[name]()
  x = _points(model)
  bad = x[..., :1] if len(model.event_shape) == 1 else x[:, :2]
  event = str(model.event_shape).replace("[", r"\[").replace("]", r"\]")
  with pytest.raises(ValueError, match=f"log_prob takes points of event_shape {event} "
                                       f"after any sample shape"):
    model.log_prob(bad)
  with pytest.raises(ValueError, match="log_prob takes points of event_shape"):
    model.log_prob(np.float32(1.0))


def test_contexts_follow_the_sample_shape():
  model = tff.models.NeuralSplineFlow(2, num_layers=1, hidden_units=(4,), context_dims=3)
  rng = np.random.default_rng(2)
  for weight in model.trainable_weights:
    weight.assign(weight + 0.3 * rng.normal(size=weight.shape).astype("float32"))
  x = rng.normal(size=(6, 2)).astype("float32")
  context = rng.normal(size=(6, 3)).astype("float32")
  flat = model.log_prob(x, context).numpy()
  np.testing.assert_allclose(model.log_prob(x[4], context[4]).numpy(), flat[4], rtol=1e-5)
  np.testing.assert_allclose(model.log_prob(x.reshape(3, 2, 2), context.reshape(3, 2, 3)),
                             flat.reshape(3, 2), rtol=1e-5)
  with pytest.raises(ValueError, match="one context row per row of x"):
    model.log_prob(x.reshape(3, 2, 2), context)
  assert model.sample(0, seed=1, context=context[:2]).shape == (0, 2, 2)
  assert model.log_prob(x[:0], context[:0]).shape == (0,)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("name", sorted(_FAMILIES))
def test_a_wrong_event_shape_is_an_error_when_shapes_are_known_only_at_run_time(
    name, jit_compile):
  # Keras' predict and evaluate retrace with relaxed shapes: the points then arrive as
  # [None, None, ...], and a reshape alone would score the wrong points.
  model = _FAMILIES[name]()
  x = _points(model)
  rank = len(x.shape)
  log_prob = tf.function(model.log_prob, jit_compile=jit_compile,
                         input_signature=[tf.TensorSpec([None] * rank, tf.float32)])
  np.testing.assert_allclose(log_prob(x).numpy(), model.log_prob(x).numpy(), rtol=1e-5)
  # Same number of values, another event shape: [6, 2] as [3, 4], [6, 4, 4, 1] as
  # [6, 2, 8, 1].
  bad = x.reshape(3, 4) if rank == 2 else x.reshape(x.shape[0], 2, 8, 1)
  with pytest.raises(tf.errors.InvalidArgumentError, match="not compatible with expected"):
    log_prob(bad)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("preset", ["nsf", "residual"])
def test_the_distribution_rejects_a_wrong_event_size_known_only_at_run_time(
    preset, jit_compile):
  # ActNorm, the presets' first layer, broadcast a [N, 1] input against its [3]
  # parameters: the distribution scored [x, x, x] and the bijector mapped it.
  keras.utils.set_random_seed(0)
  model = (tff.models.NeuralSplineFlow(event_shape=[3], num_blocks=2, hidden_units=(8,))
           if preset == "nsf" else
           tff.models.ResidualFlow(event_shape=[3], num_blocks=1, hidden_units=(8,)))
  x = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
  model.log_prob(x)
  spec = [tf.TensorSpec([None, None], tf.float32)]
  log_prob = tf.function(lambda x: model.distribution.log_prob(x), input_signature=spec,
                         jit_compile=jit_compile)
  inverse = tf.function(lambda x: model.bijector.inverse(x), input_signature=spec,
                        jit_compile=jit_compile)
  np.testing.assert_allclose(log_prob(x), model.log_prob(x), rtol=1e-5)
  for bad in (x[:, :1], np.concatenate([x, x[:, :1]], 1)):
    with pytest.raises(tf.errors.InvalidArgumentError, match="3 channels|compatible"):
      log_prob(bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match="3 channels|compatible"):
      inverse(bad)


def test_keras_predict_rejects_a_wrong_event_shape_after_a_good_call():
  model = _FAMILIES["glow"]()
  x = _points(model)
  model.predict(x, verbose=0)
  with pytest.raises(tf.errors.InvalidArgumentError, match="not compatible with expected"):
    model.predict(x.reshape(6, 2, 8, 1), verbose=0)


def test_a_context_row_count_is_checked_when_known_only_at_run_time():
  model = tff.models.NeuralSplineFlow(2, num_layers=1, hidden_units=(4,), context_dims=3)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(6, 2)).astype("float32")
  context = rng.normal(size=(6, 3)).astype("float32")
  signature = [tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None, 3], tf.float32)]
  for jit_compile in (False, True):
    log_prob = tf.function(model.log_prob, jit_compile=jit_compile,
                           input_signature=signature)
    np.testing.assert_allclose(log_prob(x, context).numpy(),
                               model.log_prob(x, context).numpy(), rtol=1e-5)
    # One row for six points would broadcast in the layers: a run-time error instead.
    with pytest.raises(tf.errors.InvalidArgumentError):
      log_prob(x, context[:1])
  # Rows of another shape but as many: [3, 2] rows for [2, 3] points. XLA drops
  # assertions, so the check must fail to compile there.
  signature = [tf.TensorSpec([None, None, 2], tf.float32),
               tf.TensorSpec([None, None, 3], tf.float32)]
  for jit_compile in (False, True):
    log_prob = tf.function(model.log_prob, jit_compile=jit_compile,
                           input_signature=signature)
    np.testing.assert_allclose(
        log_prob(x.reshape(2, 3, 2), context.reshape(2, 3, 3)).numpy(),
        model.log_prob(x, context).numpy().reshape(2, 3), rtol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError):
      log_prob(x.reshape(2, 3, 2), context.reshape(3, 2, 3))


def test_sample_count_must_be_a_non_negative_int():
  model = _FAMILIES["coupling"]()
  for n in (-1, 2.5):
    with pytest.raises(ValueError, match="n must be a non-negative int"):
      model.sample(n)


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
