"""Evaluation as served: a release scored from its own repository versions, and the gate a candidate must pass.

:class:`ReleaseScorer` reads a release's compiled transforms, ONNX towers (fed through the serving stages'
feeder), FAISS index, availability and multimodal table, and scores raw rows, so a candidate and the served
release are compared on the same held-out rows (:class:`EvaluationSlice`) even when their vocabularies differ.

The gate (DESIGN.md "Gates"), primary measure first:

* **true expected clicks** of the list each release would serve (:meth:`ReleaseScorer.recommend`: FAISS top
  ``retrieval_topk`` among the items available that day, ranked by the release's DLRM, top ``k``; the Bloom seen
  filter is left out, its state lives in Valkey, not in the release) for the held-out requests
  (:func:`gate_requests`: warm, new and the same requests sent anonymously), scored by the generator's p(click)
  for the true user in the request's device and time (:func:`true_evaluation`,
  ``lib.policy_value.release_gate``): beat popularity, and fall below the deployed release on the same requests
  by no more than the paired bootstrap interval;
* without a world (a shop's own data: no ground truth) the **logged** measures decide (:func:`logged_gate`:
  recall@k of retrieval and the ranker's AUC against the held-out clicks, exposure-biased); with a world they are
  the secondary columns of the same table.

Pure: numpy/pandas, onnxruntime and FAISS; no Dagster, no server.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from recsys_assets.lib import prior
from recsys_assets.lib.feature_spec import USER_HISTORY, WORKFLOW_INPUTS
from recsys_assets.release.repository import Release, ServingDefaults, version_dir

class ReleaseScorer:
    """One release's models, read from its repository versions and fed the way the serving stages feed them."""

    def __init__(self, repository: Path, release: Release) -> None:
        from recsys_assets.lib import faiss_index as fx
        from recsys_assets.lib.onnx_model import OnnxModel
        from recsys_assets.serving.stages.onnx_models import DlrmRanking, QueryTower
        from recsys_assets.serving.transforms import CompiledTransforms

        self.release = release.release
        params = release.parameters
        self.transforms_dir = version_dir(repository, release, "nvt_user_transform") / "transforms"
        self.transforms = CompiledTransforms.load(self.transforms_dir)
        self.query = OnnxModel(version_dir(repository, release, "query_tower") / "model.onnx",
                               json.loads(params["query_tower"].get("INPUT_MAP") or "{}"), set(QueryTower.features))
        self.dlrm = OnnxModel(version_dir(repository, release, "dlrm_ranking") / "model.onnx",
                              json.loads(params["dlrm_ranking"].get("INPUT_MAP") or "{}"),
                              set(DlrmRanking.features) | set(DlrmRanking.derived))
        faiss_dir = version_dir(repository, release, "faiss_retrieval")
        self.index = fx.for_search(fx.load(faiss_dir / "index.faiss"))  # batch search: the GPU where there is one
        ids = faiss_dir / "index_ids.npy"
        self.position_ids = np.load(ids) if ids.exists() else None
        self.available_from = np.load(faiss_dir / "availability.npy")
        self.multimodal = np.load(version_dir(repository, release, "multimodal_embedding_lookup") / "multimodal.npy")
        self.image_dims = int(params["multimodal_embedding_lookup"]["IMAGE_DIMS"])
        sampling = params.get("softmax_sampling", {})
        self.prior_weight = float(sampling.get("PRIOR_WEIGHT") or 0.0)
        self.prior_coefficients = prior.parse_coefficients(sampling.get("PRIOR_COEFFICIENTS"))

    def _features(self, rows, item: bool) -> dict:
        t = self.transforms
        out = {**t.transform_user(**{c: rows[c].to_numpy() for c in WORKFLOW_INPUTS["user"]}),
               **t.transform_context(rows["device_type"].to_numpy(), rows["timestamp"].to_numpy())}
        if item:
            raw = rows["item_id"].to_numpy(np.int64)
            out.update(t.transform_item(raw, rows["category_l1"].to_numpy(), rows["category_l2"].to_numpy(),
                                        rows["item_gender"].to_numpy(), rows["price"].to_numpy()))
            vectors = self.multimodal[raw]
            out["image_embedding"] = vectors[:, :self.image_dims]
            out["text_embedding"] = vectors[:, self.image_dims:]
            out["multimodal_embedding"] = vectors
        return out

    def click_probability(self, rows, batch: int = 8192) -> np.ndarray:
        """The ranker's p(click) for each impression row (raw columns of ``masked_interactions``)."""
        out = [np.asarray(self.dlrm.run(self._features(rows.iloc[s:s + batch], item=True)), np.float64).reshape(-1)
               for s in range(0, len(rows), batch)]
        return np.concatenate(out) if out else np.zeros(0)

    def known_users(self) -> np.ndarray:
        """The raw user ids in this release's user vocabulary (its warm users)."""
        from recsys_assets.lib.transform_files import read_description

        _, vocabularies = read_description(self.transforms_dir)
        return np.asarray(vocabularies["user.user_id"][0], dtype=np.float64).astype(np.int64)

    def as_served(self, requests):
        """``requests`` with the user features serving looks up: an anonymous request (user -1) gets the
        cold-start defaults (training mean age, unknown gender, no history codes), as ``feast_user_lookup``."""
        from recsys_assets.lib.feature_spec import encode_gender

        out = requests.copy()
        gender = out["gender"].to_numpy()
        if gender.dtype.kind in "OUS":
            out["gender"] = np.asarray(encode_gender(gender.tolist()), np.int64)
        anonymous = out["user_id"].to_numpy(np.int64) < 0
        if anonymous.any():
            defaults = self.transforms.unknown_user(int(anonymous.sum()))
            for column in ("age", "gender", *USER_HISTORY):
                values = out[column].to_numpy().copy()
                values = values.astype(np.result_type(values.dtype, defaults[column].dtype))
                values[anonymous] = defaults[column]
                out[column] = values
        return out

    def recommend(self, requests, day: int, items, k: int = 10, candidates: int = ServingDefaults.retrieval_topk,
                  batch: int = 8192, prior_table=None) -> np.ndarray:
        """(requests, k) raw item ids: the list this release serves with diversity off, without the seen filter.

        FAISS top ``candidates`` among the items available on ``day``, ranked by the DLRM's p(click) with the
        request's user and context features and each candidate's item features (``items``: the catalogue, raw
        columns ``item_id``, ``category_l1``, ``category_l2``, ``item_gender``, ``price``), blended with
        ``prior_table`` (a ``lib.prior.Prior``: what serving reads from Valkey) at the release's ``PRIOR_WEIGHT``
        and ``PRIOR_COEFFICIENTS`` as ``softmax_sampling`` orders them; -1 padded.
        """
        from recsys_assets.lib.feature_spec import INTERESTS

        import pandas as pd

        requests = self.as_served(requests.reset_index(drop=True))
        found = self.retrieve(requests, day, candidates)
        rows, slots = np.nonzero(found >= 0)
        catalogue = items.set_index("item_id")
        raw = found[rows, slots]
        user_columns = [*WORKFLOW_INPUTS["user"], *WORKFLOW_INPUTS["context"]]
        frame = requests[user_columns].iloc[rows].reset_index(drop=True)
        item_rows = catalogue.loc[raw, ["category_l1", "category_l2", "item_gender", "price"]].reset_index(drop=True)
        frame = pd.concat([frame, item_rows], axis=1).assign(item_id=raw)
        scores = np.full(found.shape, -np.inf)
        scores[rows, slots] = self.click_probability(frame, batch)
        if prior_table is not None and self.prior_weight > 0:
            log_prior = prior_table.log_prior(found, requests["device_type"].to_numpy(np.int64),
                                              requests["timestamp"].to_numpy(np.int64),
                                              requests[list(INTERESTS)].to_numpy(np.int64), self.prior_coefficients,
                                              gender=requests["gender"].to_numpy(np.int64),
                                              age=requests["age"].to_numpy(np.float64))
            scores = prior.blend(scores, log_prior, self.prior_weight)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        ranked = np.take_along_axis(found, order, axis=1)
        ranked = np.where(np.take_along_axis(scores, order, axis=1) == -np.inf, -1, ranked)
        if ranked.shape[1] < k:
            ranked = np.hstack([ranked, np.full((len(ranked), k - ranked.shape[1]), -1, np.int64)])
        return ranked

    def retrieve(self, requests, day: int, k: int) -> np.ndarray:
        """Top-``k`` raw item ids per request among the items available on ``day`` (-1 padded)."""
        from recsys_assets.lib import faiss_index as fx

        vectors = np.asarray(self.query.run(self._features(requests, item=False)), np.float32)
        vectors = vectors.reshape(len(requests), -1)
        if self.position_ids is None:  # an IndexIDMap over raw ids
            allowed = np.flatnonzero(self.available_from <= day)
            return fx.search(self.index, vectors, k, allowed_ids=allowed).padded(k)
        allowed = np.flatnonzero(self.available_from[self.position_ids] <= day)  # positions of available ids
        found = fx.search(self.index, vectors, k, allowed_ids=allowed).padded(k)
        return np.where(found >= 0, self.position_ids[np.maximum(found, 0)], -1)


@dataclasses.dataclass
class EvaluationSlice:
    """Held-out rows of one day: every impression of the chosen sessions, and one retrieval request per session
    with a click (the features of its first impression; relevant = the items it clicked)."""

    day: int
    rows: object       # DataFrame: masked_interactions columns + session_id
    requests: object   # DataFrame: first impression per clicked session
    relevant: list

    @property
    def fingerprint(self) -> str:
        from recsys_assets.lib.evaluation import rows_fingerprint

        return rows_fingerprint(self.rows["interaction_id"].to_numpy())


def held_out_sessions(session_ids, share: float, seed: int, day: int) -> np.ndarray:
    """The session ids held out of fine-tuning for evaluation: a seeded ``share`` of the day's sessions."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"holdout share {share}: expected a fraction strictly between 0 and 1")
    sessions = np.unique(np.asarray(session_ids, dtype=np.int64))
    n = int(round(share * len(sessions)))
    rng = np.random.default_rng([int(seed), int(day)])
    return np.sort(rng.choice(sessions, size=n, replace=False)) if n else np.zeros(0, np.int64)


def evaluation_slice(masked, raw, held_out: np.ndarray, day: int) -> EvaluationSlice:
    """The held-out sessions' rows: ``masked`` (features, unmasked days) joined with ``raw`` (session ids, and
    the user behind each row as ``true_user_id`` when ``raw`` has ``user_id``)."""
    keep = raw[["interaction_id", "session_id", *(["user_id"] if "user_id" in raw.columns else [])]]
    rows = masked.merge(keep.rename(columns={"user_id": "true_user_id"}), on="interaction_id", how="inner",
                        validate="1:1")
    rows = rows[rows["session_id"].isin(held_out)].sort_values(["session_id", "timestamp", "interaction_id"])
    rows = rows.reset_index(drop=True)
    clicked = rows[rows["click"] == 1]
    sessions = np.unique(clicked["session_id"].to_numpy())
    first = rows.groupby("session_id", sort=True).head(1).set_index("session_id").loc[sessions].reset_index()
    relevant = [np.unique(g["item_id"].to_numpy(np.int64)) for _, g in clicked.groupby("session_id", sort=True)]
    return EvaluationSlice(day=day, rows=rows, requests=first, relevant=relevant)


def popularity_scores(clicked_item_ids, n_items: int) -> np.ndarray:
    """Click counts per raw item with ties broken towards lower ids (the popularity tables' order)."""
    from recsys_assets.lib.popularity import tie_broken_scores

    counts = np.bincount(np.asarray(clicked_item_ids, np.int64), minlength=n_items).astype(np.float64)
    return tie_broken_scores(counts, np.arange(n_items), n_items)


def gate_requests(data: EvaluationSlice, known_users, anonymous: bool = True):
    """The true-value gate's requests: one per held-out clicked session (the first impression's user features,
    device and time; relevant = what the session clicked), split ``warm`` (in ``known_users``, the candidate's
    user vocabulary) or ``new``, and with ``anonymous`` the same requests sent as user -1 (split ``anonymous``).

    Columns as ``lib.policy_value.evaluate`` needs them, plus the raw user features ``ReleaseScorer`` feeds.
    """
    import pandas as pd

    if "true_user_id" not in data.requests.columns:
        raise ValueError("the evaluation slice has no true_user_id: build it with evaluation_slice from raw rows "
                         "that include user_id")
    base = data.requests.assign(day=data.day, relevant=list(data.relevant))
    base = base[base["true_user_id"].to_numpy(np.int64) >= 0].reset_index(drop=True)
    base["user_id"] = base["true_user_id"].to_numpy(np.int64)  # the id the visitor would send
    base["split"] = np.where(np.isin(base["true_user_id"].to_numpy(np.int64), np.asarray(known_users, np.int64)),
                             "warm", "new")
    parts = [base]
    if anonymous:
        parts.append(base.assign(user_id=np.int64(-1), split="anonymous"))
    return pd.concat(parts, ignore_index=True)


def true_evaluation(lists: Mapping, requests, world, history, visits, k: int, seed: int = 0, n_boot: int = 1000):
    """``lib.policy_value.evaluate`` of ``lists`` (name -> (requests, k) raw ids) on the gate requests, the
    references beside them (``history``: raw rows of the days before, with ``day``; ``visits``: the gate day's
    raw rows, whose sessions the context ceiling samples)."""
    from recsys_assets.lib import policy_value

    columns = ["user_id", "true_user_id", "device_type", "timestamp", "split", "day", "relevant"]
    return policy_value.evaluate(requests[columns], lists, world=world, history=history, visits=visits, k=k,
                                 seed=seed, n_boot=n_boot)


def evaluate(scorer: ReleaseScorer | None, data: EvaluationSlice, k: int = 100, popularity: np.ndarray | None = None,
             available_from: np.ndarray | None = None) -> dict:
    """The logged measures: recall@k of retrieval and AUC of ranking against the slice's clicks (exposure-biased:
    they favour what the logging policy showed), for a release (``scorer``) or, without one, for ``popularity``
    scores (raw item id -> score) over the items available that day (``available_from``)."""
    from recsys_assets.lib.evaluation import popularity_top_k
    from recsys_assets.lib.metrics import auc, recall_at_k

    labels = data.rows["click"].to_numpy()
    items = data.rows["item_id"].to_numpy(np.int64)
    if scorer is None:
        if popularity is None or available_from is None:
            raise ValueError("evaluate needs a release scorer, or popularity scores and item availability")
        allowed = np.asarray(available_from) <= data.day
        ranked = popularity_top_k(popularity, np.broadcast_to(allowed, (len(data.requests), len(allowed))), k)
        scores = np.asarray(popularity)[items]
    else:
        ranked = scorer.retrieve(data.requests, data.day, k)
        scores = scorer.click_probability(data.rows)
    return {f"recall@{k}": recall_at_k(ranked, data.relevant, k), "auc": auc(labels, scores),
            "requests": int(len(data.requests)), "rows": int(len(data.rows)), "clicks": int(labels.sum())}


def logged_gate(candidate: Mapping, served: Mapping | None, popularity: Mapping, fingerprint: str, k: int = 100,
                tolerance: float = 0.005) -> list:
    """DESIGN.md "Gates" where there is no truth (own data): beat popularity on logged recall@k and AUC, and drop
    neither by more than ``tolerance`` against the served release on the same rows (no served release: popularity
    test only). Returns ``[(check name, passed, description)]`` for ``beats_popularity`` and ``no_regression``."""
    from recsys_assets.lib.evaluation import gate as metric_gate

    outcomes: dict[str, list] = {"beats_popularity": [], "no_regression": []}
    for metric in (f"recall@{k}", "auc"):
        deployed = None if served is None else {"fingerprint": fingerprint, "metrics": {metric: served[metric]}}
        for o in metric_gate(metric, float(candidate[metric]), float(popularity[metric]), deployed, fingerprint,
                             tolerance):
            outcomes[o.name].append(o)
    return [(name, all(o.passed for o in found), "; ".join(o.description for o in found))
            for name, found in outcomes.items()]
