"""`edgepool adapt run|bench`: bad input is one line; a run writes its JSON report and the plot beside it."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgepool.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args, needle", [
    (["--method", "tent"], "--method = 'tent'"),
    (["--dataset", "cifar"], "--dataset = 'cifar'"),
    (["--phases", "fog:3:100"], "--phases = 'fog'"),
    (["--phases", "contrast:9:100"], "severity 1..5"),
    (["--phases", "contrast"], "corruption:severity:samples"),
    (["--outage", "2:4"], "only together with --over-link"),
    (["--over-link", "--outage", "5:5"], "--outage = '5:5'"),
    (["--over-link", "--method", "eata"], "--method = 'eata'"),
    (["--over-link", "--launcher", "ssh"], "--launcher = 'ssh'"),
    (["--over-link", "--bandwidth-mbps", "0"], "--bandwidth-mbps = 0"),
])
def test_bad_input_is_one_line_naming_the_option(args, needle, tmp_path):
    result = runner.invoke(app, ["adapt", "run", "--cache", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error: ") and "\n" not in text and needle in text, text


@pytest.mark.slow
def test_a_run_writes_the_report_and_the_plot(tmp_path):
    out = tmp_path / "adapt.json"
    result = runner.invoke(app, ["adapt", "run", "--dataset", "digits", "--method", "cema", "--phases",
                                 "gaussian_noise:5:128,contrast:5:128", "--cache", str(tmp_path / "cache"),
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    cema = report["methods"]["cema"]
    assert report["phases"] == ["gaussian_noise 5", "contrast 5"]
    assert 0 < cema["upload_fraction"] < 1 and cema["bytes_up"] > 0
    assert out.with_suffix(".png").stat().st_size > 10_000
