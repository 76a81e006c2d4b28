"""The evidence archive: a results store's rows and per-item outcomes as one compact Parquet file,
the form in which the evidence behind the committed tables is versioned (results/evidence.parquet).

One Parquet row per stored row (job key, task, metric and every column of the store), with that
(task, metric)'s per-item outcomes beside it: `hits` (a list of booleans, bit-packed by Parquet)
where every outcome is 0 or 1, else `values` (a list of floats); `doc_ids` only where the documents
are not simply 0..n-1 (the final items of a selective search). Strings that repeat (a job's config
on each of its rows) are dictionary-encoded, and the file is zstd-compressed: a mini-zoo job's 4,400
outcomes and ten rows take about a kilobyte, where SQLite's items table takes ~200 KB.

    write_archive(rows, outcomes, path)    rows: the store's columns + finished_at; outcomes: its items
    read_archive(path) -> (rows, outcomes) the same two DataFrames back

glue_bench.results reads an archive as a store (`ResultStore.from_archive`, and `read_results` or
`Evidence.of` given a .parquet path), so every table is regenerated from it as from a store.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

SUFFIX = ".parquet"
FORMAT_VERSION = "1"  # in the file's metadata; a reader refuses another
_META_KEY = b"glue_bench_archive"


class ArchiveError(Exception):
    """A fault of an archive file, as one line naming it."""


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).endswith(SUFFIX)


def write_archive(rows: pd.DataFrame, outcomes: pd.DataFrame, path: str | os.PathLike) -> None:
    """`rows`: one per stored row (job_key, task, metric, ..., finished_at); `outcomes`: job_key,
    task, metric, doc_id, value. Every outcome must belong to a row (else ArchiveError: it would
    be lost). Written whole or not at all (a scratch file renamed into place)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    by_row = {key: group for key, group in outcomes.sort_values("doc_id", kind="stable").groupby(
        ["job_key", "task", "metric"], sort=False)}
    row_keys = set(zip(rows["job_key"], rows["task"], rows["metric"]))
    if orphans := sorted(set(by_row) - row_keys):
        raise ArchiveError(f"archive {path}: outcomes of {orphans[0]} have no row in the store; nothing written")
    hits, values, doc_ids = [], [], []
    for key in zip(rows["job_key"], rows["task"], rows["metric"]):
        group = by_row.get(key)
        if group is None:
            hits.append(None), values.append(None), doc_ids.append(None)
            continue
        v, d = group["value"].to_numpy(dtype=float), group["doc_id"].to_numpy(dtype=np.int64)
        binary = bool(np.isin(v, (0.0, 1.0)).all())
        hits.append(v.astype(bool).tolist() if binary else None)
        values.append(None if binary else v.tolist())
        doc_ids.append(None if np.array_equal(d, np.arange(len(d))) else d.tolist())
    table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
    table = table.append_column("hits", pa.array(hits, type=pa.list_(pa.bool_())))
    table = table.append_column("values", pa.array(values, type=pa.list_(pa.float64())))
    table = table.append_column("doc_ids", pa.array(doc_ids, type=pa.list_(pa.int64())))
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: FORMAT_VERSION.encode()})
    scratch = f"{path}.partial"
    try:
        pq.write_table(table, scratch, compression="zstd", compression_level=19, use_dictionary=True)
        os.replace(scratch, path)
    except OSError as e:
        raise ArchiveError(f"archive {path}: cannot write it ({e.strerror or e})") from None
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


def read_archive(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows and the outcomes an archive holds, as `write_archive` took them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise ArchiveError(f"archive {path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ArchiveError(f"archive {path}: not a Parquet file ({str(e).splitlines()[0]})") from None
    version = (table.schema.metadata or {}).get(_META_KEY)
    if version != FORMAT_VERSION.encode():
        raise ArchiveError(f"archive {path}: not a glue_bench evidence archive of format {FORMAT_VERSION} "
                           f"(found {version.decode() if version else 'none'})")
    frame = table.to_pandas()
    hits, values, doc_ids = (frame.pop(c) for c in ("hits", "values", "doc_ids"))
    parts = []
    for (job_key, task, metric), h, v, d in zip(zip(frame["job_key"], frame["task"], frame["metric"]),
                                                 hits, values, doc_ids):
        found = h if h is not None else v
        if found is None:
            continue
        found = np.asarray(found, dtype=float)
        parts.append(pd.DataFrame({"job_key": job_key, "task": task, "metric": metric,
                                   "doc_id": np.arange(len(found)) if d is None else np.asarray(d, dtype=np.int64),
                                   "value": found}))
    outcomes = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["job_key", "task", "metric", "doc_id", "value"])
    return frame, outcomes
