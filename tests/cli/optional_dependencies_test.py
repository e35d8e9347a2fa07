"""The library without scikit-learn and matplotlib: the CLI names what to install.

They are optional (`pip install 'tfp_flows[cli]'`). A subprocess hides both from the
import system, as if they were not installed (Keras and TFP import them when present,
so an in-process test cannot), and runs the command line three times: a dataset that
needs scikit-learn and the default PNG plot each fail with one line naming the extra,
before any training; a `.npy` run without plots trains and writes its model.
"""

import json
import os
import subprocess
import sys

import numpy as np

import tfp_flows

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(tfp_flows.__file__)))

_SCRIPT = r"""
import contextlib, importlib.abc, io, json, sys

class _NotInstalled(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("sklearn", "matplotlib"):
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return None

sys.meta_path.insert(0, _NotInstalled())
from absl import flags
import tfp_flows
from tfp_flows.cli import app

results = {"imported": sorted(m for m in ("sklearn", "matplotlib") if m in sys.modules)}
for case, args in json.loads(sys.argv[1]).items():
  flags.FLAGS.unparse_flags()
  argv = flags.FLAGS(["tfp_flows", *args])
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = app.main(argv)
  results[case] = [status, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def test_cli_without_scikit_learn_and_matplotlib(tmp_path):
  np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=[40, 2]).astype("float32"))
  npy = ["--preset=nsf", "--dataset=npy", f"--data_file={tmp_path / 'x.npy'}",
         "--num_layers=1", "--hidden_units=4", "--epochs=1", "--run_eagerly", "--verbose=0",
         "--noexport_saved_model", f"--output_dir={tmp_path / 'run'}"]
  cases = {"digits": ["train", "--dataset=digits", "--noplot"],
           "plot": ["train", *npy],
           "npy": ["train", *npy, "--noplot"]}
  env = dict(os.environ, PYTHONPATH=_REPO, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(cases)],
                          capture_output=True, text=True, timeout=300, check=False, env=env)
  assert result.returncode == 0, result.stderr
  results = json.loads(result.stdout.splitlines()[-1])
  assert results["imported"] == []  # the blocker works: neither package was loaded

  status, out, err = results["digits"]
  assert status == 2 and out == ""
  assert err == ("error: --dataset=digits needs scikit-learn, which is not installed: pip "
                 "install 'tfp_flows[cli]'.\n")
  status, out, err = results["plot"]
  assert status == 2 and out == ""  # refused before loading data or training
  assert err.startswith("error: Writing PNG plots needs matplotlib") and err.count("\n") == 1
  assert "pip install 'tfp_flows[cli]' (or pass --noplot)" in err

  status, out, err = results["npy"]
  assert status == 0, err
  assert "held-out NLL" in out and os.path.isfile(tmp_path / "run" / "model.keras")
