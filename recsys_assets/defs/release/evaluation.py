"""The list as served, evaluated each day: the release's daily judgement by the users' own clicks.

``served_list_evaluation[day]`` (part of ``daily_job``): the day's requests (each user who clicked: device and time
of their first visit) replayed through the RUNNING ensemble with diversity off and on. Primary measure: the lists'
true expected clicks (the generator's p(click) for the true user in the request's context) with capture of the
ceiling per split, beside popularity, random, the heuristic, the oracle, the oracle without the hidden taste term
and the context ceiling (``lib.policy_value``); the check ``served_beats_popularity`` judges by it. Secondary
(exposure-biased) and the only measure without truth (own data): recall/NDCG against what those users clicked that
day, coverage and diversity (``lib.served_evaluation``). It runs before the day's
refresh on purpose (``daily_online_features`` and ``daily_popularity_tables`` depend on it): the refresh writes
the day's end-of-day ``top_category`` online, which would leak the day's clicks into the replay. Without a running
server it records that (a failed, non-blocking check) and the refresh goes on.
"""

import dataclasses
import json
from typing import List

import dagster as dg
import numpy as np

from recsys_assets.defs.checks_util import check, check_specs, markdown_table, png_markdown
from recsys_assets.defs.ingest.assets import items, raw_interactions, users
from recsys_assets.defs.partitions import START_DATE, TRAIN_DAYS, daily_partitions, partition_day, window_dep
from recsys_assets.defs.release.resources import ServedEnsemble
from recsys_assets.defs.resources import ArtifactStoreResource, WorldResource
from recsys_assets.lib import daily, paths, policy_value
from recsys_assets.lib import served_evaluation as se
from recsys_assets.lib.settings import partition_key


GROUP = "release"


# -- the list as served ----------------------------------------------------------------------------------------
class ServedListEvaluationConfig(dg.Config):
    requests_per_split: int = 200
    """Requests replayed per split (warm, new, anonymous); each goes once per diversity mode."""
    top_k: int = se.K
    diversity_modes: List[bool] = [False, True]
    popularity_days: int = daily.DEFAULT_WINDOW_DAYS
    """The popularity baseline counts the clicks of this many days before the evaluated day."""
    require_server: bool = False
    """True: no running ensemble fails the asset; False: recorded as a failed, non-blocking check."""
    oracle: bool = True
    """Score the generator's oracle beside the served list (off in production: real users have no ground truth)."""
    seed: int = 0
    bootstrap_samples: int = 1000
    """Resamples of the bootstrap intervals of the true values and captures."""


SERVED_CHECKS = ("replayed", "no_failed_requests", "served_beats_popularity")


@dg.asset(group_name=GROUP, kinds={"triton", "pandas"}, partitions_def=daily_partitions,
          deps=[items, users, window_dep(raw_interactions, daily.DEFAULT_WINDOW_DAYS)],
          check_specs=check_specs("served_list_evaluation", SERVED_CHECKS, blocking=False))
def served_list_evaluation(context: dg.AssetExecutionContext, config: ServedListEvaluationConfig,
                           artifacts: ArtifactStoreResource, world: WorldResource,
                           served_ensemble: ServedEnsemble) -> dg.MaterializeResult:
    """The day's requests replayed through the running ensemble, diversity off and on, for warm, new and
    anonymous users: true expected clicks and capture (with a world), recall@k, NDCG@k, coverage and category
    diversity, beside the references.

    Files: ``evaluation/served/day_XX.parquet`` (the logged table), ``.true.parquet`` (the true-value table, with
    a world), ``.json`` (the record: request fingerprint and every number), ``.png``. The references' history is
    the popularity window (the days this asset depends on).
    """
    day = partition_day(context)
    store = artifacts.store()
    known, known_from = se.known_users(store, max(TRAIN_DAYS))
    client = served_ensemble.client()
    try:
        if not client.is_ready():
            reason = (f"no ready ensemble at {served_ensemble.url}: start Triton (make serve, or materialize "
                      "triton_deployment) and re-run this partition")
            if config.require_server:
                raise dg.Failure(reason)
            context.log.warning(reason)
            skipped = "not evaluated: no running ensemble"
            return dg.MaterializeResult(
                metadata={"evaluated": False, "reason": reason, "url": served_ensemble.url},
                check_results=[check("replayed", False, reason, dg.AssetCheckSeverity.WARN)]
                + [check(n, False, skipped, dg.AssetCheckSeverity.WARN) for n in SERVED_CHECKS[1:]])

        def recommend(user_id: int, device: int, timestamp: int, diversity: bool):
            ids, _ = client.recommend(user_id, device_type=device, timestamp=timestamp, top_k=config.top_k,
                                      diversity=diversity)
            return ids

        truth = world.truth() if config.oracle else None
        result = se.evaluate_day(store, truth, recommend, day, known,
                                 per_split=config.requests_per_split,
                                 popularity_days=config.popularity_days, k=config.top_k,
                                 diversity_modes=tuple(config.diversity_modes), seed=config.seed)
    finally:
        client.close()

    table = result.table
    record = result.record()
    failures = {m: list(f.values())[:5] for m, f in result.lists.failures.items() if f}
    store.write_parquet(paths.served_evaluation(day, "parquet"), table)
    with store.writing(paths.served_evaluation(day, "png")) as tmp:
        se.plot(table, tmp, title=f"day {day:02d} ({partition_key(day, START_DATE)}): lists as served, "
                                  f"{len(result.requests)} requests")
    true = None
    if truth is not None:
        served_lists = {m: result.lists.lists[m] for m in ("served", "served_diverse") if m in result.lists.lists}
        history = se.logged_days(store, range(max(0, day - config.popularity_days), day))
        true = policy_value.evaluate(result.requests, served_lists, world=truth, history=history,
                                     visits=se.logged_days(store, [day]), k=config.top_k, seed=config.seed,
                                     n_boot=config.bootstrap_samples)
        store.write_parquet(paths.served_evaluation(day, "true.parquet"), true.table)
        gate = [dataclasses.replace(o, name=f"served_{o.name}") for o in
                policy_value.release_gate(true, "served", n_boot=config.bootstrap_samples, seed=config.seed)]
        true_metadata = {"measure": true.measure, "true_expected_clicks": markdown_table(true.table, ".4f"),
                         **{f"capture/served/{split}": policy_value.value(true.table, "served", split, "capture")
                            for split in set(true.table["split"])},
                         "true_expected_clicks/served/users": policy_value.pooled_value(true, "served"),
                         "true_expected_clicks/popularity/users": policy_value.pooled_value(true, "popularity")}
    else:
        gate = result.gate()
        true_metadata = {"measure": policy_value.LOGGED_MEASURE}
    store.write_bytes(paths.served_evaluation(day, "json"), json.dumps(
        {**record, **({"true": policy_value.record(true, day=day)} if true is not None else {}),
         "known_users": known_from, "popularity_window": result.popularity_window,
         "failures": failures, "url": served_ensemble.url}, indent=1).encode())
    k = config.top_k
    n_failed = sum(len(f) for f in result.lists.failures.values())
    calls = sum(len(v) for v in result.lists.latency_ms.values())
    latency = np.concatenate(list(result.lists.latency_ms.values())) if calls else np.zeros(0)
    served_all = {name: se.metric(table, "served", "all", name) for name in (f"recall@{k}", f"ndcg@{k}")}
    return dg.MaterializeResult(
        metadata={
            "evaluated": True,
            "day": day,
            "requests": len(result.requests),
            "requests_by_split": dg.MetadataValue.json(result.requests["split"].value_counts().to_dict()),
            "served_calls": calls,
            "failed_calls": n_failed,
            "p50_ms": float(np.percentile(latency, 50)) if calls else 0.0,
            **{f"served/all/{n}": float(v) for n, v in served_all.items()},
            **{f"{m}/all/coverage": se.metric(table, m, "all", "coverage") for m in se.METHODS
               if m in set(table["method"])},
            **{f"{m}/all/diversity": se.metric(table, m, "all", "diversity") for m in se.METHODS
               if m in set(table["method"])},
            **true_metadata,
            "known_users": known_from,
            "popularity_window": f"days {result.popularity_window}",
            "fingerprint": result.fingerprint,
            "seconds": round(result.seconds, 2),
            "url": served_ensemble.url,
            "table": markdown_table(table.drop(columns=["mean_length"])),
            "plot": png_markdown(store, paths.served_evaluation(day, "png")),
            "path": store.uri(paths.served_evaluation(day, "parquet")),
        },
        check_results=[
            check("replayed", True, f"{len(result.requests)} requests replayed through {served_ensemble.url}",
                   dg.AssetCheckSeverity.WARN),
            check("no_failed_requests", n_failed == 0,
                   f"{n_failed} of {calls} requests failed: {failures}" if n_failed else
                   f"all {calls} requests answered", dg.AssetCheckSeverity.WARN),
            *[check(o.name, o.passed, o.description, dg.AssetCheckSeverity.WARN, **o.metadata,
                    **({"true_expected_clicks": true_metadata["true_expected_clicks"]} if true is not None else {}))
              for o in gate if o.name == "served_beats_popularity"],
        ],
    )
