"""The evidence archive: a store as one compact Parquet file, read back as the same store; its
faults in one line; a replicate mixing two builds refused; the committed tables regenerated from
the committed archive, byte for byte."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from glue_bench.evidence import Evidence
from glue_bench.results import ResultsError, ResultStore, read_results
from glue_bench.tables import FORMATS, write_study_tables

REPO = Path(__file__).resolve().parents[1]
COMMITTED = REPO / "results" / "evidence.parquet"


def _row(task, metric, value, **more):
    return dict(zoo="mini2", candidate="chat_a", method="none", strategy="none", mixture="none", router="none",
                task=task, metric=metric, value=value, stderr=0.01, config=json.dumps({"key": "k/chat_a"}), **more)


def _store(path) -> ResultStore:
    rng = np.random.default_rng(0)
    store = ResultStore(path)
    binary = [int(x) for x in rng.random(400) < 0.3]
    store.append_job("binary", [_row("mini_arc", "acc", sum(binary) / 400, weights="w1", replicate=1)],
                     outcomes=[{"task": "mini_arc", "metric": "acc", "doc_id": i, "value": v} for i, v in enumerate(binary)])
    # a selective search's final items (documents not 0..n-1) and a metric that is not 0/1
    store.append_job("final", [_row("mini_arc", "acc_norm", 0.5, items="final items: x"), _row("mini_arc", "score", 0.25)],
                     outcomes=[{"task": "mini_arc", "metric": "acc_norm", "doc_id": d, "value": d % 2}
                               for d in (3, 8, 9, 20)]
                     + [{"task": "mini_arc", "metric": "score", "doc_id": 0, "value": 0.25}])
    store.append_job("no outcomes", [_row("mini_mmlu", "acc", 0.4)])  # a job from before outcomes were kept
    return store


def test_an_archive_reads_back_as_the_store_it_came_from(tmp_path):
    store = _store(tmp_path / "r.sqlite")
    assert store.archive(tmp_path / "e.parquet") == 3
    pd.testing.assert_frame_equal(read_results(tmp_path / "e.parquet"), read_results(tmp_path / "r.sqlite"))
    from_archive, from_store = Evidence.of(tmp_path / "e.parquet"), Evidence.of(tmp_path / "r.sqlite")
    for job in ("binary", "final", "no outcomes"):
        pd.testing.assert_frame_equal(from_archive.store.job_outcomes(job), from_store.store.job_outcomes(job))
    assert from_archive.store.job_keys() == {"binary", "final", "no outcomes"}
    assert list(from_archive.outcomes("final")["mini_arc"][0]) == [3, 8, 9, 20]


def test_a_search_s_proxy_scores_stay_out_of_the_archive(tmp_path):
    store = _store(tmp_path / "r.sqlite")
    store.append_job("proxy", [_row("mini_arc", "acc", 1.0, items="proxy (20/task, seed 0, 1234)")],
                     outcomes=[{"task": "mini_arc", "metric": "acc", "doc_id": 7, "value": 1.0}])
    assert store.archive(tmp_path / "e.parquet") == 3  # no table or finding reads what a search tried
    assert Evidence.of(tmp_path / "e.parquet").store.job_keys() == {"binary", "final", "no outcomes"}


def test_binary_outcomes_cost_bits_not_the_hundreds_of_bytes_sqlite_gives_them(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    rng = np.random.default_rng(1)
    sizes = {}
    for job in range(30):  # jobs of 3,600 binary outcomes each (six tasks of 600)
        outcomes = [{"task": f"t{t}", "metric": "acc", "doc_id": i, "value": int(rng.random() < 0.4)}
                    for t in range(6) for i in range(600)]
        rows = [dict(_row(f"t{t}", "acc", 0.4), candidate=f"c{job}") for t in range(6)]
        store.append_job(f"job{job}", rows, outcomes=outcomes)
        if job + 1 in (10, 30):
            store.archive(tmp_path / f"e{job + 1}.parquet")
            sizes[job + 1] = (tmp_path / f"e{job + 1}.parquet").stat().st_size
    per_job = (sizes[30] - sizes[10]) / 20  # what one more job costs, the file's fixed footer apart
    assert per_job < 700  # 3,600 random bits at p = 0.4 hold 437 bytes of entropy
    assert (tmp_path / "r.sqlite").stat().st_size / 30 > 100 * per_job  # SQLite: ~100 KB a job


@pytest.mark.parametrize("content, match", [
    (None, "no such file"),
    (b"not parquet at all", "not a Parquet file"),
    ("foreign", "not a glue_bench evidence archive of format 1"),
])
def test_a_bad_archive_is_one_line_naming_it(tmp_path, content, match):
    path = tmp_path / "e.parquet"
    if content == "foreign":
        pd.DataFrame({"x": [1, 2]}).to_parquet(path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ResultsError, match=match) as err:
        read_results(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_replicate_holding_two_builds_of_a_model_is_refused_never_mixed(tmp_path):
    store = _store(tmp_path / "r.sqlite")
    machine = json.dumps({"cpu": "Other CPU"})
    store.append_job("rebuilt", [_row("mini_arc", "acc_norm", 0.3, weights="w2", replicate=1, machine=machine)])
    with pytest.raises(ResultsError, match=r"replicate 1: model k/chat_a was evaluated with the weights of two "
                                           r"builds \(w1 on an unknown machine; w2 on Other CPU\)"):
        store.archive(tmp_path / "e.parquet")
    assert not (tmp_path / "e.parquet").exists()
    with pytest.raises(ResultsError, match="a replicate is one build"):
        write_study_tables(str(tmp_path / "r.sqlite"), tmp_path / "tables")
    # the same weights in another replicate are another zoo's model: not a conflict
    store2 = _store(tmp_path / "r2.sqlite")
    store2.append_job("other replicate", [_row("mini_arc", "acc_norm", 0.3, weights="w2", replicate=2)])
    assert store2.archive(tmp_path / "e2.parquet") == 4


def test_the_committed_tables_regenerate_byte_for_byte_from_the_committed_evidence(tmp_path, monkeypatch):
    """So that no committed table can drift from its evidence: results/tables is what
    `python -m glue_bench.tables --results results/evidence.parquet` writes, file for file."""
    monkeypatch.chdir(REPO)  # the tables name their store relative to where they are made
    out = tmp_path / "tables"
    written = write_study_tables("results/evidence.parquet", out)
    committed = sorted(p.name for p in (REPO / "results" / "tables").iterdir() if p.suffix.lstrip(".") in FORMATS)
    assert sorted(p.name for p in written) == committed
    for name in committed:
        assert (out / name).read_bytes() == (REPO / "results" / "tables" / name).read_bytes(), name
