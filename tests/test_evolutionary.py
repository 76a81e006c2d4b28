"""The evolutionary search: a search killed midway resumes from its storage and ends with the same
number of completed trials as an uninterrupted one; identical candidates reuse their score."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

SCRIPT = """
import sys
from glue_bench.evaluate import EvalConfig, render_tasks
from glue_bench.merge.engine import TensorSource
from glue_bench.select.evolutionary import SearchConfig, search
from glue_bench.select.proxy import ProxySet
from glue_bench.select.report import ZooSearch
from glue_bench.zoo import load_tokenizer, local_dir, resolve_zoo, zoo_config
from glue_bench.zoo.mini.build import ensure_data

storage, n_trials = sys.argv[1], int(sys.argv[2])
refs, base = resolve_zoo(zoo_config("mini2"), "micro")
tasks_dir = render_tasks(ensure_data("micro"), storage.removeprefix("sqlite:///") + ".tasks")
eval_cfg = EvalConfig(tasks=["mini_arc", "mini_winogrande"], batch_size=8)
zs = ZooSearch(refs, [TensorSource(r.name, local_dir(r)) for r in refs], TensorSource(base.name, local_dir(base)),
               load_tokenizer(refs[0]), tasks_dir, eval_cfg, ProxySet.draw(tasks_dir, eval_cfg.tasks, 4, 0))
cfg = SearchConfig(n_trials=n_trials, storage=storage, popsize=4)
result = search(zs.problem("linear", {}), cfg, progress=False)
print("COMPLETED", result.completed, result.best_value, result.best_params)
"""


def _completed(db) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _run(storage, n_trials, **kwargs):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, storage, str(n_trials)], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_a_killed_search_resumes_and_ends_with_the_same_number_of_trials(micro_cache, tmp_path):
    killed_db, whole_db = tmp_path / "killed.sqlite", tmp_path / "whole.sqlite"
    first = _run(f"sqlite:///{killed_db}", 8)
    deadline = time.time() + 300
    while _completed(killed_db) < 3 and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_at_kill = _completed(killed_db)
    assert 3 <= done_at_kill < 8, f"killed after {done_at_kill} trials"
    resumed = _run(f"sqlite:///{killed_db}", 8)
    whole = _run(f"sqlite:///{whole_db}", 8)
    for proc in (resumed, whole):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        assert "COMPLETED 8 " in out, out
    assert _completed(killed_db) == _completed(whole_db) == 8
