"""tfp_flows.export: a SavedModel that serves without tfp_flows or TFP.

Each test exports a tiny Glow, then a fresh Python process in which importing
`tfp_flows` or `tensorflow_probability` raises (and which checks at the end that neither
is in `sys.modules`) loads it with `tf.saved_model.load`, calls every signature with two
batch sizes and writes the outputs back. They are compared with the live model here:
log_prob to 1e-5, seeded samples exactly (the same seed tensor), forward and inverse to
float32 round-off.
"""

import json
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tfp_flows import export
from tfp_flows.bijectors import conditioning

NUM_BITS = 3
IMAGE = [4, 4, 2]

_SERVER = textwrap.dedent("""
    import importlib.abc
    import json
    import sys

    class _Forbidden(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tfp_flows", "tensorflow_probability"):
          raise ImportError(f"serving must not need {name}")
        return None

    sys.meta_path.insert(0, _Forbidden())

    import numpy as np
    import tensorflow as tf

    calls = json.loads(open(sys.argv[1]).read())
    loaded = {}
    for i, call in enumerate(calls):
      if call["dir"] not in loaded:
        loaded[call["dir"]] = tf.saved_model.load(call["dir"])
      function = loaded[call["dir"]].signatures[call["signature"]]
      inputs = dict(np.load(call["inputs"]))
      outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
      np.savez(call["outputs"], **{k: v.numpy() for k, v in outputs.items()})
    assert "tensorflow_probability" not in sys.modules, "TFP was imported"
    assert "tfp_flows" not in sys.modules, "tfp_flows was imported"
    print("SERVED", len(calls))
""")


def _glow(num_classes=None):
  keras.utils.set_random_seed(0)
  model = tff.models.Glow(IMAGE, num_scales=2, steps_per_scale=1, hidden_channels=8,
                          num_bits=NUM_BITS, num_classes=num_classes)
  rng = np.random.default_rng(1)
  for weight in model.trainable_weights:  # away from the identity start
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + 0.1 * rng.normal(size=value.shape).astype(value.dtype))
  return model


def _pixels(n, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 2 ** NUM_BITS, size=[n, *IMAGE]).astype("float32")


def _serve(tmp_path, model_dir, calls):
  """Runs the calls [(signature, inputs)] in a fresh process; returns their outputs."""
  spec = []
  for i, (signature, inputs) in enumerate(calls):
    np.savez(tmp_path / f"in_{i}.npz", **inputs)
    spec.append({"dir": str(model_dir), "signature": signature,
                 "inputs": str(tmp_path / f"in_{i}.npz"),
                 "outputs": str(tmp_path / f"out_{i}.npz")})
  (tmp_path / "calls.json").write_text(json.dumps(spec))
  result = subprocess.run([sys.executable, "-c", _SERVER, str(tmp_path / "calls.json")],
                          capture_output=True, text=True, timeout=600, check=False,
                          cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-4000:]
  assert f"SERVED {len(calls)}" in result.stdout
  return [dict(np.load(s["outputs"])) for s in spec]


def _live(model, direction, value, context=None):
  """model.bijector.forward or .inverse, eagerly, with the context routed."""
  bijector = model.bijector
  kwargs = {}
  if context is not None:
    kwargs = conditioning.conditional_kwargs(bijector, tf.constant(context))
  return getattr(bijector, direction)(tf.constant(value), **kwargs).numpy()


def test_unconditional_glow_serves_without_the_library(tmp_path):
  model = _glow()
  model_dir = tmp_path / "glow"
  assert pathlib.Path(export.save(model, model_dir)) == model_dir
  x3, x5 = _pixels(3, 0), _pixels(5, 1)
  z2 = np.random.default_rng(2).normal(size=[2, *model.latent_shape]).astype("float32")
  seed = np.array([7, 9], "int32")
  calls = [
      ("log_prob", {"x": x3}),
      ("log_prob", {"x": x5}),
      ("sample", {"n": np.int32(2), "seed": seed}),
      ("sample", {"n": np.int32(5), "seed": seed}),
      ("forward", {"z": z2}),
      ("inverse", {"x": x3 + 0.5}),
  ]
  out = _serve(tmp_path, model_dir, calls)

  for (_, inputs), served in zip(calls[:2], out[:2]):
    np.testing.assert_allclose(served["log_prob"], model.log_prob(inputs["x"]).numpy(),
                               rtol=1e-5)
  for (_, inputs), served in zip(calls[2:4], out[2:4]):
    live = model.sample(int(inputs["n"]), seed=tf.constant(seed)).numpy()
    assert served["samples"].shape == (int(inputs["n"]), *IMAGE)
    np.testing.assert_array_equal(served["samples"], live)
  # The first two of five samples are the two samples (same seed, same base draws).
  np.testing.assert_array_equal(out[3]["samples"][:2], out[2]["samples"])
  np.testing.assert_allclose(out[4]["x"], _live(model, "forward", z2), rtol=1e-5,
                             atol=1e-4)
  np.testing.assert_allclose(out[5]["z"], _live(model, "inverse", x3 + 0.5), rtol=1e-5,
                             atol=1e-5)


def test_class_conditional_glow_serves_without_the_library(tmp_path):
  model = _glow(num_classes=3)
  prior = model.flow_layers[-1].flow_layers[-1]
  assert isinstance(prior, tff.layers.GaussianPrior)
  prior.table.assign(np.random.default_rng(3).normal(size=[3, 32]).astype("float32"))
  model_dir = tmp_path / "conditional_glow"
  export.save(model, model_dir)
  x3, x5 = _pixels(3, 0), _pixels(5, 1)
  labels3, labels5 = np.array([0, 1, 2], "int32"), np.array([2, 2, 0, 1, 1], "int32")
  z2 = np.random.default_rng(2).normal(size=[2, *model.latent_shape]).astype("float32")
  seed = np.array([7, 9], "int32")
  calls = [
      ("log_prob", {"x": x3, "context": labels3}),
      ("log_prob", {"x": x5, "context": labels5}),
      ("sample", {"n": np.int32(2), "seed": seed, "context": np.int32(1)}),
      ("sample", {"n": np.int32(5), "seed": seed, "context": np.int32(2)}),
      ("forward", {"z": z2, "context": labels3[:2]}),
      ("inverse", {"x": x3 + 0.5, "context": labels3}),
  ]
  out = _serve(tmp_path, model_dir, calls)

  for (_, inputs), served in zip(calls[:2], out[:2]):
    live = model.log_prob(inputs["x"], context=inputs["context"]).numpy()
    np.testing.assert_allclose(served["log_prob"], live, rtol=1e-5)
  for (_, inputs), served in zip(calls[2:4], out[2:4]):
    live = model.sample(int(inputs["n"]), seed=tf.constant(seed),
                        context=inputs["context"]).numpy()
    assert served["samples"].shape == (int(inputs["n"]), *IMAGE)
    np.testing.assert_array_equal(served["samples"], live)
  np.testing.assert_allclose(out[4]["x"], _live(model, "forward", z2, labels3[:2]),
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(out[5]["z"], _live(model, "inverse", x3 + 0.5, labels3),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("autoregressive", [False, True])
def test_conditional_neural_spline_flow_serves_without_the_library(tmp_path,
                                                                  autoregressive):
  # The autoregressive variant samples through a tf.while_loop of MADE passes.
  keras.utils.set_random_seed(0)
  model = tff.models.NeuralSplineFlow(3, num_layers=2, num_bins=4, hidden_units=(8,),
                                      autoregressive=autoregressive, context_dims=2)
  rng = np.random.default_rng(1)
  for weight in model.trainable_weights:
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + 0.2 * rng.normal(size=value.shape).astype(value.dtype))
  model_dir = tmp_path / "nsf"
  export.save(model, model_dir)
  x = rng.normal(size=[4, 3]).astype("float32")
  context = rng.normal(size=[4, 2]).astype("float32")
  seed = np.array([3, 4], "int32")
  calls = [("log_prob", {"x": x, "context": context}),
           ("sample", {"n": np.int32(6), "seed": seed, "context": context[0]}),
           ("forward", {"z": x, "context": context})]
  out = _serve(tmp_path, model_dir, calls)
  np.testing.assert_allclose(out[0]["log_prob"],
                             model.log_prob(x, context=context).numpy(), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(
      out[1]["samples"], model.sample(6, seed=tf.constant(seed), context=context[0]))
  np.testing.assert_allclose(out[2]["x"], _live(model, "forward", x, context),
                             rtol=1e-5, atol=1e-5)


def test_export_is_reachable_as_tff_export():
  # DESIGN.md's public API: `import tfp_flows as tff; tff.export.save(model, path)`.
  code = "import tfp_flows as tff; print(tff.export.save.__name__)"
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().endswith("save")


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
