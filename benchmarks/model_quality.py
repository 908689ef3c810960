"""Model quality on the validation days, beside popularity and the oracle, without materializing anything.

Two steps, one per environment, so a hyperparameter sweep needs neither ONNX export nor FAISS nor Dagster:

1. ``prepare`` (pipeline env) computes, once per artifact root, everything the evaluation assets compare with:
   the retrieval requests of the validation days (``lib.evaluation.build_requests``), the popularity, random and
   oracle top-300 of each, the unknown-user query features serving sends for anonymous requests, the transformed
   features of the whole catalogue (cold items included), and the oracle's and popularity's scores of every
   validation impression. Written to ``--refs`` (never to the artifact root).
   Where the artifact root holds a materialized ``retrieval_evaluation`` and the world has truth, also the ranking
   evaluation's end-to-end requests: the released retrieval's 300 candidates of each, their true p(click) for the
   true user in the request's context, and the references' true expected clicks@10 per split (popularity, the
   heuristic, the oracle and the oracle without the hidden taste term, from ``lib.policy_value``).
2. ``run`` (merlin env) trains the Two-Tower and/or the DLRM in memory (``ml.two_tower.train`` / ``ml.dlrm.train``)
   with the asset defaults plus ``--two-tower`` / ``--dlrm`` JSON overrides, and scores them like the evaluation
   assets do: exact inner-product top-300 over the items available that day (the FAISS index is exact at this
   catalogue size), recall@k per split; AUC per split; and the DLRM's primary measure, as ``ranking_evaluation``
   computes it: the true expected clicks of its top 10 of the 300 candidates (``dlrm/<split>/value``) and the
   capture of the no-taste ceiling over popularity (``dlrm/<split>/capture``). Prints one JSON line per model,
   appended to ``--log``.

    .venv/bin/python benchmarks/model_quality.py prepare --artifacts artifacts --refs /tmp/quality/refs
    .venv-merlin/bin/python benchmarks/model_quality.py run --artifacts artifacts --refs /tmp/quality/refs \
        --models dlrm --dlrm '{"epochs": 4}' --tag dlrm-4ep

The numbers match ``retrieval_evaluation`` / ``ranking_evaluation`` up to ONNX-vs-TensorFlow float noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_assets.lib import paths  # noqa: E402
from recsys_assets.lib.artifacts import ArtifactStore  # noqa: E402

TRAIN_DAYS, VALIDATION_DAYS = list(range(9)), [9, 10, 11]
K = 300
TOP = 10  # the served list
# The generator's hidden logit terms, which ``run --hidden`` may hand the DLRM as extra continuous inputs (an
# analysis of what limits it, never a servable model).
HIDDEN = ("persona", "taste")


def prepare(args) -> int:
    import pandas as pd

    from recsys_assets.defs.resources import WorldResource
    from recsys_assets.defs.training.assets import _train_clicks, _validation_rows
    from recsys_assets.lib import evaluation as ev
    from recsys_assets.lib.popularity import tie_broken_scores
    from recsys_assets.ml.model_inputs import CONTEXT_FEATURES, DLRM_FEATURES, USER_FEATURES
    from recsys_assets.serving.transforms import CompiledTransforms
    from recsys_assets.lib.feature_spec import ITEM_INPUTS

    store = ArtifactStore(args.artifacts)
    out = Path(args.refs)
    out.mkdir(parents=True, exist_ok=True)
    world = WorldResource(seed=args.seed, scale=args.scale).world()
    catalogue = store.read_parquet(paths.ITEMS).sort_values("item_id").reset_index(drop=True)
    n_items = len(catalogue)
    available_from = catalogue["available_from_day"].to_numpy(np.int64)
    rows = _validation_rows(store, args.validation_days, list(USER_FEATURES) + list(CONTEXT_FEATURES) + ["item_id"])
    requests = ev.build_requests(rows, [f"q_{c}" for c in USER_FEATURES + CONTEXT_FEATURES if c != "user_id"])
    days = requests["day"].to_numpy(np.int64)
    allowed = ev.available_mask(available_from, days)
    clicks, shown = _train_clicks(store, args.train_days, n_items)
    t0 = time.perf_counter()
    rankings = {"popularity": ev.popularity_top_k(tie_broken_scores(clicks, np.arange(n_items), n_items), allowed, K),
                "random": ev.random_top_k(allowed, K, 0),
                "oracle": ev.oracle_top_k(world.click_probability, requests, n_items, allowed, K)}
    print(f"references for {len(requests)} requests in {time.perf_counter() - t0:.1f}s", flush=True)
    transforms = CompiledTransforms.load(store.local_path(paths.SERVING_TRANSFORMS))
    anon = transforms.transform_user(**transforms.unknown_user(len(requests)))
    items = transforms.transform_item(*(catalogue[c].to_numpy() for c in ITEM_INPUTS))
    np.savez(out / "retrieval.npz", days=days, available_from=available_from,
             **{f"rank_{k}": v for k, v in rankings.items()},
             **{f"anon_{c}": anon[c] for c in USER_FEATURES}, **{f"item_{c}": v for c, v in items.items()})
    requests.assign(relevant=[r.tolist() for r in requests["relevant"]],
                    cold_relevant=[r.tolist() for r in requests["cold_relevant"]]).to_parquet(out / "requests.parquet")
    truth = pd.concat([store.read_parquet(paths.interactions_truth(d)) for d in args.validation_days])
    ranking = rows[["interaction_id", "item_id", "click"]].merge(truth, on="interaction_id", how="left")
    ranking["popularity_clicks"] = clicks[ranking["item_id"].to_numpy()]
    ranking["popularity_ctr"] = ev.smoothed_ctr(clicks, shown)[ranking["item_id"].to_numpy()]
    ranking.to_parquet(out / "ranking.parquet")
    hidden = []
    for d in sorted(set(args.train_days) | set(args.validation_days)):
        raw = store.read_parquet(paths.raw_interactions(d))
        parts = world.logit_components(raw["user_id"], raw["item_id"], raw["device_type"], raw["timestamp"])
        hidden.append(pd.DataFrame({"interaction_id": raw["interaction_id"].to_numpy(),
                                    **{f"hidden_{k}": parts[k].astype(np.float32) for k in HIDDEN}}))
    pd.concat(hidden, ignore_index=True).to_parquet(out / "hidden.parquet")
    _prepare_rerank(store, world, out)
    (out / "meta.json").write_text(json.dumps({"artifacts": str(args.artifacts), "train_days": args.train_days,
                                               "validation_days": args.validation_days, "dlrm_features":
                                               list(DLRM_FEATURES), "requests": len(requests)}))
    return 0


RERANK_METHODS = ("retrieval", "popularity", "heuristic", "oracle", "oracle_no_taste")


def _prepare_rerank(store: ArtifactStore, world, out: Path) -> None:
    """``rerank.npz`` / ``rerank_refs.json``: the requests ``ranking_evaluation`` re-ranks (same sample, same
    seed), with their features, candidates and the candidates' true p; the references' values per split."""
    from recsys_assets.defs.training.assets import RankingEvaluationConfig
    from recsys_assets.lib import policy_value
    from recsys_assets.ml.model_inputs import CONTEXT_FEATURES, USER_FEATURES

    folder = paths.RETRIEVAL_EVALUATION
    if not store.exists(f"{folder}/candidates.npz") or world is None:
        print("no retrieval_evaluation candidates or no truth: the DLRM is judged by AUC only", flush=True)
        return
    config = RankingEvaluationConfig()
    requests = store.read_parquet(f"{folder}/requests.parquet")
    candidates = np.load(store.local_path(f"{folder}/candidates.npz"))["candidates"]
    n = min(config.rerank_requests, len(requests))
    pick = np.sort(np.random.default_rng(config.seed).choice(len(requests), n, replace=False))
    picked = requests.iloc[pick].reset_index(drop=True)
    true_requests, _ = policy_value.evaluation_requests(picked, n, config.seed, anonymous_copies=False)
    candidates = candidates[pick]
    result = policy_value.evaluate_logged(store, world, true_requests, {"retrieval": candidates[:, :TOP]},
                                          config.seed, config.bootstrap_samples)
    p = policy_value.truth(world, true_requests).p
    candidate_p = np.where(candidates >= 0, np.take_along_axis(p, np.maximum(candidates, 0), axis=1), 0.0)
    np.savez(out / "rerank.npz", candidates=candidates, p=candidate_p.astype(np.float32),
             split=true_requests["split"].to_numpy().astype(str),
             **{f"user_{c}": picked["user_index" if c == "user_id" else f"q_{c}"].to_numpy() for c in USER_FEATURES},
             **{f"context_{c}": picked[f"q_{c}"].to_numpy() for c in CONTEXT_FEATURES})
    splits = sorted(set(true_requests["split"]))
    refs = {f"{m}/{s}/value": round(policy_value.value(result.table, m, s), 4) for m in RERANK_METHODS for s in splits}
    (out / "rerank_refs.json").write_text(json.dumps(refs, indent=1))
    print(f"re-rank references for {n} requests: {refs}", flush=True)


def _rerank(model, refs: Path, table: np.ndarray) -> dict:
    """The DLRM's top 10 of each request's 300 candidates, valued by the candidates' true p; capture per split."""
    from recsys_assets.ml import model_inputs as mi

    if not (refs / "rerank.npz").exists():
        return {}
    data, items = np.load(refs / "rerank.npz"), np.load(refs / "retrieval.npz")
    references = json.loads((refs / "rerank_refs.json").read_text())
    candidates = data["candidates"]
    valid = candidates >= 0
    rows = np.nonzero(valid)[0]
    ids = candidates[valid]
    feed = {**{c: data[f"user_{c}"][rows] for c in mi.USER_FEATURES},
            **{c: data[f"context_{c}"][rows] for c in mi.CONTEXT_FEATURES},
            **{c: items[f"item_{c}"][ids] for c in mi.ITEM_FEATURES}, **mi.split_multimodal(table, ids)}
    missing = [c for c in mi.DLRM_FEATURES if c not in feed]
    if missing:  # an analysis input the candidates have no value for
        return {"rerank": f"skipped: the candidates have no {missing[0]}"}
    scores = np.full(candidates.shape, -np.inf)
    scores[valid] = mi.predict_batches(model, _typed({c: feed[c] for c in mi.DLRM_FEATURES}), 8192).reshape(-1)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP]
    values = np.where(np.isfinite(np.take_along_axis(scores, top, 1)), np.take_along_axis(data["p"], top, 1), 0.0)
    values = values.mean(axis=1)
    out = {}
    for split in sorted(set(data["split"].tolist())):
        v = float(values[data["split"] == split].mean())
        floor, ceiling = references[f"popularity/{split}/value"], references[f"oracle_no_taste/{split}/value"]
        out[f"dlrm/{split}/value"] = round(v, 4)
        out[f"dlrm/{split}/capture"] = round((v - floor) / (ceiling - floor), 3)
    return out


def _retrieval(model, variant: str, refs: Path, table: np.ndarray) -> dict:
    import pandas as pd

    from recsys_assets.lib import evaluation as ev
    from recsys_assets.ml import model_inputs as mi

    data = np.load(refs / "retrieval.npz")
    requests = pd.read_parquet(refs / "requests.parquet")
    requests["relevant"] = [np.asarray(r, np.int64) for r in requests["relevant"]]
    requests["cold_relevant"] = [np.asarray(r, np.int64) for r in requests["cold_relevant"]]
    n_items = len(data["available_from"])
    items = {c: data[f"item_{c}"] for c in mi.ITEM_FEATURES}
    items.update(mi.split_multimodal(table, np.arange(n_items)))
    item_vectors = mi.predict_batches(model.candidate_encoder, _typed(items))
    features = mi.query_features(variant)
    real = {c: requests["user_index" if c == "user_id" else f"q_{c}"].to_numpy() for c in features}
    anon = {**real, **{c: data[f"anon_{c}"] for c in mi.USER_FEATURES}}
    allowed = ev.available_mask(data["available_from"], data["days"])
    rankings = {name: data[f"rank_{name}"] for name in ("popularity", "random", "oracle")}
    rankings["model"] = ev.top_k(mi.predict_batches(model.query_encoder, _typed(real)) @ item_vectors.T, allowed, K)
    anonymous = {"model": ev.top_k(mi.predict_batches(model.query_encoder, _typed(anon)) @ item_vectors.T,
                                   allowed, K)}
    table_ = ev.retrieval_table(rankings, requests, anonymous)
    out = {}
    for method in ("model", "popularity", "oracle"):
        for split in ("warm", "new", "anonymous", "cold_items"):
            for m in ("recall@100", "recall@300"):
                out[f"{method}/{split}/{m}"] = round(ev.metric(table_, method, split, m), 4)
    return out


def _typed(arrays: dict) -> dict:
    return {k: (v.astype(np.int64) if v.dtype.kind in "iu" else v.astype(np.float32)) for k, v in arrays.items()}


def _ranking(scores: np.ndarray, valid_rows, refs: Path) -> dict:
    import pandas as pd

    from recsys_assets.lib.metrics import auc
    from recsys_assets.lib.feature_spec import FIRST_INDEX, OOV_INDEX

    ref = pd.read_parquet(refs / "ranking.parquet").set_index("interaction_id")
    ref = ref.loc[valid_rows["interaction_id"].to_numpy()]
    labels = ref["click"].to_numpy()
    if not np.array_equal(labels, valid_rows["click"].to_numpy()):
        raise ValueError("the references' click labels differ from the transformed days': re-run prepare")
    user, item = valid_rows["user_id"].to_numpy(), valid_rows["item_id"].to_numpy()
    masks = {"all": np.ones(len(labels), bool), "warm": user >= FIRST_INDEX, "new": user == OOV_INDEX,
             "cold_items": item == OOV_INDEX}
    out = {}
    for name, s in (("model", scores), ("oracle", ref["p_click"].to_numpy()),
                    ("popularity", ref["popularity_ctr"].to_numpy())):
        for split, mask in masks.items():
            out[f"{name}/{split}/auc"] = round(auc(labels[mask], s[mask]), 4)
    return out


def _give_hidden(mi, refs: Path, names) -> None:
    """Make ``mi.load_split`` add the hidden terms ``names`` as continuous columns, and the DLRM read them."""
    import pandas as pd
    from merlin.schema import ColumnSchema, Schema, Tags

    unknown = sorted(set(names) - set(HIDDEN))
    if unknown:
        raise ValueError(f"unknown hidden terms {unknown}: expected some of {list(HIDDEN)}")
    hidden = pd.read_parquet(refs / "hidden.parquet").set_index("interaction_id")
    columns = [f"hidden_{n}" for n in names]
    original = mi.load_split

    def load_split(folders, features, with_target, clicked_only=False, shuffle_seed=None):
        stored = [f for f in features if f not in columns]
        split = original(folders, [*stored, *(["interaction_id"] if "interaction_id" not in stored else [])],
                         with_target, clicked_only, shuffle_seed)
        rows = split.rows
        for c in columns:
            rows[c] = hidden[c].reindex(rows["interaction_id"].to_numpy()).to_numpy(np.float32)
        schema = split.schema
        if "interaction_id" not in features:
            rows = rows.drop(columns=["interaction_id"])
            schema = schema.excluding_by_name(["interaction_id"])
        for c in columns:
            schema = schema + Schema([ColumnSchema(c, tags=[Tags.CONTINUOUS], dtype=np.float32)])
        return mi.Split(rows=rows, schema=schema)

    mi.load_split = load_split
    mi.DLRM_FEATURES = mi.DLRM_FEATURES + tuple(columns)


def run(args) -> int:
    from recsys_assets.ml import dlrm, two_tower
    from recsys_assets.ml import model_inputs as mi

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from training import DLRM, TWO_TOWER

    store = ArtifactStore(args.artifacts)
    refs = Path(args.refs)
    meta = json.loads((refs / "meta.json").read_text())
    train_days = [int(d) for d in args.train_days.split(",")] if args.train_days else meta["train_days"]
    train = [store.local_path(paths.transformed_interactions(d)) for d in train_days]
    valid = [store.local_path(paths.transformed_interactions(d)) for d in meta["validation_days"]]
    n_items = len(store.read_parquet(paths.ITEMS, columns=["item_id"]))
    table = mi.load_multimodal(store.local_path(paths.MULTIMODAL_EMBEDDINGS), n_items)
    results = []
    if "two_tower" in args.models:
        for variant in args.variants.split(","):
            params = {**TWO_TOWER, **json.loads(args.two_tower), "variant": variant}
            t0 = time.perf_counter()
            model, report, _, _ = two_tower.train(train, valid, table, two_tower.TwoTowerParams.from_dict(params))
            seconds = time.perf_counter() - t0
            results.append({"tag": args.tag, "model": f"two_tower/{variant}", "train_days": train_days,
                            "overrides": json.loads(args.two_tower),
                            "train_seconds": round(seconds, 1), "epoch_seconds": report["epoch_seconds"],
                            "rows_per_second": report["rows_per_second"],
                            "final_loss": round(report["history"][-1]["loss"], 4),
                            "validation_loss": round(report["validation"].get("loss", float("nan")), 4),
                            **_retrieval(model, variant, refs, table)})
            print(json.dumps(results[-1]), flush=True)
    if "dlrm" in args.models:
        if args.hidden:
            _give_hidden(mi, refs, [h for h in args.hidden.split(",") if h])
        if args.drop:  # the DLRM without these inputs (e.g. user_id: what its table costs at seed scale buys)
            drop = set(args.drop.split(","))
            if drop - set(mi.DLRM_FEATURES):
                raise ValueError(f"--drop {sorted(drop - set(mi.DLRM_FEATURES))}: not DLRM inputs")
            mi.DLRM_FEATURES = tuple(f for f in mi.DLRM_FEATURES if f not in drop)
            original = mi.load_split

            def load_split(folders, features, with_target, clicked_only=False, shuffle_seed=None):
                # the rows keep the dropped columns (the splits of the report need user_id), the model never sees
                split = original(folders, [*features, *sorted(drop)], with_target, clicked_only, shuffle_seed)
                return mi.Split(rows=split.rows, schema=split.schema.excluding_by_name(sorted(drop)))

            mi.load_split = load_split
        params = {**DLRM, **json.loads(args.dlrm)}
        t0 = time.perf_counter()
        model, report, valid_split, scores = dlrm.train(train, valid, table, dlrm.DlrmParams.from_dict(params))
        seconds = time.perf_counter() - t0
        results.append({"tag": args.tag, "model": "dlrm", "train_days": train_days,
                        "overrides": json.loads(args.dlrm),
                        "train_seconds": round(seconds, 1), "epoch_seconds": report["epoch_seconds"],
                        "rows_per_second": report["rows_per_second"],
                        "history_auc": [round(e.get("auc", float("nan")), 4) for e in report["history"]],
                        **_ranking(scores, valid_split.rows, refs), **_rerank(model, refs, table)})
        print(json.dumps(results[-1]), flush=True)
    if args.log:
        with open(args.log, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="references (pipeline env)")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--refs", required=True)
    p.add_argument("--seed", type=int, default=20260101)
    p.add_argument("--scale", default="demo")
    p.add_argument("--train-days", type=lambda s: [int(d) for d in s.split(",")], default=TRAIN_DAYS)
    p.add_argument("--validation-days", type=lambda s: [int(d) for d in s.split(",")], default=VALIDATION_DAYS)
    r = sub.add_parser("run", help="train and score (merlin env)")
    r.add_argument("--artifacts", default="artifacts")
    r.add_argument("--refs", required=True)
    r.add_argument("--models", default="two_tower,dlrm")
    r.add_argument("--variants", default="plain,context")
    r.add_argument("--two-tower", default="{}", help="JSON overrides of the two-tower defaults")
    r.add_argument("--dlrm", default="{}", help="JSON overrides of the DLRM defaults")
    r.add_argument("--hidden", default="", help="analysis only: give the DLRM the generator's hidden terms "
                   f"(comma-separated, of {', '.join(HIDDEN)}) as extra inputs")
    r.add_argument("--drop", default="", help="train and score the DLRM without these inputs (comma-separated)")
    r.add_argument("--train-days", default="", help="train on these days instead (the references keep theirs)")
    r.add_argument("--tag", default="")
    r.add_argument("--log", default="", help="append each result as a JSON line to this file")
    args = ap.parse_args(argv)
    return prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
