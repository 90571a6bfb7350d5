"""The one worker harness: a job folder, one process per device through a launcher, results in rank order."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgepool.runtime.harness import WorkerJob, read_results, run_workers, worker_argv, write_job
from edgepool.testbed.launcher import LocalLauncher, WorkerFailed

TESTS = str(Path(__file__).parent)


def test_two_local_ranks_return_their_results_in_rank_order(tmp_path):
    job = WorkerJob.create({"greeting": "hi"}, tmp_path)
    ticks = []
    with LocalLauncher() as launcher:
        results = run_workers(launcher, "harness_toy", job, ["b", "a"], timeout_s=60, env={"PYTHONPATH": TESTS},
                              on_tick=lambda: ticks.append(1))
    assert [(r["rank"], r["device"], r["greeting"]) for r in results] == [(0, "b", "hi"), (1, "a", "hi")]
    assert ticks and (tmp_path / "logs").is_dir()


def test_a_failing_rank_raises_worker_failed_naming_its_device(tmp_path):
    job = WorkerJob.create({"greeting": "hi", "fail": ["a"]}, tmp_path)
    with LocalLauncher() as launcher:
        with pytest.raises(WorkerFailed, match="device 'a'.*injected failure on a"):
            run_workers(launcher, "harness_toy", job, ["b", "a"], timeout_s=60, env={"PYTHONPATH": TESTS})
        assert all(h.poll() is not None for h in launcher.handles)  # the other rank was stopped


def test_the_pieces_a_supervisor_uses(tmp_path):
    path = write_job({"x": 1}, tmp_path, "config-a-g0.json")
    assert worker_argv("edgepool.elastic.worker", path)[-3:] == ["-m", "edgepool.elastic.worker", str(path)]
    (tmp_path / "result-a.json").write_text('{"device": "a"}')
    assert read_results(tmp_path, ["result-a.json"]) == [{"device": "a"}]
