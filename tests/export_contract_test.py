"""tfp_flows.export: the served input contract, empty requests and float64 models.

Four small models are exported once each: a class-conditional Glow and a conditional
spline coupling flow in float64, a float64 flow with a known Gaussian density
(`x = loc + std * z`, one ActNorm), and the FFJORD preset in float32. One fresh Python
process, in which importing `tfp_flows` or `tensorflow_probability` raises, serves
every call twice: through `tf.saved_model.load` and through the TF1 session loader
that TensorFlow Serving uses, run with the C++ session API (`Session::MakeCallable`),
which like TensorFlow Serving sends a tensor of any shape to the graph (the Python
`Session.run` rejects a wrong shape itself, so it would not test the graph). The
checks:

* a bad input (shape, dtype, pixel range and integrality, class label, `n`, seed,
  non-finite values) raises `InvalidArgumentError` with the exact message of
  `export_checks.ServingContract`, never a number;
* empty requests (`N = 0` rows, `n = 0`) give empty results of the right shape;
* float64 signatures take and return float64, and their numbers are float64 numbers:
  the Gaussian log-density equals its closed form to 1e-12, the others the live
  float64 model to 1e-12 (a float32 graph would be ~1e-7 off).
"""

import contextlib
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfp_flows as tff
from tfp_flows import export
from tests.testing import serving
from tfp_flows.bijectors import conditioning

LOADERS = ("load", "session")
IMAGE = [4, 4, 2]
NUM_BITS = 3
SEED = np.array([3, 4], "int32")
LOC = np.array([1.0, -2.0])
STD = np.array([0.5, 2.0])

_SERVER = serving.SERVER_PREAMBLE + textwrap.dedent("""
    from tensorflow.core.protobuf import config_pb2

    def session_run(directory, signature, inputs):
      # The TF1 session loader and the C++ session API: no Python-side checks of the
      # fed shapes or dtypes.
      session, meta_graph = load_session(directory)
      signature_def = meta_graph.signature_def[signature]
      names, outputs = sorted(inputs), sorted(signature_def.outputs)
      options = config_pb2.CallableOptions(
          feed=[signature_def.inputs[k].name for k in names],
          fetch=[signature_def.outputs[k].name for k in outputs])
      values = session._make_callable_from_options(options)(*[inputs[k] for k in names])
      return dict(zip(outputs, values))

    spec = json.loads(open(sys.argv[1]).read())
    loaded, signatures = {}, {}
    for call in spec["calls"]:
      inputs = dict(np.load(call["inputs"]))
      try:
        if call["loader"] == "session":
          outputs = session_run(call["dir"], call["signature"], inputs)
        else:
          if call["dir"] not in loaded:
            loaded[call["dir"]] = tf.saved_model.load(call["dir"])
            signatures[call["dir"]] = {
                name: {arg: [spec.shape.as_list(), spec.dtype.name]
                       for arg, spec in function.structured_input_signature[1].items()}
                for name, function in loaded[call["dir"]].signatures.items()}
          function = loaded[call["dir"]].signatures[call["signature"]]
          outputs = {k: v.numpy() for k, v in
                     function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
        np.savez(call["outputs"], **outputs)
      except Exception as error:  # reported to the test, which checks type and message
        with open(call["error"], "w") as f:
          json.dump({"type": type(error).__name__, "message": str(error)}, f)
    with open(spec["signatures"], "w") as f:
      json.dump(signatures, f)
    assert "tensorflow_probability" not in sys.modules, "TFP was imported"
    assert "tfp_flows" not in sys.modules, "tfp_flows was imported"
    print("SERVED", len(spec["calls"]))
""")


@contextlib.contextmanager
def _float64():
  """Models built inside are float64 (Keras' global dtype policy)."""
  policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy("float64")
  try:
    yield
  finally:
    keras.config.set_dtype_policy(policy)


def _perturb(model, scale):
  rng = np.random.default_rng(1)
  for weight in model.trainable_weights:  # away from the identity start
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))
  return model


def _normal(shape, seed, dtype="float64"):
  return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _pixels(n, seed, dtype="float64"):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 2**NUM_BITS, size=[n, *IMAGE]).astype(dtype)


def _live(model, direction, value, context=None):
  bijector = model.bijector
  kwargs = conditioning.conditional_kwargs(
      bijector, None if context is None else tf.constant(context))
  return getattr(bijector, direction)(tf.constant(value), **kwargs).numpy()


def _glow64():
  """Class-conditional Glow (3 classes, 3-bit pixels), float64; labels 0, 1, 2."""
  keras.utils.set_random_seed(0)
  with _float64():
    model = _perturb(tff.models.Glow(IMAGE, num_scales=2, steps_per_scale=1,
                                     hidden_channels=8, num_bits=NUM_BITS, num_classes=3),
                     0.1)
  x, labels = _pixels(3, 0), np.array([0, 1, 2], "int32")
  z = _normal([2, *model.latent_shape], 1)
  bad = lambda value: np.where(np.arange(x.size).reshape(x.shape) == 5, value, x)
  # Inside the logit's domain, (-4/9, 8 + 4/9) for alpha 0.05, beyond the pixels' [0, 8].
  margin = np.where(np.arange(x.size).reshape(x.shape) == 7, -0.4, bad(8.4))
  calls = {
      "log_prob": ("log_prob", {"x": x, "context": labels}),
      "forward": ("forward", {"z": z, "context": labels[:2]}),
      "inverse": ("inverse", {"x": x + 0.5, "context": labels}),
      "sample": ("sample", {"n": np.int32(2), "seed": SEED, "context": np.int32(1)}),
      **_empty_calls(model, {"context": np.zeros([0], "int32")},
                     {"context": np.int32(0)}),
      "half_pixel": ("log_prob", {"x": bad(0.5), "context": labels}),
      "pixel_too_large": ("log_prob", {"x": bad(8.0), "context": labels}),
      "negative_pixel": ("log_prob", {"x": bad(-1.0), "context": labels}),
      "nan_pixel": ("log_prob", {"x": bad(np.nan), "context": labels}),
      "one_channel": ("log_prob", {"x": x[..., :1], "context": labels}),
      "label_too_large": ("log_prob", {"x": x, "context": np.array([0, 3, 1], "int32")}),
      "negative_label": ("log_prob", {"x": x, "context": np.array([0, -1, 1], "int32")}),
      "float_labels": ("log_prob", {"x": x, "context": labels.astype("float32")}),
      "too_few_labels": ("log_prob", {"x": x, "context": labels[:2]}),
      "sample_label": ("sample", {"n": np.int32(2), "seed": SEED,
                                  "context": np.int32(3)}),
      "sample_label_rows": ("sample", {"n": np.int32(2), "seed": SEED,
                                       "context": np.array([1, 2], "int32")}),
      "fresh_label": ("sample_fresh", {"n": np.int32(2), "context": np.int32(5)}),
      "forward_label": ("forward", {"z": z, "context": np.array([0, 4], "int32")}),
      "inverse_beyond_bins": ("inverse", {"x": bad(8.5), "context": labels}),
      "inverse_margin": ("inverse", {"x": margin, "context": labels}),
      "float32_pixels": ("log_prob", {"x": x.astype("float32"), "context": labels}),
  }
  live = {"log_prob": model.log_prob(x, context=labels).numpy(),
          "forward": _live(model, "forward", z, labels[:2]),
          "inverse": _live(model, "inverse", x + 0.5, labels),
          "inverse_margin": _live(model, "inverse", margin, labels),
          "sample": model.sample(2, seed=tf.constant(SEED), context=np.int32(1)).numpy()}
  return model, calls, live


def _spline64():
  """Conditional spline coupling flow over 3-vectors with 2-vector contexts, float64."""
  keras.utils.set_random_seed(0)
  with _float64():
    model = _perturb(tff.models.NeuralSplineFlow(3, num_layers=2, num_bins=4,
                                                 hidden_units=(8,), context_dims=2), 0.2)
  x, context, row = _normal([3, 3], 2), _normal([3, 2], 3), _normal([2], 4)
  z = _normal([3, 3], 5)
  nan_context = np.where(np.arange(6).reshape(3, 2) == 3, np.nan, context)
  calls = {
      "log_prob": ("log_prob", {"x": x, "context": context}),
      "forward": ("forward", {"z": z, "context": context}),
      "inverse": ("inverse", {"x": x, "context": context}),
      "sample": ("sample", {"n": np.int32(4), "seed": SEED, "context": row}),
      "nan_context": ("log_prob", {"x": x, "context": nan_context}),
      "wide_context": ("log_prob", {"x": x, "context": _normal([3, 3], 6)}),
      "context_rows": ("inverse", {"x": x, "context": context[:1]}),
      "sample_context_batch": ("sample", {"n": np.int32(4), "seed": SEED,
                                          "context": context}),
  }
  live = {"log_prob": model.log_prob(x, context=context).numpy(),
          "forward": _live(model, "forward", z, context),
          "inverse": _live(model, "inverse", x, context),
          "sample": model.sample(4, seed=tf.constant(SEED), context=row).numpy()}
  return model, calls, live


def _gaussian64():
  """x = loc + std * z in float64: log p(x) = sum log N(x; loc, std), in closed form."""
  with _float64():
    model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2])
  layer = model.flow_layers[0]
  layer.loc.assign(LOC)
  layer.log_scale.assign(np.log(STD))
  x, z = _normal([5, 2], 7), _normal([4, 2], 8)
  calls = {
      "log_prob": ("log_prob", {"x": x}),
      "forward": ("forward", {"z": z}),
      "inverse": ("inverse", {"x": x}),
      "sample": ("sample", {"n": np.int32(4), "seed": SEED}),
      "x_3x1": ("log_prob", {"x": x[:3, :1]}),
      "inverse_3x1": ("inverse", {"x": x[:3, :1]}),
      "default_rank_3": ("serving_default", {"x": x[:, :, None]}),
      "forward_rank_1": ("forward", {"z": z[:, 0]}),
      "inf_x": ("log_prob", {"x": np.where(np.arange(10).reshape(5, 2) == 2, np.inf, x)}),
      "nan_z": ("forward", {"z": np.where(np.arange(8).reshape(4, 2) == 7, np.nan, z)}),
      "float32_x": ("log_prob", {"x": x.astype("float32")}),
      "negative_n": ("sample", {"n": np.int32(-1), "seed": SEED}),
      "vector_n": ("sample", {"n": np.array([2, 3], "int32"), "seed": SEED}),
      "negative_seed": ("sample", {"n": np.int32(2), "seed": np.array([-3, 4], "int32")}),
      "short_seed": ("sample", {"n": np.int32(2), "seed": np.array([4], "int32")}),
      "fresh_negative_n": ("sample_fresh", {"n": np.int32(-2)}),
  }
  samples = model.sample(4, seed=tf.constant(SEED)).numpy()
  live = {"sample": samples}
  return model, calls, live


def _ffjord():
  """The FFJORD preset, float32: empty requests, a wrong event shape, infinite x.

  rk4's fixed steps trace faster than dopri5's adaptive loop; the checks and the empty
  guard run before the solver either way.
  """
  keras.utils.set_random_seed(0)
  model = _perturb(tff.models.FFJORDFlow([3], hidden_units=(8,), solver="rk4"), 0.1)
  x = _normal([3, 3], 9, "float32")
  calls = {**_empty_calls(model, {}, {}),
           "x_3x2": ("log_prob", {"x": x[:, :2]}),
           "inf_x": ("log_prob", {"x": np.where(np.eye(3) > 0, np.inf, x)})}
  return model, calls, {}


def _empty_calls(model, batch_context, row):
  dtype = model.dtype_policy.variable_dtype
  return {
      "empty_log_prob": ("log_prob", {"x": np.zeros([0, *model.event_shape], dtype),
                                      **batch_context}),
      "empty_inverse": ("inverse", {"x": np.zeros([0, *model.event_shape], dtype),
                                    **batch_context}),
      "empty_forward": ("forward", {"z": np.zeros([0, *model.latent_shape], dtype),
                                    **batch_context}),
      "sample_0": ("sample", {"n": np.int32(0), "seed": SEED, **row}),
      "fresh_0": ("sample_fresh", {"n": np.int32(0), **row}),
  }


_CASES = {"glow64": _glow64, "spline64": _spline64, "gaussian64": _gaussian64,
          "ffjord": _ffjord}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """{case: {"model", "live", "signatures", "results": {(loader, call): outputs or error}}}.

  An error is `{"type": exception class name, "message": str(exception)}`.
  """
  root = tmp_path_factory.mktemp("export_contract")
  cases, calls = {}, []
  for name, make in _CASES.items():
    model, case_calls, live = make()
    cases[name] = {"model": model, "live": live, "calls": case_calls, "results": {}}
    directory = str(export.save(model, root / name))
    for call_name, (signature, inputs) in case_calls.items():
      np.savez(root / f"{name}-{call_name}-in.npz", **inputs)
      for loader in LOADERS:
        stem = root / f"{name}-{call_name}-{loader}"
        calls.append({"case": name, "name": call_name, "loader": loader, "dir": directory,
                      "signature": signature, "inputs": str(root / f"{name}-{call_name}-in.npz"),
                      "outputs": f"{stem}-out.npz", "error": f"{stem}-error.json"})
  spec = {"calls": calls, "signatures": str(root / "signatures.json")}
  (root / "spec.json").write_text(json.dumps(spec))
  result = subprocess.run([sys.executable, "-c", _SERVER, str(root / "spec.json")],
                          capture_output=True, text=True, timeout=900, check=False,
                          cwd=root)
  assert result.returncode == 0, result.stderr[-4000:]
  assert f"SERVED {len(calls)}" in result.stdout
  signatures = json.loads((root / "signatures.json").read_text())
  for call in calls:
    case = cases[call["case"]]
    case["signatures"] = signatures[call["dir"]]
    try:
      outputs = dict(np.load(call["outputs"]))
    except FileNotFoundError:
      outputs = json.loads(open(call["error"]).read())
    case["results"][call["loader"], call["name"]] = outputs
  return cases


def _outputs(served, case, loader, call):
  result = served[case]["results"][loader, call]
  assert "message" not in result, result
  return result


# (case, call, the exact text the message contains). `loaded`/`session` are the two
# loaders' own words for a tensor of the wrong dtype, rejected before the graph runs.
_GLOW_PIXELS = ("must hold pixel values, integers in [0, 8) (the Dequantize layer of "
                "the model has num_bits=3); got values such as] ")
_ERRORS = [
    ("gaussian64", "x_3x1", "log_prob: x must have shape [N, 2] (= [N, *event_shape]); "
                            "got shape] [3 1]"),
    ("gaussian64", "inverse_3x1", "inverse: x must have shape [N, 2] "
                                  "(= [N, *event_shape]); got shape] [3 1]"),
    ("gaussian64", "default_rank_3", "log_prob: x must have shape [N, 2] "
                                     "(= [N, *event_shape]); got shape] [5 2 1]"),
    ("gaussian64", "forward_rank_1", "forward: z must have shape [N, 2] "
                                     "(= [N, *latent_shape]); got shape] [4]"),
    ("gaussian64", "inf_x", "log_prob: x must be finite; got values such as] [inf]"),
    ("gaussian64", "nan_z", "forward: z must be finite; got values such as] [nan]"),
    ("gaussian64", "negative_n", "sample: n must be >= 0; got values such as] [-1]"),
    ("gaussian64", "vector_n", "sample: n must have shape [] (a scalar); got shape] [2]"),
    ("gaussian64", "negative_seed", "sample: seed must lie in [0, 2**31); got values "
                                    "such as] [-3]"),
    ("gaussian64", "short_seed", "sample: seed must have shape [2] (two int32 values); "
                                 "got shape] [1]"),
    ("gaussian64", "fresh_negative_n", "sample_fresh: n must be >= 0; got values such "
                                       "as] [-2]"),
    ("gaussian64", "float32_x", {"load": "expected to be a double tensor but is a float "
                                         "tensor",
                                 "session": "Type mismatch: actual float vs. expect double"}),
    ("glow64", "half_pixel", "log_prob: x " + _GLOW_PIXELS + "[0.5]"),
    ("glow64", "pixel_too_large", "log_prob: x " + _GLOW_PIXELS + "[8]"),
    ("glow64", "negative_pixel", "log_prob: x " + _GLOW_PIXELS + "[-1]"),
    ("glow64", "nan_pixel", "log_prob: x " + _GLOW_PIXELS + "[nan]"),
    ("glow64", "one_channel", "log_prob: x must have shape [N, 4, 4, 2] "
                              "(= [N, *event_shape]); got shape] [3 4 4 1]"),
    ("glow64", "label_too_large", "log_prob: context must hold class labels in [0, 3); "
                                  "got values such as] [3]"),
    ("glow64", "negative_label", "log_prob: context must hold class labels in [0, 3); "
                                 "got values such as] [-1]"),
    ("glow64", "too_few_labels", "log_prob: context must have one row per row of its "
                                 "input; got rows (context, input)] [2] [3]"),
    ("glow64", "sample_label", "sample: context must hold class labels in [0, 3); got "
                               "values such as] [3]"),
    ("glow64", "sample_label_rows", "sample: context must have shape [] "
                                    "(= context_shape, one row); got shape] [2]"),
    ("glow64", "fresh_label", "sample_fresh: context must hold class labels in [0, 3); "
                              "got values such as] [5]"),
    ("glow64", "forward_label", "forward: context must hold class labels in [0, 3); got "
                                "values such as] [4]"),
    ("glow64", "inverse_beyond_bins", "inverse: x must lie in (-0.444444, 8.44444), the "
                                      "domain of the logit of the Dequantize layer of "
                                      "the model (num_bits=3, alpha=0.05); got values "
                                      "such as] [8.5]"),
    ("glow64", "float_labels", {"load": "expected to be a int32 tensor but is a float "
                                        "tensor",
                                "session": "Type mismatch: actual float vs. expect int32"}),
    ("glow64", "float32_pixels", {"load": "expected to be a double tensor but is a float "
                                          "tensor",
                                  "session": "Type mismatch: actual float vs. expect "
                                             "double"}),
    ("spline64", "nan_context", "log_prob: context must be finite; got values such as] "
                                "[nan]"),
    ("spline64", "wide_context", "log_prob: context must have shape [N, 2] "
                                 "(= [N, *context_shape]); got shape] [3 3]"),
    ("spline64", "context_rows", "inverse: context must have one row per row of its "
                                 "input; got rows (context, input)] [1] [3]"),
    ("spline64", "sample_context_batch", "sample: context must have shape [2] "
                                         "(= context_shape, one row); got shape] [3 2]"),
    ("ffjord", "x_3x2", "log_prob: x must have shape [N, 3] (= [N, *event_shape]); got "
                        "shape] [3 2]"),
    ("ffjord", "inf_x", "log_prob: x must be finite; got values such as] [inf inf inf]"),
]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case,call,text", _ERRORS,
                         ids=[f"{case}-{call}" for case, call, _ in _ERRORS])
def test_a_bad_input_is_a_clear_error_not_a_number(served, loader, case, call, text):
  result = served[case]["results"][loader, call]
  assert "message" in result, f"{call} served numbers: {result}"
  assert result["type"] == "InvalidArgumentError", result
  text = text[loader] if isinstance(text, dict) else text
  assert text in result["message"], result["message"][-1500:]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", ["glow64", "ffjord"])
def test_empty_requests_give_empty_results(served, loader, case):
  model = served[case]["model"]
  dtype = np.dtype(model.dtype_policy.variable_dtype)
  event, latent = tuple(model.event_shape), tuple(model.latent_shape)
  expected = {"empty_log_prob": ("log_prob", (0,)), "empty_inverse": ("z", (0, *latent)),
              "empty_forward": ("x", (0, *event)), "sample_0": ("samples", (0, *event)),
              "fresh_0": ("samples", (0, *event))}
  for call, (key, shape) in expected.items():
    value = _outputs(served, case, loader, call)[key]
    assert value.shape == shape and value.dtype == dtype, (call, value.shape, value.dtype)


@pytest.mark.parametrize("case,dtype", [("spline64", "float64"), ("gaussian64", "float64"),
                                        ("glow64", "float64"), ("ffjord", "float32")])
def test_signature_dtypes_follow_the_model(served, case, dtype):
  signatures = served[case]["signatures"]
  assert signatures["log_prob"]["x"] == signatures["inverse"]["x"]
  assert signatures["log_prob"]["x"][1] == dtype
  assert signatures["forward"]["z"][1] == dtype
  assert signatures["sample"]["seed"] == [[2], "int32"]
  if case == "spline64":
    assert signatures["log_prob"]["context"] == [[None, 2], "float64"]
    assert signatures["sample"]["context"] == [[2], "float64"]
  if case == "glow64":
    assert signatures["log_prob"]["context"] == [[None], "int32"]
    assert signatures["sample"]["context"] == [[], "int32"]


@pytest.mark.parametrize("loader", LOADERS)
def test_float64_gaussian_equals_its_closed_form(served, loader):
  calls = served["gaussian64"]["calls"]
  x, z = calls["log_prob"][1]["x"], calls["forward"][1]["z"]
  expected = np.sum(-0.5 * ((x - LOC) / STD) ** 2 - np.log(STD) - 0.5 * np.log(2 * np.pi),
                    axis=-1)
  log_prob = _outputs(served, "gaussian64", loader, "log_prob")["log_prob"]
  assert log_prob.dtype == np.float64
  np.testing.assert_allclose(log_prob, expected, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(_outputs(served, "gaussian64", loader, "forward")["x"],
                             LOC + STD * z, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(_outputs(served, "gaussian64", loader, "inverse")["z"],
                             (x - LOC) / STD, rtol=1e-12, atol=1e-12)
  samples = _outputs(served, "gaussian64", loader, "sample")["samples"]
  np.testing.assert_allclose(samples, served["gaussian64"]["live"]["sample"], rtol=1e-12,
                             atol=1e-12)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", ["glow64", "spline64"])
def test_float64_outputs_equal_the_live_float64_model(served, loader, case):
  live = served[case]["live"]
  keys = {"log_prob": "log_prob", "forward": "x", "inverse": "z", "sample": "samples"}
  for call, key in keys.items():
    value = _outputs(served, case, loader, call)[key]
    assert value.dtype == np.float64, call
    np.testing.assert_allclose(value, live[call], rtol=1e-12, atol=1e-12, err_msg=call)


@pytest.mark.parametrize("loader", LOADERS)
def test_served_inverse_takes_the_whole_domain_of_the_logit(served, loader):
  # The check allowed [0, 2**num_bits] only, but the bijector's data side is the logit's
  # domain, and forward(z) lands in its margins: served inverse(forward(z)) failed.
  live = served["glow64"]["live"]["inverse_margin"]
  assert np.all(np.isfinite(live))
  np.testing.assert_allclose(_outputs(served, "glow64", loader, "inverse_margin")["z"],
                             live, rtol=1e-12, atol=1e-12)


def test_class_labels_need_a_declared_number_of_classes(tmp_path):
  # An integer context whose range no layer declares cannot be checked: export refuses.
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2], context_shape=[],
                        context_dtype="int32")
  with pytest.raises(ValueError, match="no layer declares num_classes"):
    export.save(model, tmp_path / "unchecked")


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
