"""In-process runs for :mod:`tests.defs.test_dagster_ui`, in a process of their own (the partition set is read
from ``RECSYS_LAST_DAY`` when the code location loads): the catalogue, the users and days 00-01 of raw
interactions of the tiny world through ``full_build_job``, as ``make demo`` runs its layers
(``recsys_assets.demo.run_job``). Prints one JSON line: the run ids."""

from __future__ import annotations

import json

from recsys_assets.defs.partitions import START_DATE
from recsys_assets.lib.settings import Settings, partition_key


def main() -> dict:
    from recsys_assets.definitions import defs
    from recsys_assets.demo import _instance, run_job

    instance = _instance(Settings.from_env())
    runs = [run_job(defs, "full_build_job", instance, ["items", "users"]).run_id]
    for day in (0, 1):
        runs.append(run_job(defs, "full_build_job", instance, ["raw_interactions"],
                            partition_key=partition_key(day, START_DATE)).run_id)
    return {"runs": runs}


if __name__ == "__main__":
    print(json.dumps(main()))
