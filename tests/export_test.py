"""tfp_flows.export: a SavedModel that serves every preset without tfp_flows or TFP.

A module fixture builds one small model per case (weights moved away from the
identity start), exports each, and runs every signature call of every case in one
fresh Python process in which importing `tfp_flows` or `tensorflow_probability` raises
(and which checks at the end that neither is in `sys.modules`). Each SavedModel is
loaded there with `tf.saved_model.load` (the Gaussian case twice, as two servers would)
and by the TF1 session loader that TensorFlow Serving uses. The outputs are compared here with
the live model: log_prob to 1e-6 (relative, plus 1e-6 absolute near zero), seeded
samples to float32 round-off, 1e-6 (the residual flow's fixed-point inverse to 1e-5,
see `_SAMPLE_ATOL`), forward and inverse to float32 round-off.
"""

import dataclasses
import json
import math
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
from tests.testing import serving
from tfp_flows.bijectors import conditioning

NUM_BITS = 3
IMAGE = [4, 4, 2]
SEED = np.array([7, 9], "int32")
OTHER_SEED = np.array([7, 10], "int32")
FRESH_N = 20000  # draws of the Gaussian case's large sample_fresh call
GAUSSIAN_LOC = np.array([1.0, -2.0])
GAUSSIAN_STD = np.array([0.5, 2.0])

_SERVER = serving.SERVER_PREAMBLE + textwrap.dedent("""
    def session_run(directory, signature, inputs):
      # The TF1 session loader, as TensorFlow Serving and `saved_model_cli run` use.
      session, meta_graph = load_session(directory)
      signature_def = meta_graph.signature_def[signature]
      feeds = {signature_def.inputs[k].name: v for k, v in inputs.items()}
      fetches = {k: v.name for k, v in signature_def.outputs.items()}
      return session.run(fetches, feeds)

    spec = json.loads(open(sys.argv[1]).read())
    loaded, signatures = {}, {}
    for call in spec["calls"]:
      inputs = dict(np.load(call["inputs"]))
      if call["copy"] == "session":
        np.savez(call["outputs"], **session_run(call["dir"], call["signature"], inputs))
        continue
      key = (call["dir"], call["copy"])
      if key not in loaded:
        loaded[key] = tf.saved_model.load(call["dir"])
        signatures[call["dir"]] = {
            name: {arg: spec.shape.as_list()
                   for arg, spec in function.structured_input_signature[1].items()}
            for name, function in loaded[key].signatures.items()}
        signatures[call["dir"]].update({
            "outputs of " + name: {key: spec.shape.as_list()
                                   for key, spec in function.structured_outputs.items()}
            for name, function in loaded[key].signatures.items()})
      function = loaded[key].signatures[call["signature"]]
      outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
      np.savez(call["outputs"], **{k: v.numpy() for k, v in outputs.items()})
    with open(spec["signatures"], "w") as f:
      json.dump(signatures, f)
    assert "tensorflow_probability" not in sys.modules, "TFP was imported"
    assert "tfp_flows" not in sys.modules, "tfp_flows was imported"
    print("SERVED", len(spec["calls"]))
""")


@dataclasses.dataclass
class _Case:
  """A model and the inputs of its calls (`x3`, `x5` batches; `context*` if conditional)."""
  model: tff.FlowModel
  x3: np.ndarray
  x5: np.ndarray
  context3: np.ndarray = None
  context5: np.ndarray = None
  sample_context: np.ndarray = None
  large_fresh_n: int = 0
  second_copy: bool = False
  outputs: dict = None
  signatures: dict = None

  def calls(self):
    """{call name: (signature, copy, inputs)}.

    Copy 0 is one `tf.saved_model.load` of the export, copy 1 a second one (as a second
    server would load it), "session" a load by the TF1 session loader that TensorFlow
    Serving uses.
    """
    with_context = lambda inputs, c: inputs if c is None else {**inputs, "context": c}
    z2 = np.random.default_rng(2).normal(
        size=[2, *self.model.latent_shape]).astype("float32")
    n = lambda k: np.int32(k)
    row = self.sample_context
    extra = {}
    if self.large_fresh_n:
      extra["fresh_large"] = ("sample_fresh", 0, {"n": n(self.large_fresh_n)})
    if self.second_copy:
      extra["fresh_copy"] = ("sample_fresh", 1, with_context({"n": n(3)}, row))
    return {
        **extra,
        "log_prob_3": ("log_prob", 0, with_context({"x": self.x3}, self.context3)),
        "log_prob_5": ("log_prob", 0, with_context({"x": self.x5}, self.context5)),
        "log_prob_5_again": ("log_prob", 0,
                             with_context({"x": self.x5}, self.context5)),
        "default_3": ("serving_default", 0, with_context({"x": self.x3}, self.context3)),
        "session_log_prob_5": ("log_prob", "session",
                               with_context({"x": self.x5}, self.context5)),
        "session_sample_5": ("sample", "session",
                             with_context({"n": n(5), "seed": SEED}, row)),
        "sample_2": ("sample", 0, with_context({"n": n(2), "seed": SEED}, row)),
        "sample_5": ("sample", 0, with_context({"n": n(5), "seed": SEED}, row)),
        "sample_5_again": ("sample", 0, with_context({"n": n(5), "seed": SEED}, row)),
        "sample_5_other": ("sample", 0,
                           with_context({"n": n(5), "seed": OTHER_SEED}, row)),
        "fresh_a": ("sample_fresh", 0, with_context({"n": n(3)}, row)),
        "fresh_b": ("sample_fresh", 0, with_context({"n": n(3)}, row)),
        "forward": ("forward", 0, with_context(
            {"z": z2}, None if self.context3 is None else self.context3[:2])),
        "inverse": ("inverse", 0, with_context({"x": self.inverse_input()},
                                               self.context3)),
    }

  def inverse_input(self):
    # Inside the dequantised pixel bins, where the data side of the bijector lives.
    return self.x3 + 0.5 if _has_dequantize(self.model) else self.x3


def _has_dequantize(model):
  return isinstance(model.flow_layers[0], tff.layers.Dequantize)


def _perturb(model, scale, seed=1):
  rng = np.random.default_rng(seed)
  for weight in model.trainable_weights:  # away from the identity start
    value = keras.ops.convert_to_numpy(weight)
    weight.assign(value + scale * rng.normal(size=value.shape).astype(value.dtype))
  return model


def _pixels(n, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 2 ** NUM_BITS, size=[n, *IMAGE]).astype("float32")


def _vectors(n, d, seed):
  return np.random.default_rng(seed).normal(size=[n, d]).astype("float32")


def _glow_case(num_classes=None):
  keras.utils.set_random_seed(0)
  model = _perturb(tff.models.Glow(IMAGE, num_scales=2, steps_per_scale=1,
                                   hidden_channels=8, num_bits=NUM_BITS,
                                   num_classes=num_classes), 0.1)
  if num_classes is None:
    return _Case(model, _pixels(3, 0), _pixels(5, 1))
  prior = model.flow_layers[-1].flow_layers[-1]
  prior.table.assign(np.random.default_rng(3).normal(size=[3, 32]).astype("float32"))
  return _Case(model, _pixels(3, 0), _pixels(5, 1), np.array([0, 1, 2], "int32"),
               np.array([2, 2, 0, 1, 1], "int32"), np.int32(1))


def _spline_case(autoregressive, context_dims, **preset_arguments):
  # The autoregressive flow samples through a tf.while_loop of D MADE passes, and
  # scan_blocks=True runs the couplings as one.
  keras.utils.set_random_seed(0)
  model = _perturb(tff.models.NeuralSplineFlow(
      3, num_layers=2, num_bins=4, hidden_units=(8,), autoregressive=autoregressive,
      context_dims=context_dims, **preset_arguments), 0.2)
  if context_dims is None:
    return _Case(model, _vectors(3, 3, 4), _vectors(5, 3, 5))
  return _Case(model, _vectors(3, 3, 4), _vectors(5, 3, 5), _vectors(3, 2, 6),
               _vectors(5, 2, 7), _vectors(1, 2, 8)[0])


def _residual_case(series):
  """The preset (exact evaluation log-det), or blocks whose evaluation uses the series."""
  keras.utils.set_random_seed(0)
  if series:
    # exact_max_dims=1 < D: evaluation uses the fixed-probe series estimator; Lipschitz
    # 0.5 keeps it to 9 terms (0.97 would unroll ~150 terms into every traced graph).
    blocks = [tff.layers.ResidualBlock(hidden_units=(8,), lipschitz=0.5, exact_max_dims=1)
              for _ in range(2)]
    model = tff.FlowModel(blocks, [3])
  else:
    model = tff.models.ResidualFlow([3], num_blocks=2, hidden_units=(8,))
  return _Case(_perturb(model, 0.1), _vectors(3, 3, 4), _vectors(5, 3, 5))


def _ffjord_case():
  # rk4 with its fixed step count traces faster than dopri5's adaptive loop (which
  # exports as well).
  keras.utils.set_random_seed(0)
  model = tff.models.FFJORDFlow([3], hidden_units=(8,), solver="rk4")
  return _Case(_perturb(model, 0.1), _vectors(3, 3, 4), _vectors(5, 3, 5))


def _gaussian_case():
  """x = loc + std * z: a flow whose distribution is a known diagonal Gaussian."""
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False)], [2])
  layer = model.flow_layers[0]
  layer.loc.assign(GAUSSIAN_LOC.astype("float32"))
  layer.log_scale.assign(np.log(GAUSSIAN_STD).astype("float32"))
  return _Case(model, _vectors(3, 2, 4), _vectors(5, 2, 5), large_fresh_n=FRESH_N,
               second_copy=True)


_CASES = {
    "glow": lambda: _glow_case(),
    "glow_class_conditional": lambda: _glow_case(num_classes=3),
    "spline_coupling_conditional": lambda: _spline_case(False, 2),
    "spline_autoregressive_conditional": lambda: _spline_case(True, 2),
    "spline_coupling_scan_conditional": lambda: _spline_case(False, 2, linear="permute",
                                                             scan_blocks=True),
    "residual_flow": lambda: _residual_case(series=False),
    "residual_series": lambda: _residual_case(series=True),
    "ffjord": _ffjord_case,
    "gaussian": _gaussian_case,
}

# Served and live samples agree to float32 round-off, not bit for bit: the exported
# graph's matmuls may block differently (oneDNN picks kernels by shape and CPU), which
# moved conditional spline samples by up to 1.8e-7 on an AVX-512 machine.
_SAMPLE_ROUNDOFF = 1e-6
# The residual flow samples by fixed-point iteration to a tolerance of 1e-5; the graph
# and eager runs may differ in the last bits of each iterate (fused kernels), which
# the contraction does not amplify beyond the solver tolerance.
_SAMPLE_ATOL = {"residual_flow": 1e-5, "residual_series": 1e-5}


@pytest.fixture(scope="module")
def served_all(tmp_path_factory):
  """Exports every case and serves all their calls in one fresh process.

  Returns `{"cases": {name: _Case with .outputs and .signatures}, "public_api": (return
  code, stdout, stderr) of the tff.export import check}`.
  """
  root = tmp_path_factory.mktemp("export")
  # Runs alongside the exports below (checked by test_export_is_reachable_as_tff_export).
  public_api = subprocess.Popen(
      [sys.executable, "-c", "import tfp_flows as tff; print(tff.export.save.__name__)"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  cases, calls = {}, []
  for name, make in _CASES.items():
    case = cases[name] = make()
    model_dir = root / name
    assert pathlib.Path(export.save(case.model, model_dir)) == model_dir
    for call_name, (signature, copy, inputs) in case.calls().items():
      stem = root / f"{name}-{call_name}"
      np.savez(f"{stem}-in.npz", **inputs)
      calls.append({"case": name, "name": call_name, "dir": str(model_dir),
                    "copy": copy, "signature": signature, "inputs": f"{stem}-in.npz",
                    "outputs": f"{stem}-out.npz"})
  spec = {"calls": calls, "signatures": str(root / "signatures.json")}
  (root / "spec.json").write_text(json.dumps(spec))
  result = subprocess.run([sys.executable, "-c", _SERVER, str(root / "spec.json")],
                          capture_output=True, text=True, timeout=900, check=False,
                          cwd=root)
  assert result.returncode == 0, result.stderr[-4000:]
  assert f"SERVED {len(calls)}" in result.stdout
  for case in cases.values():
    case.outputs = {}
  for call in calls:
    cases[call["case"]].outputs[call["name"]] = dict(np.load(call["outputs"]))
  signatures = json.loads((root / "signatures.json").read_text())
  for name, case in cases.items():
    case.signatures = signatures[str(root / name)]
  stdout, stderr = public_api.communicate(timeout=600)
  return {"cases": cases, "public_api": (public_api.returncode, stdout, stderr)}


@pytest.fixture(scope="module")
def served(served_all):
  return served_all["cases"]


def _live(model, direction, value, context=None):
  """model.bijector.forward or .inverse, eagerly, with the context routed."""
  bijector = model.bijector
  kwargs = {}
  if context is not None:
    kwargs = conditioning.conditional_kwargs(bijector, tf.constant(context))
  return getattr(bijector, direction)(tf.constant(value), **kwargs).numpy()


def _live_sample(case, n, seed):
  return case.model.sample(n, seed=tf.constant(seed), context=case.sample_context).numpy()


def _context(case, batch):
  return {3: case.context3, 5: case.context5}[batch]


@pytest.mark.parametrize("name", list(_CASES))
def test_log_prob_equals_the_live_model(served, name):
  case = served[name]
  for batch, x in ((3, case.x3), (5, case.x5)):
    live = case.model.log_prob(x, context=_context(case, batch)).numpy()
    np.testing.assert_allclose(case.outputs[f"log_prob_{batch}"]["log_prob"], live,
                               rtol=1e-6, atol=1e-6)
  # Deterministic: a repeated call gives the same numbers, bit for bit.
  np.testing.assert_array_equal(case.outputs["log_prob_5_again"]["log_prob"],
                                case.outputs["log_prob_5"]["log_prob"])
  # "serving_default" (what a request without a signature name runs) is log_prob.
  np.testing.assert_array_equal(case.outputs["default_3"]["log_prob"],
                                case.outputs["log_prob_3"]["log_prob"])


@pytest.mark.parametrize("name", list(_CASES))
def test_tensorflow_serving_session_loader_gives_the_same_outputs(served, name):
  # TensorFlow Serving restores the variables through the TF1 session loader, and
  # optimises the graph as a whole (last-bit differences in the residual series).
  case = served[name]
  np.testing.assert_allclose(case.outputs["session_log_prob_5"]["log_prob"],
                             case.outputs["log_prob_5"]["log_prob"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(case.outputs["session_sample_5"]["samples"],
                             case.outputs["sample_5"]["samples"], rtol=1e-6,
                             atol=_SAMPLE_ATOL.get(name, _SAMPLE_ROUNDOFF))


@pytest.mark.parametrize("name", list(_CASES))
def test_seeded_samples_equal_the_live_model(served, name):
  case = served[name]
  atol = _SAMPLE_ATOL.get(name, _SAMPLE_ROUNDOFF)
  event = tuple(case.model.event_shape)
  for n in (2, 5):
    samples = case.outputs[f"sample_{n}"]["samples"]
    assert samples.shape == (n, *event)
    assert np.all(np.isfinite(samples))
    np.testing.assert_allclose(samples, _live_sample(case, n, SEED),
                               rtol=_SAMPLE_ROUNDOFF, atol=atol)
  # Same seed, same samples: in a repeated call, and for the first rows of a
  # larger draw (the same base draws, up to the round-off of batch-size dependent
  # matmul blocking); another seed gives other samples.
  five = case.outputs["sample_5"]["samples"]
  np.testing.assert_array_equal(case.outputs["sample_5_again"]["samples"], five)
  np.testing.assert_allclose(five[:2], case.outputs["sample_2"]["samples"], rtol=1e-5,
                             atol=max(atol, 1e-6))
  other = case.outputs["sample_5_other"]["samples"]
  np.testing.assert_allclose(other, _live_sample(case, 5, OTHER_SEED),
                             rtol=_SAMPLE_ROUNDOFF, atol=atol)
  assert not np.array_equal(other, five)


@pytest.mark.parametrize("name", list(_CASES))
def test_forward_and_inverse_equal_the_live_model(served, name):
  case = served[name]
  z2 = case.calls()["forward"][2]["z"]
  context2 = None if case.context3 is None else case.context3[:2]
  np.testing.assert_allclose(case.outputs["forward"]["x"],
                             _live(case.model, "forward", z2, context2),
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(case.outputs["inverse"]["z"],
                             _live(case.model, "inverse", case.inverse_input(),
                                   case.context3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(_CASES))
def test_batch_dimension_is_unknown_in_every_signature(served, name):
  # One concrete function per signature serves both batch sizes above: the batch
  # inputs are [None, ...], so nothing is retraced per batch size.
  case = served[name]
  signatures = {k: v for k, v in case.signatures.items() if not k.startswith("outputs of ")}
  assert sorted(signatures) == sorted(export.SIGNATURES + ("serving_default",))
  assert signatures["serving_default"] == signatures["log_prob"]
  model = case.model
  assert signatures["log_prob"]["x"] == [None, *model.event_shape]
  assert signatures["inverse"]["x"] == [None, *model.event_shape]
  assert signatures["forward"]["z"] == [None, *model.latent_shape]
  assert signatures["sample"] == {"n": [], "seed": [2], **(
      {} if model.context_shape is None else {"context": model.context_shape})}
  if model.context_shape is not None:
    assert signatures["log_prob"]["context"] == [None, *model.context_shape]


@pytest.mark.parametrize("name", list(_CASES))
def test_every_output_declares_its_event_shape(served, name):
  # A client reads the output shapes from the signature; `inverse` declared z as
  # [None, None] for the spline flows.
  model = served[name].model
  outputs = {k[len("outputs of "):]: v for k, v in served[name].signatures.items()
             if k.startswith("outputs of ")}
  assert outputs["log_prob"] == {"log_prob": [None]}
  assert outputs["inverse"] == {"z": [None, *model.latent_shape]}
  assert outputs["forward"] == {"x": [None, *model.event_shape]}
  assert outputs["sample"] == {"samples": [None, *model.event_shape]}
  assert outputs["sample_fresh"] == {"samples": [None, *model.event_shape], "seed": [2]}


@pytest.mark.parametrize("name", list(_CASES))
def test_sample_fresh_differs_per_call_and_returns_its_seed(served, name):
  case = served[name]
  atol = _SAMPLE_ATOL.get(name, _SAMPLE_ROUNDOFF)
  # Two calls (and, in the Gaussian case, a call in a second loaded copy).
  draws = [case.outputs[k] for k in ("fresh_a", "fresh_b", "fresh_copy")
           if k in case.outputs]
  seeds = [tuple(d["seed"]) for d in draws]
  assert len(set(seeds)) == len(draws) == (3 if case.second_copy else 2), seeds
  for draw in draws:
    assert draw["samples"].shape == (3, *case.model.event_shape)
    assert draw["seed"].dtype == np.int32 and np.all(draw["seed"] >= 0)
    # The returned seed reproduces the draw with the live model (and `sample`).
    np.testing.assert_allclose(draw["samples"], _live_sample(case, 3, draw["seed"]),
                               rtol=_SAMPLE_ROUNDOFF, atol=atol)
  if not _has_dequantize(case.model):  # integer pixels may coincide by chance
    assert not np.array_equal(draws[0]["samples"], draws[1]["samples"])


def test_sample_fresh_has_the_model_distribution(served):
  # The Gaussian case is x = loc + std * z. Over n draws the sample mean has standard
  # error std / sqrt(n), the sample std about std / sqrt(2 n), and the correlation
  # 1 / sqrt(n); 5 standard errors bound each check, so a correct export fails one of
  # the six with probability below 4e-6.
  samples = served["gaussian"].outputs["fresh_large"]["samples"].astype(np.float64)
  assert samples.shape == (FRESH_N, 2)
  mean, std = samples.mean(0), samples.std(0)
  np.testing.assert_array_less(np.abs(mean - GAUSSIAN_LOC),
                               5 * GAUSSIAN_STD / math.sqrt(FRESH_N))
  np.testing.assert_array_less(np.abs(std - GAUSSIAN_STD),
                               5 * GAUSSIAN_STD / math.sqrt(2 * FRESH_N))
  assert abs(np.corrcoef(samples.T)[0, 1]) < 5 / math.sqrt(FRESH_N)


def test_export_is_reachable_as_tff_export(served_all):
  # DESIGN.md's public API: `import tfp_flows as tff; tff.export.save(model, path)`,
  # in a process where nothing imported `tfp_flows.export` by name first.
  returncode, stdout, stderr = served_all["public_api"]
  assert returncode == 0, stderr[-2000:]
  assert stdout.strip().endswith("save")



def test_keras_export_writes_the_models_own_signatures(tmp_path):
  # Keras 3's model.export refused every FlowModel ("has never called").
  keras.utils.set_random_seed(0)
  model = tff.FlowModel([tff.layers.ActNorm(data_init=False),
                         tff.layers.AffineCoupling(hidden_units=(4,))], [2])
  model.export(str(tmp_path / "flow"))
  served = tf.saved_model.load(str(tmp_path / "flow"))
  x = np.random.default_rng(0).normal(size=(3, 2)).astype("float32")
  np.testing.assert_allclose(
      served.signatures["serving_default"](x=tf.constant(x))["log_prob"].numpy(),
      model.log_prob(x).numpy(), rtol=1e-6)
  assert {"log_prob", "sample", "forward", "inverse"} <= set(served.signatures)
  with pytest.raises(ValueError, match="format='tf_saved_model' only"):
    model.export(str(tmp_path / "onnx"), format="onnx")
  with pytest.raises(ValueError, match=r"no input_signature or other options.*"
                     r"\['input_signature'\]"):
    model.export(str(tmp_path / "other"), input_signature=[tf.TensorSpec([None, 2])])

def test_anything_but_a_flow_model_is_a_type_error(tmp_path):
  # A Keras model got an AttributeError ("no attribute 'event_shape'").
  plain = keras.Sequential([keras.Input([2]), keras.layers.Dense(1)])
  with pytest.raises(TypeError, match="takes a tfp_flows.FlowModel.*got Sequential"):
    tff.export.save(plain, str(tmp_path / "plain"))


if __name__ == "__main__":
  # `main` of this file's py_test: under `bazel test` run the tests, not just the import.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
