"""Scaling the CMA-ES search out: N workers started on the same job share one Optuna study. The
budget is global and exact (the study ends with exactly `n_trials` complete trials), every proxy
score and every job is stored once, and every worker chooses the same candidate.

Two workers on a SQLite study (the same command started twice, as on one machine), and two on a
real PostgreSQL server that the fixture starts (Hydra's submitit launcher with two tasks, as on a
cluster); and, without models, the budget's rules themselves."""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import apt_install
from glue_bench.errors import JobError
from glue_bench.select import evolutionary
from glue_bench.select.evolutionary import SearchConfig, open_storage, search

# one task, and a proxy set large enough that the search outlasts the workers' difference in start
# (about a second): the workers' trials overlap, and the final items are fewer
TRIALS = 8
JOB = ["zoo=mini2", "method=linear", "strategy=evolutionary", f"strategy.search.n_trials={TRIALS}",
       "strategy.proxy.size=20", "eval.tasks=[mini_winogrande]", "eval.limit=21"]  # the proxy set within the first 21 items


# ---- the budget's rules, on a stand-in problem (no model) -----------------------------------------

def _problem(evaluate):
    """What `search` reads of a problem: a search over one coefficient `x`, `evaluate(x)` its score."""
    def fitness(params):
        return SimpleNamespace(score=evaluate(params["x"]), build_s=0.0, eval_s=0.0, per_task={})

    return SimpleNamespace(names=["a"], refs=[SimpleNamespace(key="a")], method="linear", fixed={},
                           fitness=SimpleNamespace(proxy=SimpleNamespace(key="stand-in"), evaluate=fitness), out_dir=None)


def _study(storage: str, problem, cfg: SearchConfig):
    import optuna

    name = evolutionary.study_name(["a"], "linear", {}, cfg, problem.fitness.proxy.key, {"x": (0.0, 1.0)})
    return optuna.load_study(study_name=name, storage=storage)


def test_concurrent_workers_end_with_exactly_the_budget(tmp_path):
    """Three workers (threads, each with its own storage connection and sampler) on one study:
    exactly `n_trials` complete trials, run by more than one worker at a time, and every worker
    returns the same best trial."""
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path}/study.sqlite"
    cfg = SearchConfig(n_trials=7, storage=storage, popsize=4)
    problem = _problem(lambda x: (time.sleep(0.3), round(x, 1))[1])  # ties: the best is the earliest
    results, errors = [], []

    def worker():
        try:
            results.append(search(problem, cfg, progress=False, space={"x": (0.0, 1.0)},
                                  to_candidate=lambda values: values))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(3)]  # a hung one fails, not blocks
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    complete = _study(storage, problem, cfg).get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 7 and [r.completed for r in results] == [7, 7, 7]
    spans = sorted((t.datetime_start, t.datetime_complete) for t in complete)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "no two trials overlapped"
    best = max(complete, key=lambda t: (t.value, -t.number))
    assert {json.dumps(r.best_params) for r in results} == {best.user_attrs["candidate"]}
    assert len({t.user_attrs["candidate"] for t in complete}) == 7, "workers sampled the same candidate"


def test_a_trial_beyond_the_budget_is_refused_and_a_dead_worker_s_place_is_freed(tmp_path, monkeypatch):
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(f"sqlite:///{tmp_path}/study.sqlite")
    study = optuna.create_study(study_name="budget", storage=storage, direction="maximize")
    study.tell(study.ask(), 1.0)
    alive = study.ask()  # a worker's running trial: it holds a place
    alive.set_user_attr("candidate", "{}")
    racing = [study.ask(), study.ask()]  # two asked at once for the last place: the lower number takes it
    assert [evolutionary._admitted(study, t.number, 3) for t in racing] == [True, False]
    # a worker killed before its trial's first heartbeat: its trial is failed once older than the
    # grace period, the running trial that reached the objective is left to the heartbeat
    monkeypatch.setattr(evolutionary, "_GRACE_S", 0)
    time.sleep(0.01)
    evolutionary._fail_dead_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[alive.number] == TrialState.RUNNING
    assert states[racing[0].number] == states[racing[1].number] == TrialState.FAIL
    assert evolutionary._admitted(study, study.ask().number, 3)


@pytest.mark.parametrize("url, fault", [
    ("postgresql+psycopg://nobody@127.0.0.1:{port}/none", "cannot open it"),
    ("nosuchdb://host/db", "Can't load plugin"),
    ("not a url", "not a database URL"),
])
def test_a_bad_storage_url_is_one_line_naming_it(url, fault):
    if url.startswith("postgresql"):
        pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install -e '.[postgres]'")
    url = url.format(port=_free_port())  # nothing listens there
    with pytest.raises(JobError, match=re.escape(url.split(":")[0])) as err:
        open_storage(url)
    assert fault in str(err.value) and "\n" not in str(err.value)


def test_a_password_in_the_storage_url_is_not_shown():
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install -e '.[postgres]'")
    with pytest.raises(JobError) as err:
        open_storage(f"postgresql+psycopg://me:s3cret@127.0.0.1:{_free_port()}/db")
    assert "s3cret" not in str(err.value) and "postgresql+psycopg://me:***@127.0.0.1" in str(err.value)


# ---- two workers, end to end on the micro zoo -------------------------------------------------------

def _env(micro_cache, results: Path) -> dict:
    return {**os.environ, "GLUE_BENCH_CACHE": str(micro_cache), "GLUE_BENCH_MINI_SIZE": "micro",
            "GLUE_BENCH_RESULTS": str(results), "HYDRA_FULL_ERROR": "0"}


def _check_one_search(results: Path, storage: str, worker_logs: list[str]) -> None:
    """The end state of one selective job, whatever the number of workers: exactly TRIALS complete
    trials, one proxy job per candidate evaluated, the job stored once with the study's best
    trial, and every worker chose that one."""
    import optuna
    from optuna.trial import TrialState

    from glue_bench.results import read_results

    (summary,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == TRIALS, [(t.number, t.state.name) for t in trials]
    spans = sorted((t.datetime_start, t.datetime_complete or datetime.max) for t in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), "the workers never overlapped"
    best = max(complete, key=lambda t: (t.value, -t.number))

    df = read_results(results)
    assert not df.duplicated(["job_key", "task", "metric"]).any()
    proxy = df[df["items"].str.startswith("proxy", na=False)]
    evaluated = {t.user_attrs["candidate"] for t in complete if not t.user_attrs.get("cached")}
    assert proxy["job_key"].nunique() == len(evaluated) == TRIALS, "a candidate was evaluated twice"
    chosen = df[df["strategy"].eq("evolutionary") & df["items"].str.startswith("final", na=False)
                & df["candidate"].eq("evolutionary(linear)")]
    assert chosen["job_key"].nunique() == 1 and set(chosen["task"]) == {"mini_winogrande"}
    config = json.loads(chosen["config"].iloc[0])
    assert json.dumps(config["chosen"], sort_keys=True) == best.user_attrs["candidate"]
    assert config["proxy_score"] == pytest.approx(best.value)
    choices = [re.findall(r"evolutionary: chose (.*) \(proxy score", log) for log in worker_logs]
    assert len(choices) == 2 and all(c == [json.dumps(config["chosen"])] for c in choices), choices


@pytest.mark.slow
def test_two_workers_on_one_sqlite_study(micro_cache, tmp_path):
    """The same command started twice at once (workers on one machine share a SQLite study)."""
    storage = f"sqlite:///{tmp_path}/search.sqlite"
    results = tmp_path / "results.sqlite"
    workers = [subprocess.Popen([sys.executable, "-m", "glue_bench", *JOB, f"strategy.search.storage={storage}",
                                 f"hydra.run.dir={tmp_path}/run{i}"], env=_env(micro_cache, results),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        logs = [proc.communicate(timeout=300)[1] for proc in workers]
    finally:
        for proc in workers:
            proc.kill()  # one still running after the other's timeout; nothing for a finished one
    for proc, err in zip(workers, logs):
        assert proc.returncode == 0, err[-3000:]
    _check_one_search(results, storage, logs)


@pytest.mark.slow
@pytest.mark.parametrize("strategy, key", [("evolutionary", "storage"),
                                           ("heuristic_evolutionary", "evolutionary.storage")])
def test_an_unreachable_storage_fails_the_job_in_one_line_before_any_model(run_cli, strategy, key):
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install -e '.[postgres]'")
    url = f"postgresql+psycopg://nobody@127.0.0.1:{_free_port()}/none"  # nothing listens there
    proc = run_cli("zoo=mini2", "method=linear", f"strategy={strategy}", f"strategy.search.{key}={url}")
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith(f"glue_bench: error: study storage {url}: cannot open it: "), errors
    assert "Traceback" not in proc.stderr and "evaluating" not in proc.stderr


@pytest.mark.slow
def test_two_workers_on_one_postgresql_study(run_cli, postgres_url, tmp_path):
    """Hydra's submitit launcher starting the job as two tasks (what `submitit_slurm` does on a
    cluster), sharing a study on a PostgreSQL server."""
    proc = run_cli("-m", *JOB, f"strategy.search.storage={postgres_url}", "hydra/launcher=submitit_local",
                   "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [Path(p).read_text() for p in sorted(glob.glob(f"{tmp_path}/multirun/.submitit/*/*_log.err"))]
    _check_one_search(run_cli.results, postgres_url, logs)


# ---- a PostgreSQL server of the test's own ----------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(n) for n in Path(p).parts[-3].split(".") if n.isdigit()])
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture
def postgres_url():
    """A PostgreSQL server started for the test in a temp dir, on a free localhost port, stopped
    and removed after it. As root the server runs as the `postgres` user (initdb refuses root)."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install -e '.[postgres]'")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        why = apt_install("postgresql")
        bin_dir = _postgres_bin()
        if bin_dir is None:
            pytest.skip(f"PostgreSQL's server binaries are not installed and {why or 'apt-get installed none'}")
    as_user = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        as_user = {"user": account.pw_uid, "group": account.pw_gid}
    # not pytest's tmp_path: its parent is closed to other users
    root = Path(tempfile.mkdtemp(prefix="glue_bench_pg_"))
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    data, port = root / "data", _free_port()

    def pg(*args: str, check: bool = True) -> None:
        proc = subprocess.run([str(a) for a in args], cwd=root, capture_output=True, text=True, timeout=120, **as_user)
        if check and proc.returncode:
            log = (root / "server.log").read_text()[-2000:] if (root / "server.log").exists() else ""
            pytest.fail(f"{Path(args[0]).name} failed: {proc.stderr[-2000:]}{log}")

    try:
        pg(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        pg(bin_dir / "pg_ctl", "-D", data, "-l", root / "server.log", "-w", "-t", "60", "-o",
           f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            pg(bin_dir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
