"""Applies the full NVTabular workflow to one day of ``masked_interactions`` (runs in the merlin env via Pipes).

Reads the day in Dask partitions of about ``part_size`` (so a ``seed``-scale day never has to fit in memory at
once), writes parquet part files plus NVTabular's ``schema.pbtxt`` (the Merlin schema with the column tags) into
one folder, published atomically. Row order is kept, and ``interaction_id`` and ``item_id_raw`` travel beside the
encoded columns. Reports rows, throughput and how many rows landed on the null/OOV rows of the id columns, and
the ``rows_preserved`` check (output rows == input rows).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

from recsys_assets.lib.feature_spec import NULL_INDEX, OOV_INDEX
from recsys_assets.ml import without_tensorflow


def transform_day(workflow_dir, input_file, out_dir, part_size: str = "128MB", output_files: int = 1) -> dict:
    import nvtabular as nvt
    import pyarrow.parquet as pq

    wf = nvt.Workflow.load(str(Path(workflow_dir)))
    ds = nvt.Dataset([str(input_file)], engine="parquet", part_size=part_size, cpu=True)
    t0 = time.perf_counter()
    wf.transform(ds).to_parquet(str(out_dir), output_files=output_files, shuffle=None, write_hugectr_keyset=False)
    seconds = time.perf_counter() - t0
    files = sorted(Path(out_dir).glob("*.parquet"))
    columns = ["user_id", "item_id", "device_type"]
    counts = {f"{c}_{kind}": 0 for c in columns for kind in ("null", "oov")}
    rows = 0
    for f in files:
        table = pq.read_table(f, columns=columns)
        rows += table.num_rows
        for c in columns:
            values = table.column(c).to_numpy()
            counts[f"{c}_null"] += int((values == NULL_INDEX).sum())
            counts[f"{c}_oov"] += int((values == OOV_INDEX).sum())
    return {"rows": rows, "input_rows": int(pq.ParquetFile(str(input_file)).metadata.num_rows),
            "seconds": seconds, "files": len(files), **counts}


def main() -> int:
    from dagster_pipes import open_dagster_pipes

    from recsys_assets.lib.artifacts import ArtifactStore

    with open_dagster_pipes() as pipes:
        store = ArtifactStore(pipes.get_extra("root"))
        if pipes.extras.get("days") is not None:
            return transform_days(pipes, store)
        workflow = store.local_path(pipes.get_extra("workflow"))
        source = store.local_path(pipes.get_extra("input"))
        output = pipes.get_extra("output")
        with store.writing(output) as tmp:
            stats = transform_day(workflow, source, tmp, pipes.get_extra("part_size"), pipes.get_extra("output_files"))
        rows, expected = stats["rows"], stats["input_rows"]
        pipes.report_asset_check(
            "rows_preserved", passed=rows == expected,
            metadata={"description": f"{rows} rows written for {expected} input rows"
                                     + ("" if rows == expected else ": the transform lost or added rows"),
                      "rows": rows, "input_rows": expected},
        )
        pipes.report_asset_materialization(metadata={
            "rows": rows,
            "transform_seconds": round(stats["seconds"], 3),
            "rows_per_second": round(rows / max(stats["seconds"], 1e-9), 1),
            "files": stats["files"],
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **{k: v for k, v in stats.items() if k.endswith(("_null", "_oov"))},
            "share_user_null": round(stats["user_id_null"] / max(rows, 1), 4),
            "share_item_oov": round(stats["item_id_oov"] / max(rows, 1), 4),
            "path": store.uri(output),
        })
    return 0


def transform_days(pipes, store) -> int:
    """Many days in one process (the weekly retrain's window): extras ``days`` = ``[{day, input, output}]``.

    One ``rows_preserved`` check over every day; metadata: a row per day (rows, seconds, null/OOV counts)."""
    import json

    workflow = store.local_path(pipes.get_extra("workflow"))
    per_day, lost = [], []
    t0 = time.perf_counter()
    for job in pipes.get_extra("days"):
        with store.writing(job["output"]) as tmp:
            stats = transform_day(workflow, store.local_path(job["input"]), tmp, pipes.get_extra("part_size"),
                                  pipes.get_extra("output_files"))
        if stats["rows"] != stats["input_rows"]:
            lost.append(f"day {job['day']:02d}: {stats['rows']} rows for {stats['input_rows']}")
        per_day.append({"day": job["day"], "rows": stats["rows"], "seconds": round(stats["seconds"], 2),
                        "user_id_oov": stats["user_id_oov"], "item_id_oov": stats["item_id_oov"],
                        "user_id_null": stats["user_id_null"]})
    rows = sum(d["rows"] for d in per_day)
    pipes.report_asset_check(
        "rows_preserved", passed=not lost,
        metadata={"description": "; ".join(lost) if lost else f"{len(per_day)} days, {rows} rows, none lost or "
                                                              "added"})
    table = ["| day | rows | seconds | user_id OOV | item_id OOV | user_id null |", "|---|---|---|---|---|---|"]
    table += [f"| {d['day']:02d} | {d['rows']} | {d['seconds']} | {d['user_id_oov']} | {d['item_id_oov']} | "
              f"{d['user_id_null']} |" for d in per_day]
    pipes.report_asset_materialization(metadata={
        "rows": rows, "days": len(per_day), "seconds": round(time.perf_counter() - t0, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "per_day": {"raw_value": "\n".join(table), "type": "md"},
        "per_day_json": {"raw_value": json.dumps(per_day), "type": "text"},
    })
    return 0


if __name__ == "__main__":
    without_tensorflow()  # NVTabular only: 3 s less of the step's start
    sys.exit(main())
