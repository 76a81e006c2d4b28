"""A Sweeper runs sweeps one after another in children forked from one preloaded server."""

import sqlite3

from glue_bench.preloaded import Sweeper
from glue_bench.reproduce import REPO


def test_a_sweeper_runs_sweeps_in_turn_and_reports_each_ones_status(micro_cache, monkeypatch, tmp_path, capfd):
    monkeypatch.setenv("GLUE_BENCH_MINI_SIZE", "micro")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    store = tmp_path / "r.sqlite"
    common = ["eval.limit=5", f"results_path={store}", "print_table=false", f"hydra.sweep.dir={tmp_path}/m"]
    with Sweeper(REPO) as sweeper:
        assert list(sweeper.sweep(["--multirun", "zoo=nosuch", *common])) == [] and sweeper.returncode == 1
        assert "glue_bench: error: In 'config': Could not find 'zoo/nosuch'" in capfd.readouterr().err
        lines = list(sweeper.sweep(["--multirun", "zoo=mini2", "method=linear,slerp", *common]))
        assert sweeper.returncode == 0  # the server outlived the failed sweep
        launched = [line for line in lines if "[HYDRA] \t#" in line]
        assert len(launched) == 2 and "method=slerp" in launched[1]
    with sqlite3.connect(store) as db:
        methods = {m for (m,) in db.execute("SELECT DISTINCT method FROM results WHERE method != 'none'")}
    assert methods == {"linear", "slerp"}


def test_a_sweeper_whose_server_died_reports_a_failed_sweep_not_a_crash(tmp_path):
    with Sweeper(REPO) as sweeper:
        sweeper._server.kill()
        sweeper._server.wait()
        assert list(sweeper.sweep(["zoo=mini2"])) == [] and sweeper.returncode != 0

