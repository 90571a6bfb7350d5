"""`edgepool characterize`: the PNG data set and its manifest, one real measured run, the stall/CV arithmetic,
recommendations derived from given measurements, the sweep's bookkeeping, plots and the CLI."""
from __future__ import annotations

import json
import math

import pytest
import typer
from typer.testing import CliRunner

from edgepool.characterize import Setting, build_plan, characterize
from edgepool.characterize import sweep as sweep_mod
from edgepool.characterize.dataset import SIDE, DigitFiles, read_manifest, tmpfs_folder, write_images
from edgepool.characterize.measurement import Measurement, coefficient_of_variation, summarize
from edgepool.characterize.recommend import noise_threshold, recommend
from edgepool.characterize.runner import measure
from edgepool.cli import _OneLineErrors
from edgepool.cli.characterize import register
from edgepool.errors import SpecError


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("char") / "mnist-png", limit=160)


def _app() -> typer.Typer:
    app = typer.Typer(cls=_OneLineErrors)
    register(app)

    @app.command("other")  # a second command keeps `characterize` a named subcommand
    def other() -> None:
        pass

    return app


# ------------------------------------------------------------------------------------------------ data set
def test_images_are_real_pngs_with_a_manifest(images):
    manifest = read_manifest(images)
    assert manifest["count"] == 160 and len(manifest["files"]) == 160
    name, label = manifest["files"][0]
    assert (images / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 0 <= label <= 9
    assert len({lab for _, lab in manifest["files"]}) == 10  # real digits of every class


def test_a_damaged_set_is_not_taken_as_complete(images, tmp_path):
    import shutil

    copy = tmp_path / "set"
    shutil.copytree(images, copy)
    victim = copy / read_manifest(copy)["files"][3][0]
    victim.write_bytes(victim.read_bytes()[:10])  # half-written file
    assert read_manifest(copy) is None
    with pytest.raises(FileNotFoundError):
        DigitFiles(copy)
    write_images(copy, limit=160)  # rewritten, complete again
    assert read_manifest(copy) is not None and len(victim.read_bytes()) > 10
    assert read_manifest(copy, limit=1000) is None  # asks for more images than the set has


def test_dataset_decodes_and_augments(images):
    data = DigitFiles(images)
    a, label = data[0]
    b, _ = data[0]
    assert a.shape == (1, SIDE, SIDE) and a.dtype.is_floating_point and isinstance(label, int)
    assert not (a == b).all()  # random crop and rotation differ between two reads of one file


# ------------------------------------------------------------------------------------------------ arithmetic
def test_stall_fraction_and_cv_on_known_timings():
    m = summarize({"batch_size": 4}, "x", "default", stalls=[9.0, 1.0, 2.0, 3.0], computes=[9.0, 3.0, 2.0, 1.0],
                  batch_size=4, warmup=1, cpu_seconds=6.0, wall_s=12.0, cores_available=2.0)
    assert m.iterations == 3 and m.mean_iteration_s == pytest.approx(4.0)  # the 18 s warm-up is dropped
    assert m.stall_fraction == pytest.approx(6 / 12) and m.iteration_time_cv == 0.0
    assert m.samples_per_s == pytest.approx(1.0) and m.cpu_utilization == pytest.approx(0.25)
    assert coefficient_of_variation([1.0, 3.0]) == pytest.approx(math.sqrt(2) / 2)
    m2 = summarize({}, "x", "default", [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 3.0], 1, 0, 1.0, 1.0, 1.0,
                   round_sizes=[2, 2])
    assert m2.round_mean_iteration_s == [1.5, 2.0] and m2.stall_fraction == pytest.approx(1 / 7)


def _m(label, axis, sps, stall, cv=0.05, rounds=(), notes=(), **setting) -> Measurement:
    s = Setting(**setting).to_dict()
    it = s["batch_size"] / sps
    return Measurement(setting=s, label=label, axis=axis, iterations=50, mean_iteration_s=it,
                       mean_stall_s=stall * it, mean_compute_s=(1 - stall) * it, stall_fraction=stall,
                       iteration_time_cv=cv, p95_iteration_s=it, samples_per_s=sps, cpu_utilization=0.5,
                       cpu_cores_busy=1.0, cores_available=2.0, other_load_cores=0.0,
                       round_mean_iteration_s=list(rounds), notes=list(notes))


def test_recommendation_is_derived_from_the_measurements():
    default = _m("default", "default", 100, 0.61)
    rows = [default, _m("w1", "workers", 150, 0.2, workers=1), _m("w2", "workers", 200, 0.04, workers=2),
            _m("tmpfs", "storage", 102, 0.6, storage="tmpfs"),
            _m("cache dropped", "cache", 60, 0.8, cache="dropped"),
            _m("w2+cache dropped", "combined", 196, 0.05, workers=2, cache="dropped")]
    lines = recommend(default, rows)
    assert "set workers=2: 100 -> 200 samples/s (+100%), fetch stall 61% -> 4%" in lines
    assert any(line.startswith("storage: no value beat default beyond noise (best storage=tmpfs: +2%")
               for line in lines)
    cache = next(line for line in lines if line.startswith("page cache dropped"))
    assert "costs 40% of throughput" in cache and "with workers=2: -2%" in cache
    assert lines[-1].startswith("best measured: w2 at 200 samples/s, 2.00x the default")
    # the same numbers with a worse workers row recommend nothing for workers
    assert not any(line.startswith("set workers") for line in recommend(default, [default, rows[3]]))


def test_noise_threshold_grows_with_round_to_round_spread():
    steady = _m("a", "default", 100, 0.5, rounds=(0.32, 0.32))
    drifting = _m("b", "workers", 100, 0.5, rounds=(0.2, 0.44), workers=1)
    assert noise_threshold(steady, steady) == pytest.approx(0.05)
    assert noise_threshold(steady, drifting) > 0.3


# ------------------------------------------------------------------------------------------------ settings
def test_settings_and_plans_reject_bad_values():
    with pytest.raises(SpecError, match="prefetch_factor"):
        Setting(prefetch_factor=2)  # only with workers
    with pytest.raises(SpecError, match="storage = 'nfs'"):
        Setting(storage="nfs")
    with pytest.raises(SpecError, match="axis = 'gpu'"):
        build_plan("quick").only(["workers", "gpu"])
    with pytest.raises(SpecError, match="plan"):
        build_plan("medium")
    plan = build_plan("quick", cores=2)
    assert plan.runs[0] == ("default", Setting()) and ("workers", Setting(workers=2)) in plan.runs
    assert Setting(workers=2, storage="tmpfs", pin_memory=True).label == "w2+pin+tmpfs"


# ------------------------------------------------------------------------------------------------ real run
def test_one_real_measured_run_in_a_child_process(images):
    m = measure(Setting(workers=1, batch_size=8), images, iterations=4, warmup=1, axis="workers")
    assert m.iterations == 4 and len(m.iteration_times_s) == 4
    assert m.mean_stall_s > 0 and m.mean_compute_s > 0 and 0 < m.stall_fraction < 1
    assert m.samples_per_s == pytest.approx(8 / m.mean_iteration_s)
    assert m.cpu_cores_busy > 0 and m.cores_available >= 1


def test_sweep_bookkeeping_with_stubbed_runs(images, monkeypatch):
    """Skipped axes drop their rows, rounds are pooled, best = most samples/s (real timing is tested above)."""
    def fake_run(setting, folder, iterations, warmup, engine=None):
        per = 0.01 if setting.workers else 0.02  # workers halve the iteration time in this stub
        return {"stalls": [per / 2] * iterations, "computes": [per / 2] * iterations, "cpu_seconds": 0.1,
                "other_cpu_seconds": 0.0, "wall_s": per * iterations, "notes": ["stub"]}

    monkeypatch.setattr(sweep_mod, "run_once", fake_run)
    monkeypatch.setattr(sweep_mod, "unavailable_axes", lambda: ({"power": "no cgroups (test)"}, None))
    calls = []
    plan = build_plan("quick", cores=2).only(["workers", "power"])
    result = characterize(plan, workdir=images.parent,
                          progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert [r.label for r in result.rows] == ["default", "w1", "w2"]  # 'power half' skipped
    assert result.skipped == {"power": "no cgroups (test)"}
    assert result.default.label == "default" and result.best.samples_per_s == pytest.approx(32 / 0.01)
    assert result.rows[1].iterations == plan.rounds * plan.iterations
    assert len(result.rows[1].round_mean_iteration_s) == plan.rounds >= 2
    assert calls[-1] == ("measuring settings", 3 * plan.rounds, 3 * plan.rounds)
    assert json.loads(json.dumps(result.to_dict()))["best"]["label"] in ("w1", "w2")


def test_plots_are_written(tmp_path):
    from edgepool.characterize.plots import draw_iteration_times, draw_stall_compute

    rows = [_m("default", "default", 100, 0.6), _m("w2", "workers", 200, 0.1, workers=2)]
    for row in rows:
        row.iteration_times_s = [row.mean_iteration_s * f for f in (0.9, 1.0, 1.2)]
    for draw, name in ((draw_stall_compute, "a.png"), (draw_iteration_times, "b.png")):
        assert draw(rows, tmp_path / name).read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(_app(), ["characterize", "--quick", "--axes", "workers,gpu", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "axis = 'gpu'" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    afile = tmp_path / "file"
    afile.write_text("x")
    result = runner.invoke(_app(), ["characterize", "--quick", "--out", str(afile)])
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.slow
def test_cli_runs_a_tiny_real_sweep(tmp_path, images):
    import shutil

    shutil.copytree(images, tmp_path / "mnist-png")  # the 160-image set: the sweep reuses it
    result = CliRunner().invoke(_app(), ["characterize", "--quick", "--axes", "workers,storage",
                                         "--out", str(tmp_path)], terminal_width=80)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "characterize.json").read_text())
    labels = [r["label"] for r in data["rows"]]
    assert labels == ["default", "w1", "w2", "tmpfs"] or labels == ["default", "w1", "tmpfs"]
    plan = build_plan("quick")
    assert all(r["iterations"] == plan.rounds * plan.iterations and r["mean_stall_s"] > 0 for r in data["rows"])
    assert data["best"]["samples_per_s"] == max(r["samples_per_s"] for r in data["rows"])
    assert (tmp_path / "stall-compute.png").stat().st_size > 0 and (tmp_path / "iteration-times.png").exists()
    assert "what to set:" in result.output and data["recommendation"][-1].startswith("best measured")
    assert max(len(line) for line in result.output.splitlines() if "│" in line) <= 80
    assert not tmpfs_folder(tmp_path / "mnist-png").exists()  # the RAM-backed copy is removed at the end
