"""A damaged model.keras or malformed run.json: one line naming the file, exit status 2.

One tiny run is trained once; each case copies it, damages one file, and runs
`evaluate` (and, for one case, `sample` and `export`) on the copy.
"""

import json
import re
import shutil
import zipfile

import pytest
from absl import flags

from tfp_flows.cli import app


def _cli(capsys, *args):
  flags.FLAGS.unparse_flags()
  status = app.main(flags.FLAGS(["tfp_flows", *args]))
  out, err = capsys.readouterr()
  return status, out, err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp("trained") / "run"
  flags.FLAGS.unparse_flags()
  argv = flags.FLAGS(["tfp_flows", "train", "--preset=nsf", "--dataset=two_moons",
                      "--num_points=100", "--num_layers=1", "--hidden_units=4",
                      "--epochs=1", "--run_eagerly", "--verbose=0", "--noplot",
                      "--noexport_saved_model", f"--output_dir={run_dir}"])
  assert app.main(argv) == 0
  return run_dir


def _rewrite_zip(path, member, content):
  """Rewrites the .keras archive at `path` with `member` replaced (None: left out)."""
  with zipfile.ZipFile(path) as archive:
    members = {name: archive.read(name) for name in archive.namelist()}
  with zipfile.ZipFile(path, "w") as archive:
    for name, data in members.items():
      if name != member:
        archive.writestr(name, data)
      elif content is not None:
        archive.writestr(name, content)


def _truncate(path):
  path.write_bytes(path.read_bytes()[:3000])


def _flip_a_byte(path):
  data = bytearray(path.read_bytes())
  data[500] ^= 0xFF  # inside the first member: its CRC no longer matches
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (_truncate, r"model.keras' is damaged \(not a complete .keras zip archive\)"),
    (_flip_a_byte, r"model.keras' is damaged \(BadZipFile: Bad CRC-32"),
    (lambda p: _rewrite_zip(p, "config.json", None), r"is damaged \(KeyError: .*config.json"),
    (lambda p: _rewrite_zip(p, "config.json", b"{not json"), r"is damaged \(JSONDecodeError"),
    (lambda p: _rewrite_zip(p, "model.weights.h5", b"garbage"), r"is damaged \(OSError: "),
], ids=["truncated", "corrupted", "no_config", "bad_config", "bad_weights"])
def test_damaged_model_file_is_one_line(capsys, tmp_path, trained_run, damage, message):
  run_dir = shutil.copytree(trained_run, tmp_path / "run")
  damage(run_dir / "model.keras")
  status, out, err = _cli(capsys, "evaluate", f"--model_dir={run_dir}")
  assert status == 2 and out == "" and err.count("\n") == 1, err
  assert err.startswith(f"error: cannot load the model in '{run_dir}': '{run_dir}/model.keras'")
  assert "File not found" not in err  # what Keras says of a truncated archive
  assert re.search(message, err), err
  assert err.rstrip().endswith(f"train again with: python -m tfp_flows train "
                               f"--output_dir={run_dir}")


@pytest.mark.parametrize("edit, message", [
    (lambda run: "{not json", r"run.json' is not readable JSON \(Expecting"),
    (lambda run: b"\xff\xfe{}", r"run.json' is not readable JSON \(.*codec can't decode"),
    (lambda run: "[1, 2]", r"run.json' holds list, not a JSON object"),
    (lambda run: {**run, "num_points": "many"},
     r"run.json' has num_points=\"many\", expected an integer >= 2"),
    (lambda run: {**run, "row_shape": 2},
     r"run.json' has row_shape=2, expected a list of positive integers"),
    (lambda run: {**run, "value_range": [0.0]}, r"has value_range=\[0.0\], expected \[low, high\]"),
    (lambda run: {**run, "dataset": "mnist"}, r"has dataset=\"mnist\", expected one of two_moons"),
    (lambda run: {**run, "test_fraction": True}, r"has test_fraction=true, expected a number"),
    (lambda run: {**run, "data_dir": 3}, r"has data_dir=3, expected null or a path"),
    (lambda run: {**run, "event_shape": [3], "row_shape": [3]},
     r"describes rows of shape \[3\] and events of shape \[3\], but model.keras models "
     r"events of shape \[2\]"),
], ids=["syntax", "not_utf8", "list", "num_points", "row_shape", "value_range", "dataset",
        "bool_fraction", "data_dir", "event_shape"])
def test_malformed_run_json_is_one_line(capsys, tmp_path, trained_run, edit, message):
  run_dir = shutil.copytree(trained_run, tmp_path / "run")
  content = edit(json.loads((run_dir / "run.json").read_text()))
  if isinstance(content, bytes):
    (run_dir / "run.json").write_bytes(content)
  else:
    (run_dir / "run.json").write_text(content if isinstance(content, str)
                                      else json.dumps(content))
  status, out, err = _cli(capsys, "evaluate", f"--model_dir={run_dir}")
  assert status == 2 and out == "" and err.count("\n") == 1, err
  assert err.startswith("error: ") and "Traceback" not in err
  assert re.search(message, err), err
  assert err.rstrip().endswith(f"--output_dir={run_dir}")


@pytest.mark.parametrize("command", ["sample", "export"])
def test_every_command_checks_the_run(capsys, tmp_path, trained_run, command):
  run_dir = shutil.copytree(trained_run, tmp_path / "run")
  _truncate(run_dir / "model.keras")
  status, _, err = _cli(capsys, command, f"--model_dir={run_dir}", "--noplot")
  assert status == 2 and "model.keras' is damaged" in err and err.count("\n") == 1
