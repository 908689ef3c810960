"""Small but real serving artifacts, for tests and for benchmarking before the trained ones exist.

Everything has the format of the real thing, only the values are made up (seeded):

- ``transforms/``: a compiled-transforms description (:mod:`recsys_assets.serving.transforms` format), one output
  per feature of the feature spec (:mod:`recsys_assets.lib.feature_spec`), its statistics and vocabularies taken
  from the tiny world: the catalogue (held-back items left out, so they land on the OOV row like cold items),
  a few users, genders, categories, devices and age buckets;
- ``query_tower.onnx`` / ``dlrm.onnx``: ONNX graphs built with ``onnx.helper`` with the inputs a Merlin export
  has (one [N, 1] tensor per feature, the two embeddings [N, 64]): the query is a sum of user, top-category and
  device embeddings (so context moves an anonymous user's candidates), the ranker adds user x item,
  device x category and top-category x category interactions, content weights and price;
- ``item_embeddings.npy`` + ``index.faiss``: an inner-product ``IndexIDMap`` keyed by raw item id;
- ``multimodal.npy``: [image 64 | text 64] per raw item id; ``items.parquet``: the real catalogue.

The pipeline env has onnxruntime but not ``onnx``; the graphs are written in the merlin env (which has it)
through ``python -m recsys_assets.release.tiny onnx`` when ``onnx`` cannot be imported here.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from recsys_assets.lib import feature_spec as spec
from recsys_assets.lib.feature_spec import (
    AGE_BUCKETS,
    CYCLES,
    DEVICES,
    FIRST_INDEX,
    GENDER_CODES,
    GROUPS,
    INTERESTS,
    NULL_INDEX,
    OOV_INDEX,
    PAD_INDEX,
    SENTINEL,
    USER_HISTORY,
    WORKFLOW_INPUTS,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MERLIN_PYTHON = PROJECT_ROOT / ".venv-merlin" / "bin" / "python"


@dataclasses.dataclass(frozen=True)
class TinySizes:
    """Table sizes of the tiny models (rows include NVTabular's 3 reserved rows)."""

    users: int
    items: int
    categories: int
    top_categories: int
    devices: int = 3 + 3
    genders: int = 3 + 2
    age_bins: int = 3 + len(AGE_BUCKETS) + 1
    dim: int = 16
    content: int = 64
    seed: int = 7


# -- ONNX graphs (need the onnx package) -------------------------------------------------------------------------
def _onnx_models(out_dir: Path, sizes: TinySizes) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(sizes.seed)
    d = sizes.dim

    def table(name, rows, scale=1.0):
        return numpy_helper.from_array((rng.normal(size=(rows, d)) * scale).astype(np.float32), name)

    def cat_input(name):
        return helper.make_tensor_value_info(name, TensorProto.INT64, ["N", 1])

    def float_input(name, width=1):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width])

    axes1 = numpy_helper.from_array(np.array([1], np.int64), "axes1")

    def embed(nodes, feature, table_name):
        flat = f"{feature}_{table_name}_flat"
        nodes.append(helper.make_node("Squeeze", [feature, "axes1"], [flat]))
        nodes.append(helper.make_node("Gather", [table_name, flat], [f"{feature}_{table_name}"]))
        return f"{feature}_{table_name}"

    # query tower: E_user[user] + E_top[top_category] + 2 E_dev[device] + age_norm w_age + hour_sin w_hour
    nodes = []
    inits = [table("E_user", sizes.users, 0.5), table("E_top", sizes.top_categories),
             table("E_dev", sizes.devices, 2.0), axes1,
             numpy_helper.from_array(rng.normal(size=(1, d)).astype(np.float32), "w_age"),
             numpy_helper.from_array(rng.normal(size=(1, d)).astype(np.float32), "w_hour")]
    u = embed(nodes, "user_id", "E_user")
    t = embed(nodes, "top_category", "E_top")
    v = embed(nodes, "device_type", "E_dev")
    nodes += [helper.make_node("MatMul", ["age_norm", "w_age"], ["age_part"]),
              helper.make_node("MatMul", ["hour_sin", "w_hour"], ["hour_part"]),
              helper.make_node("Sum", [u, t, v, "age_part", "hour_part"], ["query"])]
    graph = helper.make_graph(nodes, "tiny_query_tower",
                              [cat_input("user_id"), cat_input("top_category"), float_input("age_norm"),
                               cat_input("device_type"), float_input("hour_sin")],
                              [helper.make_tensor_value_info("query", TensorProto.FLOAT, ["N", d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="recsys-tiny")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out_dir / "query_tower.onnx"))

    # ranker: sigmoid(<E_u[user], E_i[item]> + <E_dev[device], E_c[cat]> + <E_t[top], E_c2[cat]>
    #                 + image w_img + text w_txt + b price - 2)
    nodes = []
    # Scales keep each term's spread below ~1 logit, so probabilities spread instead of saturating.
    inits = [table("R_user", sizes.users, 0.4), table("R_item", sizes.items, 0.4), table("R_dev", sizes.devices, 0.45),
             table("R_cat", sizes.categories, 0.45), table("R_top", sizes.top_categories, 0.4),
             table("R_cat2", sizes.categories, 0.4), axes1,
             numpy_helper.from_array((rng.normal(size=(sizes.content, 1)) * 0.08).astype(np.float32), "w_img"),
             numpy_helper.from_array((rng.normal(size=(sizes.content, 1)) * 0.08).astype(np.float32), "w_txt"),
             numpy_helper.from_array(np.array([[0.3]], np.float32), "w_price"),
             numpy_helper.from_array(np.array([-2.0], np.float32), "bias"),
             numpy_helper.from_array(np.array([1], np.int64), "keep_axis")]
    parts = []
    for a_feat, a_tab, b_feat, b_tab, name in (("user_id", "R_user", "item_id", "R_item", "ui"),
                                               ("device_type", "R_dev", "category_l1", "R_cat", "dc"),
                                               ("top_category", "R_top", "category_l1", "R_cat2", "tc")):
        a, b = embed(nodes, a_feat, a_tab), embed(nodes, b_feat, b_tab)
        nodes += [helper.make_node("Mul", [a, b], [f"{name}_prod"]),
                  helper.make_node("ReduceSum", [f"{name}_prod", "keep_axis"], [f"{name}_dot"], keepdims=1)]
        parts.append(f"{name}_dot")
    nodes += [helper.make_node("MatMul", ["image_embedding", "w_img"], ["img_part"]),
              helper.make_node("MatMul", ["text_embedding", "w_txt"], ["txt_part"]),
              helper.make_node("MatMul", ["price_log_norm", "w_price"], ["price_part"]),
              helper.make_node("Sum", [*parts, "img_part", "txt_part", "price_part", "bias"], ["logit"]),
              helper.make_node("Sigmoid", ["logit"], ["click"])]
    graph = helper.make_graph(nodes, "tiny_dlrm",
                              [cat_input("user_id"), cat_input("top_category"), cat_input("device_type"),
                               cat_input("item_id"), cat_input("category_l1"), float_input("price_log_norm"),
                               float_input("image_embedding", sizes.content),
                               float_input("text_embedding", sizes.content)],
                              [helper.make_tensor_value_info("click", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="recsys-tiny")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(out_dir / "dlrm.onnx"))


def write_onnx_models(out_dir: Path, sizes: TinySizes) -> None:
    """The two tiny ONNX graphs, written here if ``onnx`` imports, else by the merlin env."""
    out_dir = Path(out_dir)
    try:
        import onnx  # noqa: F401
    except ImportError:
        if not MERLIN_PYTHON.exists():
            raise RuntimeError("building the tiny ONNX models needs the onnx package: it is in the merlin env "
                               f"({MERLIN_PYTHON}, missing: run `make setup`)") from None
        proc = subprocess.run([str(MERLIN_PYTHON), "-m", "recsys_assets.release.tiny", "onnx", str(out_dir),
                               json.dumps(dataclasses.asdict(sizes))], capture_output=True, text=True,
                              cwd=PROJECT_ROOT, env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})
        if proc.returncode != 0:
            raise RuntimeError(f"tiny ONNX build in the merlin env failed:\n{proc.stderr[-2000:]}")
        return
    _onnx_models(out_dir, sizes)


# -- the rest -----------------------------------------------------------------------------------------------------
def _categorify(values) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values)
    return values, np.arange(FIRST_INDEX, FIRST_INDEX + len(values), dtype=np.int64)


def _source_values(items, users) -> dict[str, np.ndarray]:
    """The tiny world's values of every raw column: what its transforms are "fit" on. Vocabularies cover every
    user, gender, top category and device; of the items only the warm ones (held-back items land on the OOV row,
    like cold items)."""
    warm = items.loc[items["available_from_day"] == 0, "item_id"].to_numpy(np.int64)
    values = {
        "user_id": users["user_id"].to_numpy(np.int64), "age": users["age"].to_numpy(np.float64),
        "gender": np.array(sorted(GENDER_CODES.values()), np.int64),
        **{name: np.arange(20, dtype=np.int64) for name in USER_HISTORY},
        "item_id": warm, "price": items["price"].to_numpy(np.float64),
        "device_type": np.array(sorted(DEVICES), np.int64), "timestamp": np.zeros(1, np.int64),
    }
    for column in ("category_l1", "category_l2", "item_gender"):
        values[column] = items[column].to_numpy().astype(str)
    return values


def _fit_feature(feature, x: np.ndarray, mean_age: float, vocabularies: dict) -> list[dict]:
    """The compiled steps of one spec feature, their statistics taken from ``x`` (a numpy stand-in for the fit)."""
    from recsys_assets.serving.transforms import _build_step

    indices = {"null": NULL_INDEX, "oov": OOV_INDEX}
    steps = []
    for step in feature.steps:
        if step.op == "categorify":
            name = f"{feature.group}.{feature.name}"
            vocabularies[name] = _categorify(np.unique(x))
            steps.append({"op": "categorify", "vocab": name})
            continue
        compiled = {
            "sentinel_to_null": lambda: {"op": "sentinel_to_null", "value": SENTINEL},
            "fill_mean_age": lambda: {"op": "fill_missing", "value": mean_age},
            "fill_median": lambda: {"op": "fill_missing", "value": float(np.median(x))},
            "log1p": lambda: {"op": "log1p"},
            "normalize": lambda: {"op": "normalize", "mean": float(x.mean()), "std": float(x.std()),
                                  "dtype": "float32"},
            "bucketize": lambda: {"op": "bucketize", "edges": list(step.edges)},
            "cyclical": lambda: {"op": "cyclical", **CYCLES[step.cycle], "fn": step.fn, "dtype": "float32"},
        }[step.op]()
        steps.append(compiled)
        # A bucketized column's vocabulary is every bucket, whichever the tiny users happen to fall in.
        x = (np.arange(len(step.edges) + 1, dtype=np.int64) if step.op == "bucketize"
             else _build_step(compiled, {}, indices)(x))
    return steps


def transforms_description(items, users, mean_age: float) -> tuple[dict, dict]:
    """A compiled-transforms description over the tiny world (format of ``serving.transforms``), one output per
    feature of the feature spec."""
    import pandas as pd

    values = _source_values(items, users)
    vocabularies: dict = {}
    groups = {}
    for group in GROUPS:
        outputs = []
        for feature in spec.features(group):
            steps = _fit_feature(feature, values[feature.source], mean_age, vocabularies)
            dtype = "int64" if feature.kind == spec.CATEGORICAL else "float32"
            outputs.append({"name": feature.name, "input": feature.source, "dtype": dtype, "tags": [],
                            "steps": steps})
        groups[group] = {"inputs": list(WORKFLOW_INPUTS[group]), "outputs": outputs}
    from recsys_assets.serving import transforms as compiled

    description = {
        "format": compiled.FORMAT, "version": compiled.VERSION, "mean_age": float(mean_age),
        "indices": {"pad": PAD_INDEX, "null": NULL_INDEX, "oov": OOV_INDEX, "first": FIRST_INDEX},
        "input_codes": {"gender": dict(GENDER_CODES)}, "groups": groups,
        "vocabularies": {name: {"size": len(v)} for name, (v, _) in vocabularies.items()},
        "source": {"workflows": "recsys_assets.release.tiny", "fit_rows": int(len(users)),
                   "compiled_at": int(pd.Timestamp.now().timestamp())},
    }
    return description, vocabularies


@dataclasses.dataclass(frozen=True)
class TinyArtifacts:
    folder: Path
    items: "object"   # DataFrame: the catalogue
    users: "object"   # DataFrame: the users known to the online store
    trained: "object"  # repository.TrainedArtifacts
    start_date: str


def build_tiny_artifacts(folder: Path, n_users: int = 60, seed: int = 7, dim: int = 16) -> TinyArtifacts:
    """Write every artifact the repository build needs into ``folder``; returns their paths and tables."""
    import faiss

    from recsys_assets.lib.generator import World
    from recsys_assets.serving import transforms as compiled
    from recsys_assets.release.repository import TrainedArtifacts

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    world = World(seed=seed, scale="tiny")
    items = world.items[["item_id", "name", "category_l1", "category_l2", "price", "item_gender",
                         "available_from_day"]].copy()
    items["available_from_day"] = items["available_from_day"].astype(np.int64)
    items.to_parquet(folder / "items.parquet", index=False)
    users = world.users(0).head(n_users).reset_index(drop=True)
    mean_age = float(users["age"].mean())
    description, vocabularies = transforms_description(items, users, mean_age)
    compiled.write_description(folder / "transforms", description, vocabularies)

    sizes = TinySizes(users=FIRST_INDEX + len(users), items=FIRST_INDEX + len(items),
                      categories=FIRST_INDEX + items["category_l1"].nunique(), top_categories=FIRST_INDEX + 20,
                      dim=dim, seed=seed)
    write_onnx_models(folder, sizes)
    rng = np.random.default_rng(seed + 1)
    item_vectors = rng.normal(size=(len(items), dim)).astype(np.float32)
    np.save(folder / "item_embeddings.npy", item_vectors)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    index.add_with_ids(item_vectors, items["item_id"].to_numpy(np.int64))
    faiss.write_index(index, str(folder / "index.faiss"))
    np.save(folder / "multimodal.npy", rng.normal(size=(len(items), 2 * sizes.content)).astype(np.float32))
    trained = TrainedArtifacts(transforms_dir=folder / "transforms", query_tower=folder / "query_tower.onnx",
                               dlrm=folder / "dlrm.onnx", faiss_index=folder / "index.faiss",
                               multimodal=folder / "multimodal.npy", items=folder / "items.parquet",
                               image_dims=sizes.content, prior_weight=TINY_PRIOR_WEIGHT)
    return TinyArtifacts(folder=folder, items=items, users=users, trained=trained,
                         start_date=world.start_date.isoformat())


TINY_PRIOR_WEIGHT = 1.0  # the served order blends the prior, so every serving test runs through it


def serving_environ(valkey_url: str, artifacts_root: Path) -> dict[str, str]:
    """The server environment for the tiny world: runtime endpoints, never baked into the repository."""
    from recsys_assets.serving.runtime import server_environ

    return {**server_environ(valkey_url, str(Path(artifacts_root) / "feature_store" / "registry.db")),
            "RECSYS_ARTIFACTS": str(artifacts_root)}


def publish_online_state(tiny: TinyArtifacts, environ: dict[str, str], seed: int = 7) -> dict:
    """Put the tiny world where serving reads it: Feast offline files, ``feast apply`` + ``materialize`` into the
    online store, and popularity tables (made-up clicks) in Valkey. Returns what was written (each user's history
    codes by name, popularity order)."""
    import datetime as dt
    import os

    import pandas as pd

    from recsys_assets.lib import popularity
    from recsys_assets.lib.top_category import INTEREST_WEIGHTS
    from recsys_assets.lib.valkey_server import KeyLayout, parse_url

    root = Path(environ["RECSYS_ARTIFACTS"])
    offline = root / "feature_store" / "offline"
    offline.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    users, items = tiny.users, tiny.items
    signup = pd.to_datetime(users["signup_timestamp"].to_numpy(np.int64), unit="s", utc=True)
    pd.DataFrame({"user_id": users["user_id"].astype(np.int64), "age": users["age"].astype(np.int64),
                  "gender": users["gender"].astype(str), "event_timestamp": signup}).to_parquet(
        offline / "users.parquet", index=False)
    top = np.where(rng.random(len(users)) < 0.8, rng.integers(0, 20, len(users)), -1).astype(np.int64)
    pd.DataFrame({"user_id": users["user_id"].astype(np.int64), "top_category": top,
                  "event_timestamp": signup}).to_parquet(offline / "user_top_category.parquet", index=False)
    interests = {name: np.where(top >= 0, (top + k) % 20, -1).astype(np.int64) for k, name in enumerate(INTERESTS)}
    pd.DataFrame({"user_id": users["user_id"].astype(np.int64), **interests,
                  "event_timestamp": signup}).to_parquet(offline / "user_interests.parquet", index=False)
    # the weights those interests rank: 3, 2, 1 on interest_1..3 (zeros for a user without interests)
    weights = np.zeros((len(users), 20), np.float32)
    for k, codes in enumerate(interests.values()):
        has = codes >= 0
        weights[np.flatnonzero(has), codes[has]] = 3 - k
    pd.DataFrame({"user_id": users["user_id"].astype(np.int64), INTEREST_WEIGHTS: list(weights),
                  "event_timestamp": signup}).to_parquet(offline / "user_interest_weights.parquet", index=False)
    day0 = dt.datetime.fromisoformat(tiny.start_date).replace(tzinfo=dt.timezone.utc)
    item_table = items[["item_id", "price", "category_l1", "category_l2", "item_gender", "available_from_day"]].copy()
    item_table["event_timestamp"] = [day0 + dt.timedelta(days=int(d)) for d in item_table["available_from_day"]]
    item_table.to_parquet(offline / "items.parquet", index=False)

    env = {**os.environ, **environ, "PYTHONPATH": str(PROJECT_ROOT)}
    repo = environ["RECSYS_FEAST_REPO"]
    end = item_table["event_timestamp"].max() + dt.timedelta(seconds=1)
    for args in (["apply"], ["materialize", "2000-01-01T00:00:00", end.isoformat()]):
        proc = subprocess.run([sys.executable, "-m", "feast.cli.cli", "-c", repo, "-f", f"{repo}/feature_store.yaml",
                               *args], env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"feast {args[0]} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")

    # Day 0's impressions (a fifth clicked): the popularity tables and the ordering prior of window [0]
    shown = rng.choice(items["item_id"].to_numpy(), size=25_000, p=_zipf(len(items), rng))
    impressions = pd.DataFrame({"item_id": shown, "click": (rng.random(len(shown)) < 0.2).astype(np.int64),
                                "device_type": rng.integers(0, 3, len(shown)),
                                "timestamp": int(day0.timestamp()) + rng.integers(0, 86_400, len(shown))})
    tables = popularity.build_window(impressions, items, window=[0], users=users)
    endpoint = parse_url(environ["RECSYS_VALKEY_URL"])
    space = KeyLayout.make().popularity
    client = endpoint.client(db=space.db)
    try:
        popularity.publish(client, space.prefix, tables)
    finally:
        client.close()
    ids = users["user_id"].tolist()
    return {"top_category": dict(zip(ids, top.tolist())),
            **{name: dict(zip(ids, codes.tolist())) for name, codes in interests.items()},
            "popular": popularity.ranking(tables)}


def _zipf(n: int, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** 1.1
    weights = weights[rng.permutation(n)]
    return weights / weights.sum()


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "onnx":
        _onnx_models(Path(argv[1]), TinySizes(**json.loads(argv[2])))
        return 0
    print("usage: python -m recsys_assets.release.tiny onnx OUT_DIR SIZES_JSON", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
