"""Issue 14: bad input on the command line ends with one line naming the field, never a traceback."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgepool.cli import app

runner = CliRunner()


def _one_line_error(result, *needles: str, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    text = result.output.strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text
    return text


@pytest.mark.parametrize("args", [
    ["plan", "--model", "gpt2-tiny", "--batch", "4"],
    ["compare", "--model", "gpt2-tiny", "--batch", "4"],
    ["estimate", "--model", "gpt2-tiny"],
    ["simulate", "plan.json"],
    ["infer", "--model", "bert-tiny", "--no-run"],
    ["generate", "--model", "gpt2-tiny", "--prompt", "hi"],
    ["train", "--model", "gpt2-tiny", "--launcher", "local"],
    ["train-elastic", "--model", "gpt2-tiny"],
    ["simulate-failure", "--model", "gpt2-tiny"],
])
def test_a_directory_given_as_cluster_is_one_clear_line(args, tmp_path):
    result = runner.invoke(app, [*args, "--cluster", str(tmp_path)])
    _one_line_error(result, f"cluster = '{tmp_path}'", "a cluster YAML file", "directory")


@pytest.mark.parametrize("args", [
    ["plan", "--cluster", "home", "--model", "gpt2-tiny", "--batch", "4", "-o"],
    ["infer", "--cluster", "home", "--model", "bert-tiny", "--seq", "16", "--no-run", "-o"],
])
def test_an_output_file_that_is_a_directory_is_refused_and_nothing_is_left(args, tmp_path):
    result = runner.invoke(app, [*args, str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "directory" in result.output.lower() and str(tmp_path.name) in result.output
    assert not list(tmp_path.parent.glob(tmp_path.name + ".tmp"))  # no half-written file beside it


def test_a_plan_for_another_cluster_is_refused_unless_asked(tmp_path):
    plan = tmp_path / "plan.json"
    result = runner.invoke(app, ["plan", "--cluster", "home", "--model", "gpt2-tiny", "--batch", "4",
                                 "--planner", "dp", "-o", str(plan), "--json"])
    assert result.exit_code == 0, result.output
    relabelled = tmp_path / "lab.json"  # the same devices, but the plan says it was made for jetson-lab
    relabelled.write_text(json.dumps({**json.loads(plan.read_text()), "cluster": "jetson-lab"}))
    result = runner.invoke(app, ["simulate", str(relabelled), "--cluster", "home"])
    _one_line_error(result, "cluster = 'jetson-lab'", "'home'", "--other-cluster")
    result = runner.invoke(app, ["simulate", str(relabelled), "--cluster", "home", "--other-cluster", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["throughput"] > 0
    result = runner.invoke(app, ["train", "--cluster", "home", "--model", "gpt2-tiny", "--plan", str(relabelled),
                                 "--launcher", "local"])
    _one_line_error(result, "cluster = 'jetson-lab'")


def test_a_sequence_beyond_the_context_is_refused_where_plans_are_made_and_run(tmp_path):
    needle = "seq = 1000 is not valid; accepted: 1 to 256 tokens"
    for args in (["plan", "--cluster", "home", "--model", "gpt2-tiny", "--batch", "4", "--seq", "1000"],
                 ["compare", "--cluster", "home", "--model", "gpt2-tiny", "--batch", "4", "--seq", "1000"],
                 ["infer", "--cluster", "home", "--model", "gpt2-tiny", "--seq", "1000", "--no-run"],
                 ["train", "--cluster", "home", "--model", "gpt2-tiny", "--seq", "1000", "--launcher", "local"]):
        _one_line_error(runner.invoke(app, args), needle)
    plan = tmp_path / "plan.json"  # a plan file whose seq is past the context: refused before any worker starts
    result = runner.invoke(app, ["plan", "--cluster", "home", "--model", "gpt2-tiny", "--batch", "4", "--seq", "64",
                                 "--planner", "dp", "-o", str(plan), "--json"])
    assert result.exit_code == 0, result.output
    plan.write_text(json.dumps({**json.loads(plan.read_text()), "seq": 1000}))
    result = runner.invoke(app, ["train", "--cluster", "home", "--model", "gpt2-tiny", "--plan", str(plan),
                                 "--launcher", "local", "-o", str(tmp_path / "run")])
    _one_line_error(result, "plan.seq = 1000", "256")
    assert not (tmp_path / "run" / "report.json").exists()
    result = runner.invoke(app, ["generate", "--cluster", "home", "--model", "gpt2-tiny", "--prompt", "x" * 250,
                                 "--max-new-tokens", "16"])
    _one_line_error(result, "= 266", "1 to 256 tokens")


def test_a_failed_worker_is_one_line_naming_the_device_and_the_cause(monkeypatch):
    from edgepool.inference import runner as inference_runner
    from edgepool.testbed.launcher import WorkerFailed

    def crash(*args, **kwargs):
        tail = "Traceback (most recent call last):\n  File \"x.py\", line 1\nIndexError: index out of range in self"
        raise WorkerFailed("pi", 2, 1, "", tail, "/tmp/run/logs/rank2-pi.log")

    monkeypatch.setattr(inference_runner, "measure_plan", crash)
    result = runner.invoke(app, ["infer", "--cluster", "home", "--model", "bert-tiny", "--seq", "16"])
    _one_line_error(result, "device 'pi'", "IndexError: index out of range in self", "rank2-pi.log", code=1)


@pytest.mark.parametrize("args", [
    ["--launcher", "ssh", "--cluster", "home"],  # not a launcher
    ["--launcher", "testbed"],  # a launcher for collaborative PAC needs the cluster it emulates
])
def test_finetune_launcher_is_checked_before_anything_runs(args):
    result = runner.invoke(app, ["finetune", "--model", "bert-tiny", "--dataset", "synthetic", *args])
    _one_line_error(result, "--launcher", "local or testbed, together with --cluster")
