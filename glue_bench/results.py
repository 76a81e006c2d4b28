"""Results store: one SQLite file shared by every Hydra job of a sweep.

Every metric the suite stores is a proportion (accuracy, exact match, pass@1), so a score outside
[0, 1], or not a finite number, is a fault and never appended.

Each job appends all of its rows plus a row in ``jobs`` in one transaction, so a
job is either fully recorded or absent, and "is it done?" is a single lookup. With its rows go its
per-item outcomes (table ``items``: the metric's value on each test document), from which the
standard errors and the paired differences of glue_bench.stats are computed.

A store travels as an evidence archive (glue_bench.archive: one compact Parquet file, how the
evidence behind the committed tables is versioned): `ResultStore.archive` writes one, and every
reader here (`open_store`, `read_results`, glue_bench.evidence) takes an archive's path as it
takes a store's, by first making a private SQLite copy of it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import numbers
import os
import sqlite3
import tempfile
from pathlib import Path

from glue_bench.archive import ArchiveError, is_archive, read_archive, write_archive
from glue_bench.errors import UserError

COLUMNS = ("job_key", "zoo", "candidate", "method", "strategy", "mixture", "router", "models",
           "task", "metric", "value", "stderr", "load_s", "build_s", "eval_s",
           "versions", "git_commit", "config", "created_at", "items", "replicate", "machine", "weights")
# Added after the first release: an older store gains the columns when it is opened.
# items: which test items a row's score is on: NULL = the whole test split; "final ..." = the items
#   outside a selective search's proxy set; "proxy ..." = the proxy set itself (a search's cached fitness).
# replicate: which independent build of the mini zoo; an older store's rows read as 0, the only one there was.
# machine: the facts that change float results (glue_bench.provenance.machine_facts), as JSON.
# weights: a short hash of the weights evaluated (glue_bench.provenance); NULL on older rows and on a
#   search's proxy rows (cached fitness, identified by the candidate's coefficients in their key).
_ADDED_COLUMNS = ("items", "replicate", "machine", "weights")
_INTEGER = ("replicate",)
ROW_COLUMNS = tuple(c for c in COLUMNS if c not in ("job_key", "created_at"))
_REQUIRED = ("task", "metric", "value")
_NUMERIC = ("value", "stderr", "load_s", "build_s", "eval_s")
_JOB_COLUMNS = ("job_key", "finished_at")
_BUSY_TIMEOUT_S = 60.0  # writers queue behind each other instead of failing
# The store's schema version, in SQLite's PRAGMA user_version: 0 is a store from before it was
# written (upgraded when opened), a newer one is refused (a later glue_bench's).
SCHEMA_VERSION = 1
_ITEM_COLUMNS = ("job_key", "task", "metric", "doc_id", "value")


def _sql_type(column: str) -> str:
    return "REAL" if column in _NUMERIC else "INTEGER" if column in _INTEGER else "TEXT"


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results ("
    + ", ".join(f"{c} {_sql_type(c)}"
                f"{' NOT NULL' if c in _REQUIRED + ('job_key', 'created_at') else ''}" for c in COLUMNS)
    + ", UNIQUE (job_key, task, metric))",
    "CREATE TABLE IF NOT EXISTS jobs (job_key TEXT PRIMARY KEY, finished_at TEXT NOT NULL)",
)
# Per-item outcomes, added after the first release: an older store gains the (empty) table when it
# is opened, and its jobs simply have no outcomes (their intervals show as missing, never invented).
_ITEMS_SCHEMA = ("CREATE TABLE IF NOT EXISTS items (job_key TEXT NOT NULL, task TEXT NOT NULL, metric TEXT NOT NULL, "
                 "doc_id INTEGER NOT NULL, value REAL NOT NULL, PRIMARY KEY (job_key, task, metric, doc_id)) "
                 "WITHOUT ROWID")

# Which experiment presets (conf/experiment/) made or reused each job, added later as items was: a
# job two presets share (a single model, CMA-ES on mini8 with linear...) is linked to both, and the
# study's tables select their jobs by it (glue_bench.study.made_by).
_PRESETS_SCHEMA = ("CREATE TABLE IF NOT EXISTS presets (job_key TEXT NOT NULL, preset TEXT NOT NULL, "
                   "PRIMARY KEY (job_key, preset)) WITHOUT ROWID")

# Test hook, called with the row index after each insert inside the append transaction.
_after_row_insert = None


def _has_table(conn, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None


class ResultsError(UserError):
    """A results-store fault, as one line naming the file."""


# Stores found sound in this process, by file identity: a plan opens the store once per job it
# prices (~90), and PRAGMA quick_check reads the whole file (0.56 s at 230 MB); a file written
# since (another mtime or size) is checked again.
_CHECKED: set[tuple] = set()


def _file_identity(path) -> tuple | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size


class ResultStore:
    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path)
        if self.path.is_dir():
            raise ResultsError(f"results store {self.path}: is a directory (expected an SQLite file)")
        if create:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ResultsError(f"results store {self.path}: cannot create its folder ({e.strerror})") from None
        elif not self.path.is_file():
            raise ResultsError(f"results store {self.path}: no such file")
        self._init_schema(create)

    # A fresh connection per operation: nothing is shared across fork()/joblib workers.
    # Default rollback journal (no WAL), since results may live on a network file system.
    @contextlib.contextmanager
    def _connect(self, create: bool = False):
        uri = self.path.absolute().as_uri() + ("?mode=rwc" if create else "?mode=rw")
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
            with contextlib.closing(conn):
                yield conn
        except sqlite3.Error as e:
            raise ResultsError(f"results store {self.path}: {e}") from e

    @contextlib.contextmanager
    def _transaction(self, create: bool = False):
        # IMMEDIATE takes the write lock up front, so read-then-write sequences cannot interleave.
        with self._connect(create) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _foreign(self, why: str) -> ResultsError:
        return ResultsError(f"results store {self.path}: not a glue_bench results database ({why})")

    def _schema_fault(self, conn) -> str | None:
        for table, want in (("results", COLUMNS), ("jobs", _JOB_COLUMNS), ("items", _ITEM_COLUMNS)):
            info = list(conn.execute(f"PRAGMA table_info({table})"))  # cid, name, type, notnull, default, pk
            if not info and table == "items":
                continue  # an older store gains it when opened
            if not info:
                return f"missing table {table!r}"
            have = {r[1] for r in info}
            if missing := [c for c in want if c not in have and c not in _ADDED_COLUMNS]:
                return f"table {table!r} lacks columns {', '.join(missing)}"
            # a column this glue_bench does not write, that refuses NULL and has no default: every
            # append would fail, after its job's work
            if unknown := [r[1] for r in info if r[1] not in want and r[3] and r[4] is None and not r[5]]:
                return f"table {table!r} has column(s) {', '.join(unknown)} that this glue_bench cannot fill (NOT NULL)"
        return None

    def _init_schema(self, create: bool) -> None:
        with self._connect(create) as conn:
            # Only read until we know the file is ours (or empty): a foreign file stays untouched.
            try:
                empty = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
            except sqlite3.OperationalError:
                raise  # locked / unreadable: reported as is by _connect
            except sqlite3.DatabaseError as e:  # "file is not a database", corruption
                raise self._foreign(str(e)) from e
        if empty and create:
            with self._transaction(create=True) as conn:  # re-check under the lock: racing creators
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                    for stmt in (*_SCHEMA, _ITEMS_SCHEMA, _PRESETS_SCHEMA):
                        conn.execute(stmt)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        with self._connect() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ResultsError(f"results store {self.path}: schema version {version}, written by a newer "
                                   f"glue_bench (this one reads up to {SCHEMA_VERSION}): upgrade glue_bench")
            if fault := self._schema_fault(conn):
                raise self._foreign(fault)
            if (identity := _file_identity(self.path)) is None or identity not in _CHECKED:
                if (check := conn.execute("PRAGMA quick_check(1)").fetchone()[0]) != "ok":
                    raise ResultsError(f"results store {self.path}: corrupt ({' '.join(check.split())}); "
                                       "restore it from a copy")
                if identity is not None:
                    _CHECKED.add(identity)
        self._upgrade_schema(version)

    def _upgrade_schema(self, version: int) -> None:
        def missing(conn) -> list[str]:
            have = {r[1] for r in conn.execute("PRAGMA table_info(results)")}
            return [c for c in _ADDED_COLUMNS if c not in have]

        with self._connect() as conn:  # a read first: opening an up-to-date store never writes
            stamp_only = not missing(conn) and _has_table(conn, "items")
            unlinked = not _has_table(conn, "presets")
        if stamp_only and version == SCHEMA_VERSION and not unlinked:
            return
        if stamp_only:  # today's rows, from before the version or the links were written: added where
            with contextlib.suppress(ResultsError):  # writable (a read-only store reads without links)
                with self._transaction() as conn:
                    if not _has_table(conn, "presets"):
                        conn.execute(_PRESETS_SCHEMA)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        with self._transaction() as conn:  # re-checked under the lock: racing openers
            for column in missing(conn):
                conn.execute(f"ALTER TABLE results ADD COLUMN {column} {_sql_type(column)}")
            if not _has_table(conn, "items"):
                conn.execute(_ITEMS_SCHEMA)
            if not _has_table(conn, "presets"):
                conn.execute(_PRESETS_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _clean(self, job_key: str, i: int, row: dict) -> tuple:
        where = f"results store {self.path}: job {job_key!r} row {i}"
        if unknown := sorted(set(row) - set(ROW_COLUMNS)):
            raise ResultsError(f"{where}: unknown column(s) {', '.join(map(repr, unknown))}")
        out = []
        for c in ROW_COLUMNS:
            v = row.get(c)
            if c == "models" and isinstance(v, (list, tuple)):
                v = ",".join(v)
            elif c in ("versions", "config") and isinstance(v, (dict, list)):
                v = json.dumps(v, sort_keys=True, default=str)
            if v is None:
                if c in _REQUIRED:
                    raise ResultsError(f"{where}: missing required column {c!r}")
            elif c in _INTEGER:
                if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                    raise ResultsError(f"{where}: column {c!r} must be a non-negative integer, got {v!r}")
                v = int(v)
            elif c in _NUMERIC:
                if isinstance(v, bool) or not isinstance(v, numbers.Real):
                    raise ResultsError(f"{where}: column {c!r} is not numeric ({v!r})")
                v = float(v)
                if c == "value" and not 0.0 <= v <= 1.0:  # NaN fails this too
                    raise ResultsError(f"{where}: column 'value' must be a finite score in [0, 1], got {v!r}")
                if not math.isfinite(v):
                    v = None  # an unknown stderr/timing is just missing
            elif not isinstance(v, str):
                raise ResultsError(f"{where}: column {c!r} must be a string, got {type(v).__name__}")
            out.append(v)
        return tuple(out)

    def check_writable(self) -> None:
        """A store that can be read but not written fails here, before a job's work, not after it.
        The probe's table is rolled back: the file is left as it was."""
        with self._connect() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("CREATE TABLE glue_bench_write_probe (x INTEGER)")
            except sqlite3.OperationalError as e:
                raise ResultsError(f"results store {self.path}: cannot write to it ({e})") from None
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def has_job(self, job_key: str) -> bool:
        with self._connect() as conn:
            return conn.execute("SELECT 1 FROM jobs WHERE job_key = ?", (job_key,)).fetchone() is not None

    def link(self, job_key: str, preset: str) -> None:
        """Record that experiment preset `preset` reused the stored job `job_key` (a job not stored is
        not linked: what a preset made is linked when it is appended)."""
        with self._transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO presets SELECT job_key, ? FROM jobs WHERE job_key = ?", (preset, job_key))

    def presets(self) -> dict[str, str]:
        """Each linked job's presets, sorted and comma-joined."""
        with self._connect() as conn:
            if not _has_table(conn, "presets"):
                return {}  # a read-only store from before the links
            return {key: ",".join(sorted(names.split("\x1f"))) for key, names in
                    conn.execute("SELECT job_key, group_concat(preset, char(31)) FROM presets GROUP BY job_key")}

    def job_keys(self) -> set[str]:
        with self._connect() as conn:
            return {r[0] for r in conn.execute("SELECT job_key FROM jobs")}

    def _clean_outcome(self, job_key: str, i: int, outcome: dict) -> tuple:
        where = f"results store {self.path}: job {job_key!r} outcome {i}"
        task, metric, doc_id, value = (outcome.get(k) for k in ("task", "metric", "doc_id", "value"))
        if not (isinstance(task, str) and isinstance(metric, str)):
            raise ResultsError(f"{where}: task and metric must be strings, got {task!r}, {metric!r}")
        if isinstance(doc_id, bool) or not isinstance(doc_id, numbers.Integral):
            raise ResultsError(f"{where}: doc_id must be an integer, got {doc_id!r}")
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ResultsError(f"{where}: value must be a finite number, got {value!r}")
        return job_key, task, metric, int(doc_id), float(value)

    def archive(self, path: str | os.PathLike) -> int:
        """Write every job's rows and outcomes to an evidence archive (glue_bench.archive), after
        checking that each replicate is one build (`check_one_build_per_replicate`); returns the
        number of jobs written. A search's proxy scores (rows with `items = proxy ...`: every
        candidate it tried, thousands a replicate) are left out: no table or finding reads them,
        and the searches' trials are in their own storage (results/search)."""
        import pandas as pd

        check_one_build_per_replicate(self.to_dataframe())
        searched = "SELECT DISTINCT job_key FROM results WHERE items LIKE 'proxy %'"
        with self._connect() as conn:
            rows = pd.read_sql_query(f"SELECT r.{', r.'.join(COLUMNS)}, j.finished_at FROM results r "
                                     f"JOIN jobs j USING (job_key) WHERE r.job_key NOT IN ({searched}) "
                                     "ORDER BY r.rowid", conn)
            outcomes = pd.read_sql_query("SELECT job_key, task, metric, doc_id, value FROM items "
                                         f"WHERE job_key NOT IN ({searched})", conn)
        if links := self.presets():
            rows["presets"] = rows["job_key"].map(links)
        try:
            write_archive(rows, outcomes, path)
        except ArchiveError as e:
            raise ResultsError(str(e)) from None
        return rows["job_key"].nunique()

    @classmethod
    def from_archive(cls, archive: str | os.PathLike, path: str | os.PathLike) -> "ResultStore":
        """A new store at `path` holding an archive's jobs as they were stored (created_at and
        finished_at kept), in one transaction."""
        try:
            rows, outcomes = read_archive(archive)
        except ArchiveError as e:
            raise ResultsError(str(e)) from None
        store = cls(path)
        columns = ("job_key", *ROW_COLUMNS, "created_at")
        sql = f"INSERT INTO results ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"

        def plain(v):  # pandas' missing values and numpy scalars as SQLite takes them
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return None
            return v.item() if hasattr(v, "item") else v

        with store._transaction() as conn:
            conn.executemany(sql, [tuple(plain(v) for v in row) for row in rows[list(columns)].itertuples(index=False)])
            conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)",
                             [(k, t, m, int(d), float(v)) for k, t, m, d, v in outcomes.itertuples(index=False)])
            conn.executemany("INSERT INTO jobs VALUES (?, ?)",
                             rows[["job_key", "finished_at"]].drop_duplicates("job_key").itertuples(index=False))
            if "presets" in rows:
                linked = rows[["job_key", "presets"]].drop_duplicates("job_key").dropna()
                conn.executemany("INSERT INTO presets VALUES (?, ?)",
                                 [(key, name) for key, names in linked.itertuples(index=False) for name in names.split(",")])
        return store

    def append_job(self, job_key: str, rows: list[dict], outcomes: list[dict] = (), *, replace: bool = False,
                   preset: str | None = None) -> bool:
        """Insert all rows of one job, and its per-item outcomes ({task, metric, doc_id, value}),
        atomically and mark it done; False if it already was. `replace`: a job already stored is
        replaced in the same transaction (force=true), so a kill or a lock at any moment leaves
        either the old job or the new one, never neither. `preset`: the experiment preset that
        made it, linked in the same transaction (also when another process stored it first)."""
        values = [self._clean(job_key, i, r) for i, r in enumerate(rows)]  # validate before writing
        outcomes = [self._clean_outcome(job_key, i, outcome) for i, outcome in enumerate(outcomes)]
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        columns = ("job_key", *ROW_COLUMNS, "created_at")
        sql = f"INSERT INTO results ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        with self._transaction() as conn:
            if preset is not None:
                conn.execute("INSERT OR IGNORE INTO presets VALUES (?, ?)", (job_key, preset))
            if conn.execute("SELECT 1 FROM jobs WHERE job_key = ?", (job_key,)).fetchone():
                if not replace:
                    return False
                for table in ("items", "results", "jobs"):
                    conn.execute(f"DELETE FROM {table} WHERE job_key = ?", (job_key,))
            for i, v in enumerate(values):
                conn.execute(sql, (job_key, *v, now))
                if _after_row_insert is not None:
                    _after_row_insert(i)
            conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?)", outcomes)
            conn.execute("INSERT INTO jobs VALUES (?, ?)", (job_key, now))
        return True

    def job_rows(self, job_key: str) -> list[dict]:
        """The rows of one job (task, metric, value), in insertion order."""
        with self._connect() as conn:
            return [{"task": t, "metric": m, "value": v} for t, m, v in conn.execute(
                "SELECT task, metric, value FROM results WHERE job_key = ? ORDER BY rowid", (job_key,))]

    def job_outcomes(self, job_key: str):
        """One job's per-item outcomes as a DataFrame (task, metric, doc_id, value), by document;
        empty for a job stored before outcomes were kept."""
        import pandas as pd

        with self._connect() as conn:
            return pd.read_sql_query("SELECT task, metric, doc_id, value FROM items WHERE job_key = ? "
                                     "ORDER BY task, metric, doc_id", conn, params=(job_key,))

    def to_dataframe(self):
        import pandas as pd  # lazy: worker processes that only append need not import pandas

        with self._connect() as conn:
            df = pd.read_sql_query(f"SELECT {', '.join(COLUMNS)} FROM results ORDER BY rowid", conn)
        df = df.astype({c: "float64" for c in _NUMERIC})  # all-NULL columns come back as object
        df["replicate"] = df["replicate"].fillna(0).astype("int64")  # rows from before replicates: the one there was
        df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
        if links := self.presets():  # a store without links (written before they were kept) has no column
            df["presets"] = df["job_key"].map(links)
        return df


_OPENED_ARCHIVES: dict[tuple, ResultStore] = {}


def open_store(path: str | os.PathLike) -> ResultStore:
    """An existing store, or an evidence archive made a store: a private SQLite copy, once per
    process and version of the file (path, size, mtime), in a temporary folder. Never creates or
    changes the file at `path`."""
    if not is_archive(path):
        return ResultStore(path, create=False)
    if not os.path.isfile(path):
        raise ResultsError(f"archive {path}: no such file")
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _OPENED_ARCHIVES:
        folder = tempfile.mkdtemp(prefix="glue_bench_archive_")
        _OPENED_ARCHIVES[key] = ResultStore.from_archive(path, Path(folder) / "results.sqlite")
    return _OPENED_ARCHIVES[key]


def read_results(path: str | os.PathLike):
    """All rows of an existing store (or evidence archive) as a DataFrame; never creates a file."""
    return open_store(path).to_dataframe()


def _single_model_key(row) -> str:
    try:
        return json.loads(row["config"]).get("key") or row["candidate"]
    except (TypeError, ValueError):
        return row["candidate"]


def check_one_build_per_replicate(df) -> None:
    """A replicate zoo is one build of its models: a model evaluated with two different weights in
    one replicate (its zoo rebuilt, here or on another machine, and both builds' jobs stored) would
    mix two zoos in every comparison of that replicate. Raises ResultsError naming the model, the
    replicate and the two builds' weights and CPUs. Rows without a weights fingerprint (older
    stores) are not checked."""
    singles = df[(df["method"] == "none") & (df["mixture"].fillna("none") == "none") & df["weights"].notna()]
    if singles.empty:
        return
    singles = singles.assign(model=singles.apply(_single_model_key, axis=1))
    for (model, replicate), rows in singles.groupby(["model", "replicate"]):
        builds = rows.drop_duplicates("weights")
        if len(builds) > 1:
            seen = [f"{w} on {_cpu(m)}" for w, m in zip(builds["weights"], builds["machine"])][:2]
            raise ResultsError(f"replicate {replicate}: model {model} was evaluated with the weights of two builds "
                               f"({seen[0]}; {seen[1]}): a replicate is one build, keep one build's jobs "
                               "(another build is another replicate)")


def _cpu(machine) -> str:
    try:
        return json.loads(machine).get("cpu") or "an unknown CPU"
    except (TypeError, ValueError):
        return "an unknown machine"
