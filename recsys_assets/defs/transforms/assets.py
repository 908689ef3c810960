"""Transforms: cold-start masking, the NVTabular workflows, the transformed days and the compiled serving transforms.

- ``masked_interactions[day]`` (pipeline env): the raw day joined with user (age, gender), item (category_l1/l2,
  item_gender, price) and point-in-time ``top_category`` features. Train days (00-08) are cold-start masked
  (``lib.masking``); every other day gets the same joined rows unmasked (flags False), so everything downstream
  reads one kind of table. Users missing from the user table get the cold-start defaults (mean age, gender -1).
- ``nvt_workflows`` (merlin env, Pipes): user/item/context workflows fit on the masked train days, and the full
  workflow composed from them (``ml.nvt_workflows``); the training mean age is stored beside them.
- ``transformed_interactions[day]`` (merlin env, Pipes): the full workflow applied to the day, parquet with the
  Merlin schema (``ml.nvt_transform``), raw item id carried as ``item_id_raw``.
- ``serving_transforms`` (merlin env, Pipes): the workflows compiled into a numpy description
  (``serving.transforms``), with a blocking parity check against NVTabular.
- The weekly retrain (``full_retrain_job``): ``nvt_workflows`` with ``window: true`` refits on a sliding window of
  recent days (train days cold-start masked like the original ones, copies under ``transforms/retrain/masked``;
  the replaced workflows archived by the digest of their compiled transforms), ``serving_transforms`` compiles
  them, and ``retrain_transformed_days`` transforms every window day in one merlin process into
  ``transforms/retrain/transformed`` (unpartitioned: one run, one graph in the UI). The daily
  ``transformed_interactions`` partitions are never rewritten by it; each records which fit it was made with
  (``lib.retrain``), so fine-tunes read days in their parent release's vocabulary.

Inputs are validated before anything runs: a missing or empty partition, or a missing or unknown column, fails a
blocking check naming the partition and the column, writes nothing (an earlier output of the partition is
removed) and stops everything downstream in the run.
"""

import time
import warnings

import dagster as dg
import numpy as np

from recsys_assets.defs.checks_util import check, check_specs, markdown_table
from recsys_assets.defs.features.assets import user_top_category
from recsys_assets.defs.ingest.assets import items, raw_interactions, users
from recsys_assets.defs.partitions import START_DATE, TRAIN_DAYS, daily_partitions, partition_day
from recsys_assets.defs.resources import ArtifactStoreResource, MerlinRunner
from recsys_assets.lib import masking, paths, retrain
from recsys_assets.lib.artifacts import ArtifactNotFound, ArtifactStore
from recsys_assets.lib.settings import day_index, partition_key
from recsys_assets.lib.feature_spec import MASKED_SCHEMA, SENTINEL, USER_HISTORY

GROUP = "transforms"
# The run tag the instance's run queue limits (dagster.yaml: one merlin-env run at a time), and the op
# concurrency pool for the same limit when these assets run inside a larger run.
MERLIN_TAGS = {"recsys/merlin": "true"}
MERLIN_POOL = "merlin"
TRAIN_KEYS = [partition_key(d, START_DATE) for d in TRAIN_DAYS]
LAST_TRAIN_DAY = TRAIN_DAYS[-1]
# Arrow types of the masked table's columns (what a parquet schema says for the pandas dtypes).
_ARROW_TYPES = {"int64": ("int64",), "float64": ("double",), "bool": ("bool",),
                "object": ("string", "large_string")}



def _blocked(failed: dg.AssetCheckResult, others: tuple[str, ...], **metadata) -> dg.MaterializeResult:
    """The result of an asset whose inputs failed: the failed check, the others marked as not run."""
    why = f"not run: {failed.check_name} failed"
    return dg.MaterializeResult(
        metadata={"blocked_by": failed.check_name, **metadata},
        check_results=[failed, *(check(name, False, why) for name in others)],
    )


def _read(store: ArtifactStore, rel: str, what: str, key: str, columns, problems: list):
    """Read ``columns`` of an input; a missing file, missing column or empty table is added to ``problems``."""
    import pyarrow.parquet as pq

    try:
        path = store.local_path(rel)
    except ArtifactNotFound:
        problems.append(f"{what} for partition {key} is missing ({store.uri(rel)}): materialize it first")
        return None
    names = pq.read_schema(path).names
    absent = [c for c in columns if c not in names]
    if absent:
        problems.append(f"{what} for partition {key} ({store.uri(rel)}) lacks column(s) "
                        + ", ".join(repr(c) for c in absent))
        return None
    df = store.read_parquet(rel, columns=list(columns))
    if df.empty:
        problems.append(f"{what} for partition {key} ({store.uri(rel)}) is empty: re-materialize it")
        return None
    return df


def masked_table_problems(store: ArtifactStore, day: int) -> list[str]:
    """Why the masked table of ``day`` cannot be used: missing, empty, missing or unknown columns, wrong types."""
    import pyarrow.parquet as pq

    key = partition_key(day, START_DATE)
    rel = paths.masked_interactions(day)
    where = f"masked_interactions partition {key} ({store.uri(rel)})"
    try:
        path = store.local_path(rel)
    except ArtifactNotFound:
        return [f"masked_interactions partition {key} is missing ({store.uri(rel)}): materialize it first"]
    meta = pq.read_metadata(path)
    schema = meta.schema.to_arrow_schema()
    problems = []
    if meta.num_rows == 0:
        problems.append(f"{where} is empty: re-materialize it (and its raw_interactions partition)")
    for column, dtype in MASKED_SCHEMA.items():
        if column not in schema.names:
            problems.append(f"{where} lacks column {column!r}")
        elif str(schema.field(column).type) not in _ARROW_TYPES[dtype]:
            problems.append(f"{where}: column {column!r} has type {schema.field(column).type}, expected {dtype}")
    for column in schema.names:
        if column not in MASKED_SCHEMA and not column.startswith("__index_level_"):
            problems.append(f"{where} has unknown column {column!r}: the workflows are fit on "
                            f"{', '.join(MASKED_SCHEMA)}; re-materialize it with this code version")
    return problems


# -- masked_interactions -----------------------------------------------------------------------------------------
class MaskingConfig(dg.Config):
    user_rate: float = 0.05
    """Share of train-day rows whose user_id, gender and history codes become -1 (and age the training mean)."""
    device_rate: float = 0.05
    """Share of train-day rows whose device_type becomes -1 (drawn independently of the user mask)."""
    seed: int = 20260101
    """Masking seed; each day draws from (seed, day), so a day is masked identically on every run."""
    row_group_rows: int = 250_000
    """Parquet row-group size: the unit NVTabular's Dask partitions are cut from (keeps seed scale in memory)."""


MASKED_CHECKS = ("inputs_complete", "masking_recorded")


@dg.asset(
    group_name=GROUP,
    kinds={"pandas", "parquet"},
    partitions_def=daily_partitions,
    deps=[raw_interactions, users, items, user_top_category],
    check_specs=check_specs("masked_interactions", MASKED_CHECKS),
)
def masked_interactions(context: dg.AssetExecutionContext, config: MaskingConfig,
                        artifacts: ArtifactStoreResource) -> dg.MaterializeResult:
    """The day's interactions with user, item and ``top_category`` features; train days cold-start masked.

    Train days: ``user_rate`` of the rows get user_id, gender, top_category = -1 and age = the training mean
    age (what serving gives an unknown user); separately ``device_rate`` get device_type = -1; recorded in
    ``masked_user`` / ``masked_device``. Validation and later days: the same joined rows, unmasked.
    """
    day = partition_day(context)
    key = context.partition_key
    store = artifacts.store()
    out = paths.masked_interactions(day)
    problems: list[str] = []
    raw = _read(store, paths.raw_interactions(day), "raw_interactions", key, masking.RAW_COLUMNS, problems)
    user_table = _read(store, paths.USERS, "users", key, masking.USER_COLUMNS, problems)
    item_table = _read(store, paths.ITEMS, "items", key, masking.ITEM_COLUMNS, problems)
    top = _read(store, paths.top_category(day), "user_top_category", key, masking.TOP_CATEGORY_COLUMNS, problems)
    joined = None
    if not problems:
        mean_age = masking.training_mean_age(user_table, LAST_TRAIN_DAY)
        try:
            joined = masking.join_day(raw, user_table, item_table, top, mean_age)
        except masking.JoinError as exc:
            problems.append(f"partition {key}: {exc}")
    if problems:
        store.delete(out)  # a stale file must not reach the workflows
        description = "; ".join(problems)
        return _blocked(check("inputs_complete", False, description), ("masking_recorded",), day=day)

    train = day in TRAIN_DAYS
    if train:
        table, stats = masking.mask_day(joined, config.seed, day, mean_age, config.user_rate, config.device_rate)
    else:
        table, stats = joined, masking.MaskStats(rows=len(joined), masked_users=0, masked_devices=0, masked_both=0)
    store.write_parquet(out, table, row_group_size=config.row_group_rows)

    n = len(table)
    want_user, want_device = (config.user_rate, config.device_rate) if train else (0.0, 0.0)
    masked = table[table["masked_user"]]
    together = bool(((masked[["user_id", "gender", *USER_HISTORY]] == SENTINEL).all(axis=1)).all()
                    and (masked["age"] == mean_age).all())
    recorded = (abs(stats.user_rate - want_user) <= 1.0 / n and abs(stats.device_rate - want_device) <= 1.0 / n
                and together and bool((table.loc[table["masked_device"], "device_type"] == SENTINEL).all()))
    registered = set(user_table["user_id"].tolist())
    cold_rows = int((~joined["user_id"].isin(registered)).sum())
    coverage = [
        ("user_id = -1", float((table["user_id"] == SENTINEL).mean())),
        ("gender = -1", float((table["gender"] == SENTINEL).mean())),
        *[(f"{name} = -1", float((table[name] == SENTINEL).mean())) for name in USER_HISTORY],
        ("device_type = -1", float((table["device_type"] == SENTINEL).mean())),
        ("age = mean age", float((table["age"] == mean_age).mean())),
    ]
    import pandas as pd

    return dg.MaterializeResult(
        metadata={
            "day": day,
            "split": "train" if train else "not train (unmasked)",
            "rows": n,
            "mean_age": mean_age,
            "masked_users": stats.masked_users,
            "masked_devices": stats.masked_devices,
            "masked_both": stats.masked_both,
            "user_mask_rate": stats.user_rate,
            "device_mask_rate": stats.device_rate,
            "mask_seed": config.seed,
            "unregistered_user_rows": cold_rows,
            "path": store.uri(out),
            "sentinel_shares": markdown_table(pd.DataFrame(coverage, columns=["value", "share of rows"]), ".4f"),
        },
        check_results=[
            check("inputs_complete", True, f"partition {key}: raw day, users, items and top_category joined "
                   f"({n} rows, {cold_rows} rows of users not in the user table got cold-start defaults)"),
            check("masking_recorded", recorded,
                   f"partition {key}: {stats.masked_users} user-masked rows ({stats.user_rate:.4f}, want "
                   f"{want_user}), {stats.masked_devices} device-masked ({stats.device_rate:.4f}, want "
                   f"{want_device}); user sentinels set together: {together}"),
        ],
    )


# -- nvt_workflows --------------------------------------------------------------------------------------------------
class WorkflowFitConfig(dg.Config):
    part_size: str = "128MB"
    """Dask partition size NVTabular reads the training days in (bounds memory at seed scale)."""
    train_days: list[int] = list(TRAIN_DAYS)  # noqa: RUF012 (pydantic copies field defaults)
    """The masked days the workflows are fit on (default: the train days 00-08)."""
    window: bool = False
    """The weekly retrain's refit (``full_retrain_job`` sets it): fit on a sliding window of recent days instead
    of ``train_days`` (``window_*`` below, written to ``transforms/retrain/window.json`` for the training assets).
    The replaced workflows are archived first (``paths.workflows_archive``), so the releases built on them can
    still be fine-tuned, and every daily transformed day is recorded as made with them."""
    window_train_days: int = retrain.DEFAULT_TRAIN_DAYS
    """Window: this many days train (the workflows are fit on them) ..."""
    window_validation_days: int = retrain.DEFAULT_VALIDATION_DAYS
    """... and the newest this many validate (transformed, never fit on)."""
    window_newest_day: int = -1
    """Window: its last day; -1 = the newest day with masked interactions."""


WORKFLOW_CHECKS = ("train_days_complete", "null_and_oov_rows")


@dg.asset(
    group_name=GROUP,
    kinds={"nvtabular"},
    op_tags=MERLIN_TAGS,
    pool=MERLIN_POOL,
    deps=[dg.AssetDep(masked_interactions, partition_mapping=dg.SpecificPartitionsPartitionMapping(TRAIN_KEYS)),
          users],
    check_specs=check_specs("nvt_workflows", WORKFLOW_CHECKS),
)
def nvt_workflows(context: dg.AssetExecutionContext, config: WorkflowFitConfig, artifacts: ArtifactStoreResource,
                  merlin: MerlinRunner) -> dg.MaterializeResult:
    """User, item and context NVTabular workflows fit on the masked train days, plus the full workflow.

    Saved under ``transforms/workflows/{user,item,context,full}`` with ``meta.json`` (training mean age, stats).
    ``null_and_oov_rows`` (blocking) proves a sentinel lands on row 1 and an unseen id on row 2.
    """
    store = artifacts.store()
    if config.window:
        return _fit_window(context, store, merlin, config)
    days = sorted(config.train_days)
    problems = [] if days else ["no train days configured"]
    problems += [p for d in days for p in masked_table_problems(store, d)]
    mean_age = None
    if not problems:
        try:
            user_table = store.read_parquet(paths.USERS, columns=list(masking.USER_COLUMNS))
            mean_age = masking.training_mean_age(user_table, LAST_TRAIN_DAY)
        except (ArtifactNotFound, KeyError, ValueError) as exc:
            problems.append(f"users: {exc}")
    if not problems:
        for d in days:
            masked = store.read_parquet(paths.masked_interactions(d), columns=["age", "masked_user"])
            ages = masked.loc[masked["masked_user"], "age"]
            if len(ages) and not np.allclose(ages.to_numpy(), mean_age, rtol=0, atol=1e-9):
                problems.append(f"masked_interactions partition {partition_key(d, START_DATE)}: column 'age' of "
                                f"masked rows is {ages.iloc[0]}, the training mean age is {mean_age}: the user "
                                "table changed since it was masked; re-materialize the train days")
    if problems:
        return _blocked(check("train_days_complete", False, "; ".join(problems)), ("null_and_oov_rows",))

    invocation = merlin.run(
        context, "recsys_assets.ml.nvt_workflows",
        extras={"root": store.root, "train_paths": [paths.masked_interactions(d) for d in days],
                "output": paths.NVT_WORKFLOWS, "mean_age": mean_age, "part_size": config.part_size},
    )
    result = invocation.get_materialize_result()
    keys = [partition_key(d, START_DATE) for d in days]
    return dg.MaterializeResult(
        metadata={**result.metadata, "train_partitions": ", ".join(keys)},
        check_results=[check("train_days_complete", True,
                              f"masked_interactions partitions {', '.join(keys)} present, non-empty, "
                              "with the expected columns"),
                       *result.check_results],
    )


def _available_masked_days(store: ArtifactStore) -> list:
    return sorted(int(p.rsplit("day_", 1)[1].split(".")[0]) for p in store.list("transforms/masked")
                  if p.endswith(".parquet") and "day_" in p)


def _fit_window(context, store: ArtifactStore, merlin, config: "WorkflowFitConfig") -> dg.MaterializeResult:
    """The weekly retrain's refit: resolve the window, cold-start mask its train days the way the original train
    days are, archive the replaced fit, fit the workflows on the window, record the window."""
    import json
    import shutil

    import pandas as pd

    problems = []
    try:
        train, validation = retrain.window_days(_available_masked_days(store), config.window_newest_day,
                                                config.window_train_days, config.window_validation_days)
    except retrain.WindowError as exc:
        return _blocked(check("train_days_complete", False, str(exc)), ("null_and_oov_rows",))
    problems += [p for d in train + validation for p in masked_table_problems(store, d)]
    if problems:
        return _blocked(check("train_days_complete", False, "; ".join(problems)), ("null_and_oov_rows",))
    meta_rel = f"{paths.NVT_WORKFLOWS}/meta.json"
    if store.exists(meta_rel):  # the cold-start default age stays the one serving already gives unknown users
        mean_age = float(json.loads(store.read_bytes(meta_rel))["mean_age"])
    else:
        mean_age = masking.training_mean_age(store.read_parquet(paths.USERS), LAST_TRAIN_DAY)
    masking_defaults = MaskingConfig()
    masked, rows = {}, []
    for d in train:
        daily = store.read_parquet(paths.masked_interactions(d))
        if bool(daily["masked_user"].any() or daily["masked_device"].any()):
            masked[str(d)] = paths.masked_interactions(d)  # an original train day: masked already
            rows.append({"day": d, "role": "train", "source": "daily (masked)", "rows": len(daily),
                         "masked_users": int(daily["masked_user"].sum())})
            continue
        table, stats = masking.mask_day(daily, masking_defaults.seed, d, mean_age, masking_defaults.user_rate,
                                        masking_defaults.device_rate)
        store.write_parquet(paths.retrain_masked(d), table, row_group_size=masking_defaults.row_group_rows)
        masked[str(d)] = paths.retrain_masked(d)
        rows.append({"day": d, "role": "train", "source": "masked for the retrain", "rows": stats.rows,
                     "masked_users": stats.masked_users})
    for d in validation:
        masked[str(d)] = paths.masked_interactions(d)
        rows.append({"day": d, "role": "validation", "source": "daily (unmasked)", "rows": None,
                     "masked_users": 0})

    replaced = retrain.transforms_digest(store)
    archived = recorded = None
    if replaced and store.exists(meta_rel):
        recorded = retrain.record_unrecorded(store, replaced)
        archived = paths.workflows_archive(replaced)
        if not store.exists(f"{archived}/meta.json"):
            with store.writing(archived) as tmp:
                shutil.copytree(store.local_path(paths.NVT_WORKFLOWS), tmp)
    window = retrain.RetrainWindow(newest_day=validation[-1], train_days=train, validation_days=validation,
                                   mean_age=mean_age, masked=masked)
    store.write_bytes(paths.RETRAIN_WINDOW, window.to_json().encode())
    invocation = merlin.run(
        context, "recsys_assets.ml.nvt_workflows",
        extras={"root": store.root, "train_paths": [masked[str(d)] for d in train],
                "output": paths.NVT_WORKFLOWS, "mean_age": mean_age, "part_size": config.part_size},
    )
    result = invocation.get_materialize_result()
    keys = [partition_key(d, START_DATE) for d in train]
    return dg.MaterializeResult(
        metadata={**result.metadata, "train_partitions": ", ".join(keys),
                  "window": f"train {train[0]:02d}-{train[-1]:02d}, validation {validation[0]:02d}-"
                            f"{validation[-1]:02d}",
                  "window_days": markdown_table(pd.DataFrame(rows)),
                  "replaced_fit": replaced[:16] or "-", "archived_to": store.uri(archived) if archived else "-",
                  "days_recorded_with_replaced_fit": len(recorded or [])},
        check_results=[check("train_days_complete", True,
                              f"retrain window: train days {train[0]:02d}-{train[-1]:02d} (masked like the original "
                              f"train days), validation days {validation[0]:02d}-{validation[-1]:02d}"),
                       *result.check_results],
    )


# -- transformed_interactions ---------------------------------------------------------------------------------------
class TransformConfig(dg.Config):
    part_size: str = "128MB"
    """Dask partition size the day is read in."""
    output_files: int = 1
    """Parquet part files written for the day."""


TRANSFORMED_CHECKS = ("input_valid", "rows_preserved")

# ``backfill_policy`` is a beta parameter of ``dg.asset`` in the pinned Dagster; the warning it raises at import
# would be the first line of every command's console (before the demo routes warnings to its log).
warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy` of function `asset`", category=dg.BetaWarning)


@dg.asset(
    group_name=GROUP,
    kinds={"nvtabular", "parquet"},
    op_tags=MERLIN_TAGS,
    pool=MERLIN_POOL,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[masked_interactions, nvt_workflows],
    check_specs=check_specs("transformed_interactions", TRANSFORMED_CHECKS),
)
def transformed_interactions(context: dg.AssetExecutionContext, config: TransformConfig,
                             artifacts: ArtifactStoreResource, merlin: MerlinRunner) -> dg.MaterializeResult:
    """The full workflow applied to the day (masked on train days, unmasked otherwise), with the Merlin schema.

    A folder of parquet part files + ``schema.pbtxt``; ``item_id_raw`` keeps the raw item id beside the index.
    A backfill of many days is one run (single-run backfill policy): one merlin process transforms them all,
    instead of one process start (most of a tiny day's time) per day.
    """
    days = [day_index(key, START_DATE) for key in context.partition_keys]
    store = artifacts.store()
    problems = [p for day in days for p in masked_table_problems(store, day)]
    if not store.exists(f"{paths.NVT_WORKFLOWS}/full/workflow.pkl"):
        problems.append(f"nvt_workflows not found ({store.uri(paths.NVT_WORKFLOWS)}): materialize it first")
    if problems:
        for day in days:
            store.delete(paths.transformed_interactions(day))
        return _blocked(check("input_valid", False, "; ".join(problems)), ("rows_preserved",), days=str(days))

    extras = {"root": store.root, "workflow": f"{paths.NVT_WORKFLOWS}/full", "part_size": config.part_size,
              "output_files": config.output_files}
    if len(days) == 1:
        extras.update(input=paths.masked_interactions(days[0]), output=paths.transformed_interactions(days[0]))
    else:
        extras["days"] = [{"day": day, "input": paths.masked_interactions(day),
                           "output": paths.transformed_interactions(day)} for day in days]
    result = merlin.run(context, "recsys_assets.ml.nvt_transform", extras=extras).get_materialize_result()
    fit = retrain.current_fit(store)
    for day in days:  # which vocabulary each day is in: a fine-tune reads it only for a parent with the same one
        if fit:
            retrain.record_day_vocabulary(store, day, fit)
        else:
            store.delete(paths.transformed_vocabulary(day))
    if len(days) == 1:
        which = f"partition {context.partition_key}"
        described = {"day": days[0], "split": "train (masked)" if days[0] in TRAIN_DAYS else "unmasked"}
    else:
        which = f"partitions {context.partition_keys[0]}..{context.partition_keys[-1]} ({len(days)} days)"
        train = sum(d in TRAIN_DAYS for d in days)
        described = {"days": str(days), "split": f"{train} train (masked), {len(days) - train} unmasked"}
    return dg.MaterializeResult(
        metadata={**result.metadata, **described,
                  "vocabulary": fit[:16] or "unknown (workflows newer than the compiled transforms)"},
        check_results=[check("input_valid", True, f"masked_interactions {which}: present, non-empty, expected "
                                                  "columns"),
                       *result.check_results],
    )


# -- serving_transforms ---------------------------------------------------------------------------------------------
@dg.asset(
    group_name=GROUP,
    kinds={"nvtabular", "numpy"},
    op_tags=MERLIN_TAGS,
    pool=MERLIN_POOL,
    deps=[nvt_workflows],
    check_specs=check_specs("serving_transforms", ("parity",)),
)
def serving_transforms(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource,
                       merlin: MerlinRunner) -> dg.MaterializeResult:
    """The fitted workflows compiled to a numpy-only description (``transforms/serving``).

    Vocabularies, null/OOV rows, means/stds, log flags, bucket edges, cyclical encodings and the training mean age;
    applied by ``recsys_assets.serving.transforms.CompiledTransforms``. ``parity`` (blocking): NVTabular and the
    compiled transforms agree on every vocabulary value and on edge cases (sentinels, unseen ids, missing
    values, extreme ages and prices).
    """
    store = artifacts.store()
    if not store.exists(f"{paths.NVT_WORKFLOWS}/meta.json"):
        raise dg.Failure(f"nvt_workflows not found ({store.uri(paths.NVT_WORKFLOWS)}): materialize it first")
    invocation = merlin.run(
        context, "recsys_assets.ml.nvt_compile",
        extras={"root": store.root, "workflows": paths.NVT_WORKFLOWS, "output": paths.SERVING_TRANSFORMS},
    )
    result = invocation.get_materialize_result()
    latency = _request_latency_us(store)
    return dg.MaterializeResult(
        metadata={**result.metadata, **latency}, check_results=list(result.check_results))


# -- retrain_transformed_days -----------------------------------------------------------------------------------
class RetrainTransformConfig(dg.Config):
    part_size: str = "128MB"
    output_files: int = 1


@dg.asset(
    group_name=GROUP,
    kinds={"nvtabular", "parquet"},
    op_tags=MERLIN_TAGS,
    pool=MERLIN_POOL,
    deps=[nvt_workflows, serving_transforms],
    check_specs=check_specs("retrain_transformed_days", TRANSFORMED_CHECKS),
)
def retrain_transformed_days(context: dg.AssetExecutionContext, config: RetrainTransformConfig,
                             artifacts: ArtifactStoreResource, merlin: MerlinRunner) -> dg.MaterializeResult:
    """Every day of the retrain window transformed with the refit workflows, in one merlin process
    (``transforms/retrain/transformed/day_XX``): what the weekly retrain's training reads.

    Not the daily ``transformed_interactions`` partitions: those stay as the daily run made them (and record
    which fit they are in), so the release serving now keeps being fine-tuned in its own vocabulary. The window
    record gets the refit's compiled-transforms digest, which fine-tunes of the retrained release match on.
    """
    store = artifacts.store()
    problems = []
    try:
        window = retrain.read_window(store)
    except retrain.WindowError as exc:
        window, problems = None, [f"{exc} (nvt_workflows with window: true writes it)"]
    fit = retrain.current_fit(store)
    if window is not None:
        problems += [f"day {d:02d}: {window.masked_path(d)} is missing" for d in window.days
                     if not store.exists(window.masked_path(d))]
        if not fit:
            problems.append("the compiled transforms are older than the workflows: materialize serving_transforms")
    if problems:
        return _blocked(check("input_valid", False, "; ".join(problems)), ("rows_preserved",))
    invocation = merlin.run(context, "recsys_assets.ml.nvt_transform", extras={
        "root": store.root, "workflow": f"{paths.NVT_WORKFLOWS}/full", "part_size": config.part_size,
        "output_files": config.output_files,
        "days": [{"day": d, "input": window.masked_path(d), "output": window.transformed_path(d)}
                 for d in window.days]})
    result = invocation.get_materialize_result()
    window.transforms_digest = fit
    store.write_bytes(paths.RETRAIN_WINDOW, window.to_json().encode())
    return dg.MaterializeResult(
        metadata={**result.metadata, "train_days": str(window.train_days),
                  "validation_days": str(window.validation_days), "vocabulary": fit[:16],
                  "path": store.uri(paths.RETRAIN)},
        check_results=[check("input_valid", True, f"window days {window.days[0]:02d}-{window.days[-1]:02d} "
                              "masked and present, compiled transforms current"), *result.check_results])


def _request_latency_us(store: ArtifactStore, items_per_request: int = 300, repeats: int = 200) -> dict:
    """Time 1 user + 1 context + 300 items through the compiled transforms in this (the serving) env."""
    from recsys_assets.serving.transforms import CompiledTransforms

    t = CompiledTransforms.load(store.local_path(paths.SERVING_TRANSFORMS))
    rng = np.random.default_rng(0)
    item_ids = rng.integers(0, 2465, items_per_request)
    cats = np.array(["apparel"] * items_per_request, dtype=object)
    prices = rng.uniform(1, 500, items_per_request)
    genders = np.array(["U"] * items_per_request, dtype=object)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        t.transform_user([5], [40.0], [1], *[[3]] * len(USER_HISTORY))
        t.transform_context([1], [1767225600])
        t.transform_item(item_ids, cats, cats, genders, prices)
        samples.append(time.perf_counter() - t0)
    samples = np.array(samples) * 1e6
    return {"request_latency_p50_us": round(float(np.percentile(samples, 50)), 1),
            "request_latency_p95_us": round(float(np.percentile(samples, 95)), 1)}
