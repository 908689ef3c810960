"""A materialization that is killed while it writes: ``python -m tests.support.killed_writer ROOT PARTITION MARKER``.

Materializes ``raw_interactions`` for ``PARTITION`` of the tiny world into the artifact root ``ROOT`` through
Dagster, with one change: the day file's parquet bytes are written only half, flushed and fsynced, then the path
being written is put in ``MARKER`` and the process waits to be killed (the test sends SIGKILL). So the kill
lands, deterministically, in the middle of writing the file, wherever the producer writes it.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    root, partition, marker = argv
    import dagster as dg
    import pandas as pd

    from recsys_assets.defs.ingest.assets import raw_interactions
    from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource

    original = pd.DataFrame.to_parquet

    def half_then_hang(self, path, *args, **kwargs):
        if "interactions" not in str(path) or "truth" in str(path):
            return original(self, path, *args, **kwargs)
        buffer = io.BytesIO()
        original(self, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        Path(marker).write_text(f"{path}\n{len(data)}")
        time.sleep(600)  # killed here
        raise SystemExit("not killed within 600 s")

    pd.DataFrame.to_parquet = half_then_hang
    dg.materialize([raw_interactions], partition_key=partition,
                   resources={"artifacts": ArtifactStoreResource(root=root),
                              "world": WorldResource(seed=7, scale="tiny")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
