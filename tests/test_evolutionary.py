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


def test_search_space_per_model_weights_and_shared_coefficients():
    from glue_bench.merge.params import Param
    from glue_bench.select.evolutionary import SearchConfig, _to_params, search_space

    two_groups = SearchConfig(layer_groups=2, search_density=True)
    space = search_space("ties", 2, two_groups)
    assert space == {f"{p}.{i}.{g}": b for p, b in (("weights", (0.0, 1.0)), ("density", (0.1, 1.0)))
                     for i in range(2) for g in range(2)}
    values = {k: float(n) for n, k in enumerate(sorted(space))}  # density.0.0, density.0.1, ..., weights.1.1
    assert _to_params(values, 2, two_groups) == {"density": [[0.0, 1.0], [2.0, 3.0]], "weights": [[4.0, 5.0], [6.0, 7.0]]}
    # a method whose coefficients are shared (no weights): one value each, not one per model
    from glue_bench.merge import METHODS, register

    register("_shared_only", (Param("k", 0.5, "a shared coefficient", search=(0.2, 0.9)),))(lambda tensors, k: tensors[0])
    try:
        assert search_space("_shared_only", 3, SearchConfig()) == {"k.0": (0.2, 0.9)}
        assert _to_params({"k.0": 0.4}, 3, SearchConfig()) == {"k": 0.4}
        assert _to_params({"k.0": 0.4, "k.1": 0.6}, 3, SearchConfig(layer_groups=2)) == {"k": [0.4, 0.6]}
    finally:
        del METHODS["_shared_only"]
    with pytest.raises(ValueError, match="slerp: has no coefficients to search"):
        search_space("slerp", 2, SearchConfig())
