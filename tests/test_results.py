import math
import multiprocessing as mp
import os
import signal
import sqlite3
import time

import pandas as pd
import pytest

from glue_bench import results
from glue_bench.results import COLUMNS, ResultsError, ResultStore, read_results

CTX = mp.get_context("fork")  # children inherit the test's imports; the store holds no connection


def make_rows(job: str, n: int = 3) -> list[dict]:
    return [dict(zoo="mini", candidate=job, method="ties", strategy="uniform", models=["a", "b"],
                 task=f"task{i // 2}", metric=f"m{i % 2}", value=i % 10 / 10, stderr=0.01,
                 load_s=1.5, build_s=2, eval_s=3.25, versions={"torch": "2.3"},
                 git_commit="abc123", config='{"x": 1}') for i in range(n)]


def row_keys(path) -> list[tuple]:
    df = read_results(path)
    return list(zip(df.job_key, df.task, df.metric))


def test_append_and_read_back(tmp_path):
    path = tmp_path / "sub" / "results.sqlite"
    store = ResultStore(path)
    assert store.append_job("job1", make_rows("job1", 4))
    assert store.append_job("job2", [dict(task="t", metric="acc", value=1)])  # optionals -> NULL
    assert store.has_job("job1") and not store.has_job("job3")
    assert store.job_keys() == {"job1", "job2"}

    df = read_results(path)
    assert tuple(df.columns) == COLUMNS and len(df) == 5
    assert df.value.tolist() == [0.0, 0.1, 0.2, 0.3, 1.0]
    for c in ("value", "stderr", "load_s", "build_s", "eval_s"):
        assert df[c].dtype == "float64", c
    assert isinstance(df.created_at.dtype, pd.DatetimeTZDtype)
    j1 = df[df.job_key == "job1"].iloc[0]
    assert (j1.models, j1.build_s, j1.versions, j1.config) == ("a,b", 2.0, '{"torch": "2.3"}', '{"x": 1}')
    j2 = df[df.job_key == "job2"].iloc[0]
    assert pd.isna(j2.zoo) and math.isnan(j2.stderr)
    assert df.equals(ResultStore(path).to_dataframe())


def test_presets_are_linked_when_they_store_or_reuse_a_job_and_travel_in_the_archive(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    assert store.append_job("j1", make_rows("j1"), preset="strategies")
    assert not store.append_job("j1", make_rows("j1"), preset="recipe")  # stored already: linked all the same
    store.link("j1", "method_evolution")
    store.link("j1", "strategies")          # once is enough
    store.link("absent", "recipe")          # a job not stored is not linked
    assert store.append_job("j2", make_rows("j2"))  # a plain run: no preset
    assert store.presets() == {"j1": "method_evolution,recipe,strategies"}
    store.archive(tmp_path / "e.parquet")
    for df in (store.to_dataframe(), read_results(tmp_path / "e.parquet")):
        linked = df.drop_duplicates("job_key").set_index("job_key")["presets"]
        assert linked["j1"] == "method_evolution,recipe,strategies" and pd.isna(linked["j2"])


def test_a_store_from_before_the_links_gains_them_when_opened_and_reads_without_a_column(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).append_job("j", make_rows("j"))
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE presets")
    store = ResultStore(path)
    assert "presets" not in store.to_dataframe() and store.presets() == {}
    store.link("j", "recipe")
    assert store.presets() == {"j": "recipe"}


def test_append_same_job_twice_is_noop(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    assert store.append_job("j", make_rows("j", 4)) is True
    assert store.append_job("j", make_rows("j", 6)) is False
    assert len(store.to_dataframe()) == 4


def _append(path, job, n, barrier):
    barrier.wait()
    os._exit(10 if ResultStore(path).append_job(job, make_rows(job, n)) else 11)


def test_concurrent_appends(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path)
    jobs = [(f"own{i}", 50) for i in range(8)] + [("shared", 50)] * 4
    barrier = CTX.Barrier(len(jobs))
    procs = [CTX.Process(target=_append, args=(path, job, n, barrier)) for job, n in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    codes = [p.exitcode for p in procs]
    assert codes[:8] == [10] * 8
    assert sorted(codes[8:]) == [10, 11, 11, 11]  # exactly one racer wins the shared key

    keys = row_keys(path)
    assert len(keys) == len(set(keys)) == 9 * 50
    assert ResultStore(path).job_keys() == {f"own{i}" for i in range(8)} | {"shared"}


def _append_then_hang(path, started):
    def hook(i):
        if i == 5:
            started.set()
            time.sleep(60)  # killed here, inside the open transaction
    results._after_row_insert = hook
    ResultStore(path).append_job("victim", make_rows("victim", 20))


def test_killed_append_leaves_nothing(tmp_path):
    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    store.append_job("before", make_rows("before"))
    started = CTX.Event()
    p = CTX.Process(target=_append_then_hang, args=(path, started))
    p.start()
    assert started.wait(20)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    assert (tmp_path / "r.sqlite-journal").exists()  # hot journal: the next opener rolls it back

    assert not store.has_job("victim")
    assert {job for job, _, _ in row_keys(path)} == {"before"} and len(row_keys(path)) == 3
    assert store.append_job("victim", make_rows("victim", 20))  # a re-run completes it
    assert len(read_results(path)) == 3 + 20 and store.has_job("victim")


@pytest.mark.parametrize("kind", ["garbage", "foreign", "partial"])
def test_bad_file_rejected_untouched(tmp_path, kind):
    path = tmp_path / f"{kind}.sqlite"
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE other (a, b)" if kind == "foreign"
                     else "CREATE TABLE results (job_key, task, metric, value)")
        conn.execute("INSERT INTO other VALUES (1, 2)" if kind == "foreign" else "SELECT 1")
        conn.commit()
        conn.close()
    before = path.read_bytes()
    for open_ in (ResultStore, read_results):
        with pytest.raises(ResultsError) as exc:
            open_(path)
        msg = str(exc.value)
        assert "\n" not in msg and str(path) in msg and "not a glue_bench results database" in msg
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no journal left behind


def test_read_results_missing_file_not_created(tmp_path):
    path = tmp_path / "nope.sqlite"
    with pytest.raises(ResultsError, match="nope.sqlite"):
        read_results(path)
    assert not path.exists()


@pytest.mark.parametrize("bad, match", [
    (dict(value=float("nan")), r"row 2: column 'value' must be a finite score in \[0, 1\], got nan"),
    (dict(value=float("inf")), r"row 2: column 'value' must be a finite score in \[0, 1\], got inf"),
    (dict(value=1.5), r"row 2: column 'value' must be a finite score in \[0, 1\], got 1.5"),
    (dict(value=-0.01), r"row 2: column 'value' must be a finite score in \[0, 1\], got -0.01"),
    (dict(value="0.5"), "row 2: column 'value' is not numeric"),
    (dict(bogus=1), "row 2: unknown column.*'bogus'"),
    (dict(value=None), "row 2: missing required column 'value'"),
])
def test_bad_row_writes_nothing(tmp_path, bad, match):
    store = ResultStore(tmp_path / "r.sqlite")
    rows = make_rows("j", 4)
    rows[2].update(bad)
    with pytest.raises(ResultsError, match=match):
        store.append_job("j", rows)
    assert not store.has_job("j") and len(store.to_dataframe()) == 0


def test_duplicate_task_metric_in_job_rolls_back(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    rows = make_rows("j", 2) + make_rows("j", 1)  # (task0, m0) twice
    with pytest.raises(ResultsError, match="UNIQUE"):
        store.append_job("j", rows)
    assert not store.has_job("j") and len(store.to_dataframe()) == 0


def test_replace_swaps_a_job_s_rows_and_outcomes_in_one_go(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    store.append_job("a", make_rows("a", 4), outcomes=_outcomes(5))
    store.append_job("b", make_rows("b", 2))
    assert not store.append_job("a", make_rows("a", 1))  # stored: kept, unless replaced
    assert store.append_job("a", make_rows("a", 1), outcomes=_outcomes(2), replace=True)
    assert store.append_job("c", make_rows("c", 1), replace=True)  # nothing to replace: an append
    df = store.to_dataframe()
    assert df.groupby("job_key").size().to_dict() == {"a": 1, "b": 2, "c": 1}
    assert store.job_outcomes("a").doc_id.tolist() == [0, 1] and store.job_keys() == {"a", "b", "c"}


def _replace_then_hang(path, started):
    def hook(i):
        if i == 1:
            started.set()
            time.sleep(60)  # killed here: the old rows deleted and the new ones half written, uncommitted
    results._after_row_insert = hook
    ResultStore(path).append_job("victim", make_rows("victim", 5), replace=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_replacement_killed_midway_keeps_the_old_job(tmp_path, sig):
    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    store.append_job("victim", make_rows("victim", 3), outcomes=_outcomes(4))
    started = CTX.Event()
    p = CTX.Process(target=_replace_then_hang, args=(path, started))
    p.start()
    assert started.wait(20)
    os.kill(p.pid, sig)
    p.join(10)
    assert p.exitcode != 0
    assert store.has_job("victim") and len(row_keys(path)) == 3 and len(store.job_outcomes("victim")) == 4


def _older_store(path, lacking: tuple[str, ...]) -> None:
    """A store as a release before `lacking` wrote it, holding one job 'old' (acc 0.5)."""
    old_columns = [c for c in COLUMNS if c not in lacking]
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE results ({', '.join(old_columns)}, UNIQUE (job_key, task, metric))")
        conn.execute("CREATE TABLE jobs (job_key TEXT PRIMARY KEY, finished_at TEXT NOT NULL)")
        conn.execute("INSERT INTO results (job_key, task, metric, value, created_at) "
                     "VALUES ('old', 't', 'acc', 0.5, '2026-01-01T00:00:00+00:00')")
        conn.execute("INSERT INTO jobs VALUES ('old', '2026-01-01T00:00:00+00:00')")


def test_a_store_from_before_the_items_column_gains_it_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    _older_store(path, lacking=results._ADDED_COLUMNS)  # the schema as the first release wrote it
    store = ResultStore(path)
    assert store.append_job("new", [dict(task="t", metric="acc", value=0.75, items="final (x)")])
    df = read_results(path)
    assert set(df.columns) == set(COLUMNS)
    assert df.set_index("job_key")["value"].to_dict() == {"old": 0.5, "new": 0.75}
    assert pd.isna(df.set_index("job_key").loc["old", "items"])
    assert df.set_index("job_key").loc["new", "items"] == "final (x)"
    assert store.job_rows("old") == [{"task": "t", "metric": "acc", "value": 0.5}]
    # it also gains the per-item outcomes table: the old job has none (never invented), new ones do
    assert store.job_outcomes("old").empty
    assert store.append_job("newer", [dict(task="t", metric="acc", value=1.0)],
                            outcomes=[dict(task="t", metric="acc", doc_id=0, value=1.0)])
    assert store.job_outcomes("newer").value.tolist() == [1.0]


def _outcomes(n: int) -> list[dict]:
    return [dict(task="task0", metric="m0", doc_id=d, value=float(d % 2)) for d in range(n)]


def test_per_item_outcomes_are_stored_with_their_job_and_replaced_with_it(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    assert store.append_job("a", make_rows("a", 1), outcomes=_outcomes(5))
    got = store.job_outcomes("a")
    assert list(got.columns) == ["task", "metric", "doc_id", "value"]
    assert got.doc_id.tolist() == [0, 1, 2, 3, 4] and got.value.tolist() == [0, 1, 0, 1, 0]
    assert store.job_outcomes("b").empty
    store.append_job("a", make_rows("a", 1), replace=True)
    assert store.job_outcomes("a").empty


@pytest.mark.parametrize("bad, match", [
    (dict(task="t", metric="m", doc_id=0, value=float("nan")), "finite number"),
    (dict(task="t", metric="m", doc_id="0", value=1.0), "doc_id must be an integer"),
    (dict(task=None, metric="m", doc_id=0, value=1.0), "must be strings"),
])
def test_a_bad_outcome_writes_nothing_of_its_job(tmp_path, bad, match):
    store = ResultStore(tmp_path / "r.sqlite")
    with pytest.raises(ResultsError, match=match):
        store.append_job("a", make_rows("a", 1), outcomes=[*_outcomes(3), bad])
    assert not store.has_job("a") and store.to_dataframe().empty and store.job_outcomes("a").empty


def test_a_job_s_outcomes_twice_for_one_document_roll_it_back(tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    with pytest.raises(ResultsError):
        store.append_job("a", make_rows("a", 1), outcomes=_outcomes(2) + _outcomes(1))
    assert not store.has_job("a") and store.job_outcomes("a").empty


def test_an_older_store_gains_replicate_machine_and_weights(tmp_path):
    path = tmp_path / "old.sqlite"
    _older_store(path, lacking=("replicate", "machine", "weights"))
    store = ResultStore(path)
    store.append_job("new", [dict(task="t", metric="acc", value=0.75, replicate=2, machine="{}", weights="ab")])
    df = read_results(path).set_index("job_key")
    assert df.loc["old", "replicate"] == 0 and df.loc["new", "replicate"] == 2  # older rows: the one replicate
    assert df.loc[["old"], ["machine", "weights"]].isna().all(axis=None)  # missing, never invented
    assert df.loc["new", "weights"] == "ab"
    with pytest.raises(ResultsError, match="column 'replicate' must be a non-negative integer, got -1"):
        store.append_job("bad", [dict(task="t", metric="acc", value=0.1, replicate=-1)])


def test_the_store_carries_its_schema_version_and_a_newer_one_is_refused(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).append_job("a", make_rows("a", 2))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == results.SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {results.SCHEMA_VERSION + 1}")
    with pytest.raises(ResultsError, match=r"schema version 2, written by a newer glue_bench"):
        ResultStore(path)


def test_a_store_from_before_the_version_is_stamped_and_kept(tmp_path):
    path = tmp_path / "old.sqlite"
    _older_store(path, lacking=())
    ResultStore(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == results.SCHEMA_VERSION
    assert ResultStore(path).job_rows("old") == [{"task": "t", "metric": "acc", "value": 0.5}]


def test_a_column_this_glue_bench_cannot_fill_is_refused_at_open_untouched(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultStore(path).append_job("a", make_rows("a", 2))
    with sqlite3.connect(path) as conn:  # as a later release might add it (with a default it would be fine)
        conn.execute("ALTER TABLE jobs ADD COLUMN fine TEXT NOT NULL DEFAULT 'x'")
    ResultStore(path)
    rebuilt = tmp_path / "strict.sqlite"
    with sqlite3.connect(path) as src, sqlite3.connect(rebuilt) as dst:
        for (sql,) in src.execute("SELECT sql FROM sqlite_master WHERE type = 'table'"):
            dst.execute(sql.replace("finished_at TEXT NOT NULL", "finished_at TEXT NOT NULL, owner TEXT NOT NULL")
                        if "CREATE TABLE jobs" in sql else sql)
    before = rebuilt.read_bytes()
    with pytest.raises(ResultsError, match=r"table 'jobs' has column\(s\) owner that this glue_bench cannot fill"):
        ResultStore(rebuilt)
    assert rebuilt.read_bytes() == before


def test_a_corrupt_store_is_refused_at_open(tmp_path):
    path = tmp_path / "r.sqlite"
    store = ResultStore(path)
    for i in range(40):
        store.append_job(f"j{i}", make_rows(f"j{i}", 5), outcomes=_outcomes(200))
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[10 * page + 8: 10 * page + 200] = b"\xff" * 192  # a table page's cell pointers overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(ResultsError, match=r"r.sqlite: corrupt \(\*\*\* in database main \*\*\* On tree page"):
        ResultStore(path)
