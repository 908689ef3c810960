"""True expected clicks of the reference lists (and optionally a served release) on held-out days.

For each held-out day (after the validation days 09-11: days 12+), the day's requests (one per user who
clicked: the device and time of their first visit; ``lib.served_evaluation.replay_requests``) split into warm
(users seen on the train days 00-08), new and anonymous (the same requests sent as user -1), scored by
``lib.policy_value.evaluate``: popularity, random, the heuristic, the oracle, the oracle without the hidden
taste term and the context ceiling, with capture and bootstrap intervals.

    .venv/bin/python benchmarks/policy_value.py                        # a generated demo world, days 12 13
    .venv/bin/python benchmarks/policy_value.py --artifacts artifacts  # + the served release, in process

``--artifacts``: reads the days and the catalogue from the artifact root and replays every request through the
release in ``serving/triton_repository`` in process (``InProcessPipeline``: needs the release's Valkey and
online store reachable, as the running ensemble does). The world comes from the ``RECSYS_*`` settings.
Before each day it publishes that day's popularity tables and ordering prior (the 7 days before it), as the
daily refresh does. ``--prior-weights 0 2`` replays every request once per weight of the ordering prior
(``softmax_sampling``'s ``PRIOR_WEIGHT``, lib/prior.py) as methods ``served w=<w>``, beside ``served`` (the
release as built); ``--context-candidates 0 100`` likewise for anonymous requests' context candidates
(``filter_seen_items``' ``CONTEXT_CANDIDATES``) as ``served c=<n>``; ``--prior-coefficients 1,1,1,0,0,0``
for the prior's term coefficients (``PRIOR_COEFFICIENTS``) as ``served k=<coefficients>``; ``--ranked 150 200``
for the number of retrieval candidates the DLRM ranks (``filter_seen_items``' ``RETRIEVAL_TOPK``) as
``served n=<n>``:

    .venv/bin/python benchmarks/policy_value.py --artifacts artifacts --prior-weights 0 2 --context-candidates 100
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np



def generated_days(world, days) -> dict:
    """``{day: interactions with a 'day' column}`` for days 0..max(days), generated."""
    out = {}
    for day in range(max(days) + 1):
        rows, _ = world.generate_day(day)
        out[day] = rows.assign(day=day)
    return out


def stored_days(store, days) -> dict:
    from recsys_assets.lib import paths

    return {day: store.read_parquet(paths.raw_interactions(day)).assign(day=day)
            for day in range(max(days) + 1) if store.exists(paths.raw_interactions(day))}


def served_recommend(root: str, k: int):
    """``(user, device, timestamp, diversity) -> ids`` through the root's release in process, a closer, the
    ordering and seen-filter stages (their ``prior_weight`` / ``context_candidates`` may be changed between
    replays) and the Valkey endpoint they read."""
    from pathlib import Path

    from recsys_assets.lib import paths

    try:  # the release package moves it to recsys_assets.release
        from recsys_assets.release.pipeline import InProcessPipeline
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("recsys_assets.release"):
            raise
        from recsys_assets.release.pipeline import InProcessPipeline
    repository = Path(root) / paths.TRITON_REPOSITORY
    if not repository.is_dir():
        raise SystemExit(f"no built release at {repository}: materialize triton_model_repository (make demo) "
                         "first")
    from recsys_assets.release import deploy
    from recsys_assets.serving.stages.filter_seen_items import FilterSeenItems
    from recsys_assets.serving.stages.softmax_sampling import SoftmaxSampling

    environ, valkey = deploy.local_environ(Path(root))
    try:
        pipeline = InProcessPipeline(repository, environ=environ)
    except BaseException:  # a release that does not load: leave no Valkey behind
        if valkey is not None and valkey.owned:
            valkey.stop()
        raise
    ordering = next(step[1].stage for step in pipeline.steps if isinstance(step[1].stage, SoftmaxSampling))
    seen = next(step[1].stage for step in pipeline.steps if isinstance(step[1].stage, FilterSeenItems))

    def recommend(user_id: int, device: int, timestamp: int, diversity: bool = False) -> np.ndarray:
        return np.asarray(pipeline(user_id, device, timestamp, top_k=k, diversity=diversity)["ordered_ids"],
                          dtype=np.int64).ravel()[:k]

    def close():
        pipeline.close()
        if valkey is not None and valkey.owned:
            valkey.stop()

    return recommend, close, (ordering, seen), environ.get("RECSYS_VALKEY_URL")


def publish_day(store, url: str, day: int, window: int = 7) -> None:
    """The popularity tables and ordering prior of the ``window`` days before ``day``, as the daily refresh
    publishes them for serving on ``day``."""
    from recsys_assets.lib import paths, popularity, served_evaluation
    from recsys_assets.lib.valkey_server import KeyLayout, parse_url

    days = list(range(max(0, day - window), day))
    tables = popularity.build_window(served_evaluation.logged_days(store, days), store.read_parquet(paths.ITEMS),
                                     days, popularity.registered_users(store))
    space = KeyLayout.make().popularity
    client = parse_url(url).client(db=space.db)
    try:
        popularity.publish(client, space.prefix, tables)
    finally:
        client.close()


def replay(recommend, requests) -> tuple[list, int]:
    lists, failed = [], 0
    for req in requests.itertuples(index=False):
        try:
            lists.append(recommend(int(req.user_id), int(req.device_type), int(req.timestamp)))
        except Exception as exc:  # scored as an empty list (earns nothing) and counted
            failed += 1
            lists.append(np.zeros(0, np.int64))
            if failed <= 3:
                print(f"request user {req.user_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return lists, failed


def print_table(day: int, result, seconds: float) -> None:
    from recsys_assets.lib import policy_value

    print(f"\n### day {day:02d} ({result.measure}; {seconds:.1f} s)\n")
    print("| split | method | requests | true value (95% CI) | capture (95% CI) | recall@10 | ndcg@10 |\n"
          "|---|---|---|---|---|---|---|")
    table = result.table
    for split in policy_value.SPLITS:
        for row in table[table["split"] == split].to_dict("records"):
            interval = (f"{row['value']:.4f} ({row['value_low']:.4f}-{row['value_high']:.4f})"
                        if "value" in row else "-")
            capture = (f"{row['capture']:+.2f} ({row['capture_low']:+.2f}..{row['capture_high']:+.2f})"
                       if np.isfinite(row.get("capture", np.nan)) else "-")
            print(f"| {split} | {row['method']} | {row['requests']} | {interval} | {capture} | "
                  f"{row.get('recall@10', np.nan):.3f} | {row.get('ndcg@10', np.nan):.3f} |")
    ceiling = policy_value.CEILING
    print(f"\nceilings: warm/new {ceiling['warm']}, anonymous {ceiling['anonymous']}; "
          f"invalid slots: {({m: n for m, n in result.invalid_slots.items() if n}) or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, nargs="+", default=None,
                        help="held-out days (default: the two days after the validation days, 12 13)")
    parser.add_argument("--scale", default="demo")
    parser.add_argument("--seed", type=int, default=20260101, help="the world's seed")
    parser.add_argument("--per-split", type=int, default=1000)
    parser.add_argument("--eval-seed", type=int, default=0, help="request sampling, random list, bootstrap")
    parser.add_argument("--artifacts", default=None, help="an artifact root with a built release to score")
    parser.add_argument("--prior-weights", type=float, nargs="*", default=[],
                        help="with --artifacts: also replay with these weights of the ordering prior")
    parser.add_argument("--prior-coefficients", nargs="*", default=[],
                        help="with --artifacts: also replay with these coefficients of the prior's terms "
                             "(comma-separated, lib.prior.TERMS order; PRIOR_COEFFICIENTS) at the built weight")
    parser.add_argument("--context-candidates", type=int, nargs="*", default=[],
                        help="with --artifacts: also replay with these numbers of context candidates for anonymous "
                             "requests (filter_seen_items' CONTEXT_CANDIDATES)")
    parser.add_argument("--ranked", type=int, nargs="*", default=[],
                        help="with --artifacts: also replay with the DLRM ranking only this many retrieval "
                             "candidates (filter_seen_items' RETRIEVAL_TOPK)")
    args = parser.parse_args(argv)

    from recsys_assets.defs.partitions import TRAIN_DAYS, VALIDATION_DAYS
    from recsys_assets.lib import policy_value, prior, served_evaluation
    from recsys_assets.lib.generator import World

    args.days = args.days or [max(VALIDATION_DAYS) + 1, max(VALIDATION_DAYS) + 2]
    if min(args.days) <= max(TRAIN_DAYS):
        parser.error(f"--days must be after the train days 00-{max(TRAIN_DAYS):02d}")
    recommend, close, stages, url = None, lambda: None, None, None
    if args.artifacts:
        from pathlib import Path

        from recsys_assets.lib.artifacts import ArtifactStore

        if "://" not in args.artifacts:  # the release's settings name paths the stages resolve from elsewhere
            args.artifacts = str(Path(args.artifacts).resolve())
        from recsys_assets.lib.settings import Settings

        settings = Settings.from_env()
        world = World(settings.seed, settings.scale, settings.start_date)
        store = ArtifactStore(args.artifacts)
        days = stored_days(store, args.days)
        known, known_from = served_evaluation.known_users(store, max(TRAIN_DAYS))
        print(f"warm users: {known_from}")
        recommend, close, stages, url = served_recommend(args.artifacts, policy_value.K)
    else:
        world = World(args.seed, args.scale)
        t0 = time.perf_counter()
        days = generated_days(world, args.days)
        print(f"generated days 00-{max(args.days):02d} of a {args.scale} world (seed {args.seed}) in "
              f"{time.perf_counter() - t0:.1f} s")
        # Without a release, warm users are those seen on the train days (what its vocabulary would hold).
        known = np.unique(np.concatenate([days[d]["user_id"].to_numpy(np.int64) for d in TRAIN_DAYS]))
    import pandas as pd

    try:
        for day in args.days:
            if day not in days:
                print(f"day {day:02d}: no interactions, skipped", file=sys.stderr)
                continue
            t0 = time.perf_counter()
            requests = served_evaluation.replay_requests(days[day], known, per_split=args.per_split,
                                                         seed=args.eval_seed)
            history = pd.concat([days[d] for d in range(day) if d in days], ignore_index=True)
            models = {}
            if recommend is not None:
                ordering, seen = stages
                if url is not None:
                    publish_day(store, url, day)
                    for stage in stages:  # read the day's prior now, not after the cache's refresh period
                        stage.prior.invalidate()
                built = ordering.prior_weight, seen.context_candidates, ordering.coefficients, seen.topk
                variants = [("served", built),
                            *((f"served w={w:g}", (w, *built[1:])) for w in args.prior_weights),
                            *((f"served c={c}", (built[0], c, *built[2:])) for c in args.context_candidates),
                            *((f"served k={k}", (*built[:2], prior.parse_coefficients(k), built[3]))
                              for k in args.prior_coefficients),
                            *((f"served n={n}", (*built[:3], n)) for n in args.ranked)]
                for name, setting in variants:
                    ordering.prior_weight, seen.context_candidates, ordering.coefficients, seen.topk = setting
                    t1 = time.perf_counter()
                    models[name], failed = replay(recommend, requests)
                    ms = (time.perf_counter() - t1) / max(len(requests), 1) * 1e3
                    print(f"day {day:02d}: {len(requests)} requests served ({name}) in {ms:.2f} ms each, "
                          f"{failed} failed")
                ordering.prior_weight, seen.context_candidates, ordering.coefficients, seen.topk = built
            result = policy_value.evaluate(requests, models, world=world, history=history, visits=days[day],
                                           seed=args.eval_seed)
            print_table(day, result, time.perf_counter() - t0)
    finally:
        close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
