"""The Triton model repository: assembled from the ``triton_repo/`` templates and the trained artifacts, validated.

Layout (a folder; under the artifact root at ``serving/triton_repository``)::

    <model>/config.pbtxt        the template's config, trained values and defaults injected as parameters, the
                                feature-group widths written from the feature spec (``serving.features``),
                                ``version_policy { specific { versions: [v] } }`` = the version the release serves
    <model>/<v>/model.py        the template's shim (plus its precompiled __pycache__)
    <model>/<v>/<artifacts>     what the stage loads: model.onnx, index.faiss, transforms/, multimodal.npy ...

plus a release manifest (:class:`Release`, ``serving/releases/<n>.json``) naming the version of every model
that forms one served set, the parameters and the digest of every input.

Versions: each build stages every model's version content (shim + artifacts) and compares its digest (files and
parameters) with the model's latest version: unchanged models keep their version, changed ones get the next
integer. The live repository of a running server is updated in place (``previous`` == ``target``), leaving the
folders of unchanged models untouched, so a hot swap reloads only the changed models. So a release that only
retrains the ranker bumps ``dlrm_ranking`` alone, and the manifest says so. Versions no longer named by the last
``keep_releases`` releases are removed (in place: only from models that changed, which reload anyway).

Runtime endpoints (Valkey URL, Feast registry and online store, ports) are never written here: the stages read
them from the server's environment (:mod:`recsys_assets.serving.runtime`), so a repository version stays valid
when they change (DESIGN.md Contracts).

Validation (:func:`validate_repository`): every config parses with Triton's own protobufs
(``tritonclient.grpc.model_config_pb2``); ``name`` equals the directory; python models have ``<v>/model.py``
and their stage declares exactly the config's tensors; required parameters are set; every ensemble step names a
model of the repository with tensors it has, every tensor a step reads is an ensemble input or produced by an
earlier step with the same dtype, and the ensemble's outputs are produced; a feature-group tensor with a fixed
width has the feature spec's (open, -1, in the templates).
"""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from recsys_assets.lib import prior
from recsys_assets.lib.digests import file_sha256, path_sha256
from recsys_assets.lib.ensemble_request import ENSEMBLE
from recsys_assets.lib.processes import LockTimeout, exclusive_lock
from recsys_assets.serving.graph import (  # noqa: F401  (names the release layer re-exports)
    GRAPH_FILE, LAYOUTS, alias, config_dict, is_executor, model_of, parse_alias, parse_config_text, served_graph,
    served_versions, versions as _versions,
)
from recsys_assets.serving.stages import MODELS

TEMPLATES = Path(__file__).resolve().parents[2] / "triton_repo"
# The executor layout's shim: one python model named ensemble_model running the whole graph (serving.graph).
EXECUTOR_SHIM = TEMPLATES / ENSEMBLE / "executor_model.py"
# Parameters a built repository must carry a value for (the templates leave them empty on purpose).
REQUIRED_PARAMETERS = {"feast_user_lookup": ("MEAN_AGE",), "faiss_retrieval": ("START_DATE",),
                       "filter_seen_items": ("START_DATE",)}

class RepositoryError(ValueError):
    """The repository (or a template) is not servable; the message lists every problem found."""


class ReleaseError(RuntimeError):
    """A release cannot be built, recorded or served as asked; the message says why and what to do."""


# -- configs ----------------------------------------------------------------------------------------------------
def parse_config(path: Path):
    """A ``config.pbtxt`` as Triton's ``ModelConfig`` protobuf."""
    from recsys_assets.serving.executor import StageConfigError

    try:
        return parse_config_text(Path(path).read_text(), str(path))
    except StageConfigError as exc:
        raise RepositoryError(str(exc)) from exc


def write_config(config, path: Path, header: str = "") -> None:
    from google.protobuf import text_format

    Path(path).write_text(header + text_format.MessageToString(config))


def write_config_if_changed(config, path: Path, header: str = "") -> bool:
    """Write the config only when its text differs (True when written): Triton reloads a loaded model whose
    folder changed, so an unchanged model's config must keep its file, and its modification time, as they are."""
    from google.protobuf import text_format

    text = header + text_format.MessageToString(config)
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def apply_feature_widths(config) -> None:
    """Write the feature spec's widths into the last dimension of the config's feature-group tensors."""
    from recsys_assets.serving.features import TENSOR_WIDTHS

    for tensor in [*config.input, *config.output]:
        width = TENSOR_WIDTHS.get(tensor.name)
        if width is not None:
            tensor.dims[-1] = width


def config_header(template: Path) -> str:
    """The template's leading comment lines (text_format drops comments)."""
    lines = []
    for line in Path(template).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""


# -- inputs -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrainedArtifacts:
    """Local paths of everything a release is built from."""

    transforms_dir: Path        # serving_transforms: transforms.json + vocab/
    query_tower: Path           # query tower ONNX
    dlrm: Path                  # DLRM ONNX
    faiss_index: Path           # index keyed by raw item id
    multimodal: Path            # float32 (items, image dims + text dims), row = raw item id
    items: Path                 # catalogue parquet: item_id, category_l1/l2, item_gender, price, available_from_day
    faiss_ids: Path | None = None  # position -> raw id, for an index not wrapped in an IndexIDMap
    query_tower_input_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    dlrm_input_map: Mapping[str, str] = dataclasses.field(default_factory=dict)
    image_dims: int = 64
    prior_weight: float = 0.0
    """The ordering prior's weight chosen for this DLRM (``ranking_evaluation``; lib/prior.py); 0: none."""
    prior_coefficients: tuple[float, ...] = prior.DEFAULT_COEFFICIENTS
    """Its terms' coefficients (``lib.prior.TERMS`` order), chosen with the weight."""


@dataclasses.dataclass(frozen=True)
class ServingDefaults:
    """Defaults of the served behaviour, injected as config parameters (requests may override top_k, diversity)."""

    retrieval_topk: int = 300
    """RETRIEVAL_TOPK: candidates FAISS hands on (after the seen filter) to the ranker."""
    retrieval_margin: int = 100
    """Extra neighbours FAISS fetches so padding, unreleased and seen items can be dropped."""
    ranking_topk: int = 100
    """RANKING_TOPK: the most a request may ask for, and the pool diversity sampling draws from."""
    default_top_k: int = 10
    diversity_mode: bool = False
    """DIVERSITY_MODE: sample instead of greedy when a request does not say."""
    diversity_temperature: float = 0.5
    sampling_seed: int = -1
    bloom_capacity: int = 1000
    bloom_error_rate: float = 0.01
    bloom_ttl_s: int = 7 * 24 * 3600
    bloom_mode: str = "auto"
    context_candidates: int = 0
    """CONTEXT_CANDIDATES: retrieval candidates of an anonymous request swapped for the best items of its context
    by the ordering prior (filter_seen_items; 0: none)."""
    item_cache_refresh_s: float = 300.0
    feast_read: str = "provider"
    """feast_user_lookup: "provider" (online_read) or "sdk" (get_online_features)."""
    instances: int = 1
    """Instances of every python model (one each suits 2 cores)."""
    instance_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Per-model overrides, e.g. a second instance of an I/O-bound lookup: {"feast_user_lookup": 2}."""
    layout: str = "ensemble"
    """How Triton runs the graph: "ensemble" (the 14 python models wired by an ensemble: per-model instances and
    metrics) or "executor" (one python model named ensemble_model running the same stages in one process:
    no hop between stages; docs/serving.md compares them)."""
    executor_instances: int = 2
    """Instances of the executor model (each runs whole requests; two keep both cores busy)."""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r}: expected one of {', '.join(LAYOUTS)}")
        if self.executor_instances < 1:
            raise ValueError(f"executor_instances must be >= 1, got {self.executor_instances}")
        unknown = set(self.instance_counts) - set(MODELS)
        if unknown:
            raise ValueError(f"instance_counts names unknown models {sorted(unknown)}")
        if not 1 <= self.default_top_k <= self.ranking_topk <= self.retrieval_topk:
            raise ValueError(f"need 1 <= default_top_k ({self.default_top_k}) <= ranking_topk ({self.ranking_topk}) "
                             f"<= retrieval_topk ({self.retrieval_topk})")


ITEM_SNAPSHOT_COLUMNS = ["item_id", "category_l1", "category_l2", "item_gender", "price", "available_from_day"]


def _parameters(model: str, trained: TrainedArtifacts, defaults: ServingDefaults, mean_age: float,
                start_date: str) -> dict[str, str]:
    d = defaults
    return {
        "context_preprocessor": {"RANKING_TOPK": d.ranking_topk, "DEFAULT_TOP_K": d.default_top_k,
                                 "DIVERSITY_MODE": str(d.diversity_mode).lower()},
        "feast_user_lookup": {"MEAN_AGE": repr(float(mean_age)), "FEAST_READ": d.feast_read},
        "query_tower": {"INPUT_MAP": json.dumps(dict(trained.query_tower_input_map), sort_keys=True)},
        "faiss_retrieval": {"RETRIEVAL_TOPK": d.retrieval_topk, "RETRIEVAL_MARGIN": d.retrieval_margin,
                            "START_DATE": start_date},
        "filter_seen_items": {"RETRIEVAL_TOPK": d.retrieval_topk, "START_DATE": start_date,
                              "BLOOM_CAPACITY": d.bloom_capacity, "BLOOM_ERROR_RATE": repr(d.bloom_error_rate),
                              "BLOOM_TTL_S": d.bloom_ttl_s, "BLOOM_MODE": d.bloom_mode,
                              "CONTEXT_CANDIDATES": d.context_candidates},
        "feast_item_lookup": {"ITEM_CACHE_REFRESH_S": repr(float(d.item_cache_refresh_s))},
        "multimodal_embedding_lookup": {"IMAGE_DIMS": trained.image_dims},
        "dlrm_ranking": {"INPUT_MAP": json.dumps(dict(trained.dlrm_input_map), sort_keys=True)},
        "softmax_sampling": {"RANKING_TOPK": d.ranking_topk, "DIVERSITY_TEMPERATURE": repr(d.diversity_temperature),
                             "SAMPLING_SEED": d.sampling_seed, "PRIOR_WEIGHT": repr(float(trained.prior_weight)),
                             "PRIOR_COEFFICIENTS": prior.format_coefficients(trained.prior_coefficients)},
    }.get(model, {})


def _stage_version(model: str, version_dir: Path, template_dir: Path, trained: TrainedArtifacts) -> None:
    """Write one model's version content (shim + artifacts) into ``version_dir``."""
    version_dir.mkdir(parents=True)
    shim = template_dir / "1" / "model.py"
    if shim.exists():
        shutil.copy2(shim, version_dir / "model.py")
    files: dict[str, Path] = {
        "query_tower": {"model.onnx": trained.query_tower},
        "dlrm_ranking": {"model.onnx": trained.dlrm},
        "faiss_retrieval": {"index.faiss": trained.faiss_index,
                            **({"index_ids.npy": trained.faiss_ids} if trained.faiss_ids else {})},
        "multimodal_embedding_lookup": {"multimodal.npy": trained.multimodal},
    }.get(model, {})
    for name, source in files.items():
        shutil.copy2(source, version_dir / name)
    if model in ("nvt_user_transform", "nvt_context_transform", "nvt_item_transform", "item_id_decoder"):
        shutil.copytree(trained.transforms_dir, version_dir / "transforms")
    if model in ("faiss_retrieval", "filter_seen_items", "feast_item_lookup"):
        import pandas as pd

        items = pd.read_parquet(trained.items)
        missing = set(ITEM_SNAPSHOT_COLUMNS) - set(items.columns)
        if missing:
            raise RepositoryError(f"{trained.items} lacks columns {sorted(missing)}")
        items = items.sort_values("item_id")
        ids = items["item_id"].to_numpy(np.int64)
        if not (ids == np.arange(len(ids))).all():
            raise RepositoryError(f"{trained.items}: item ids must be 0..n-1 (catalogue order)")
        if model == "feast_item_lookup":
            items[ITEM_SNAPSHOT_COLUMNS].to_parquet(version_dir / "items.parquet", index=False)
        else:
            np.save(version_dir / "availability.npy", items["available_from_day"].to_numpy(np.int64))


def _digest(version_dir: Path, parameters: Mapping[str, str]) -> str:
    h = hashlib.sha256(json.dumps(dict(parameters), sort_keys=True).encode())
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(version_dir)).encode())
        h.update(file_sha256(path).encode())
    return h.hexdigest()


# -- releases ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Release:
    """One served set: the version of every model, with what it was built from."""

    release: int
    created_at: str
    models: dict[str, int]
    digests: dict[str, str]
    parameters: dict[str, dict[str, str]]
    inputs: dict[str, str]
    changed: list[str]
    layout: str = "ensemble"         # ServingDefaults.layout (manifests written before it existed: "ensemble")
    executor_instances: int = ServingDefaults.executor_instances

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Release":
        return cls(**json.loads(text))


def build_repository(target: Path, trained: TrainedArtifacts, defaults: ServingDefaults, start_date: str,
                     release: int, previous: Path | None = None, previous_releases: list[Release] | None = None,
                     templates: Path = TEMPLATES, keep_releases: int = 3) -> Release:
    """Assemble a repository in ``target`` (an empty or missing folder), starting from ``previous`` if given;
    ``previous`` == ``target`` updates the repository in place (what a running server's repository needs).

    ``previous_releases``: the manifests of earlier releases, newest last (their digests decide whether a model's
    content changed; their versions are kept for rollback up to ``keep_releases``). Returns the new manifest.

    In place, an unchanged model's folder is not touched at all: Triton reloads a loaded model (new python stubs,
    seconds on 2 cores) when anything in its folder changed, judged by inode change times, so a copied folder
    counts as changed even with equal content. New versions are staged beside the repository and renamed in;
    configs are rewritten only when their text changes; old versions are pruned only from models that changed
    (which reload anyway). A build that fails puts every config back and removes the versions it added.
    """
    from recsys_assets.serving.transforms import CompiledTransforms

    target = Path(target)
    in_place = previous is not None and target.exists() and Path(previous).resolve() == target.resolve()
    if not in_place:
        if target.exists() and any(target.iterdir()):
            raise RepositoryError(f"{target} is not empty: build into a fresh folder")
        if previous is not None and Path(previous).exists():
            # symlinks=True: served alias folders (recsys_assets.release) link to version folders
            shutil.copytree(previous, target, dirs_exist_ok=True, symlinks=True,
                            ignore=shutil.ignore_patterns(".tmp-*"))
    target.mkdir(parents=True, exist_ok=True)
    mean_age = CompiledTransforms.load(trained.transforms_dir).mean_age
    # Outside the repository: Triton's repository index lists every folder in it.
    staging_root = target.parent / f".staging-{target.name}"
    if staging_root.exists():
        shutil.rmtree(staging_root)
    history = list(previous_releases or [])
    last = history[-1] if history else None
    models, digests, parameters, changed = {}, {}, {}, []
    configs_before: dict[Path, str | None] = {}
    added: list[Path] = []
    try:
        for model in (*MODELS, ENSEMBLE):
            template_dir = Path(templates) / model
            config = parse_config(template_dir / "config.pbtxt")
            apply_feature_widths(config)
            params = {k: str(v) for k, v in _parameters(model, trained, defaults, mean_age, start_date).items()}
            for key, value in params.items():
                config.parameters[key].string_value = value
            if model != ENSEMBLE:
                for group in config.instance_group:
                    group.count = int(defaults.instance_counts.get(model, defaults.instances))
            model_dir = target / model
            staging = staging_root / model
            _stage_version(model, staging, template_dir, trained)
            digest = _digest(staging, {k: v.string_value for k, v in config.parameters.items()})
            existing = _versions(model_dir)
            if last is not None and last.digests.get(model) == digest and last.models.get(model) in existing:
                version = last.models[model]
                shutil.rmtree(staging)
            else:
                version = (max(existing) if existing else 0) + 1
                compileall.compile_dir(str(staging), quiet=1)  # no __pycache__ written at load time
                model_dir.mkdir(exist_ok=True)
                staging.rename(model_dir / str(version))
                added.append(model_dir / str(version))
                changed.append(model)
            del config.version_policy.specific.versions[:]
            config.version_policy.specific.versions.append(version)
            path = model_dir / "config.pbtxt"
            before = path.read_text() if path.exists() else None
            if write_config_if_changed(config, path, config_header(template_dir / "config.pbtxt")):
                configs_before[path] = before
            models[model], digests[model] = version, digest
            parameters[model] = {k: v.string_value for k, v in sorted(config.parameters.items())}
        manifest = Release(
            release=release, created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            models=models, digests=digests, parameters=parameters, changed=changed, layout=defaults.layout,
            executor_instances=defaults.executor_instances,
            inputs={field.name: path_sha256(getattr(trained, field.name)) for field in dataclasses.fields(trained)
                    if isinstance(getattr(trained, field.name), Path)},
        )
        problems = validate_repository(target)
        if problems:
            raise RepositoryError("the assembled repository is not servable:\n- " + "\n- ".join(problems))
    except BaseException:
        for path, text in configs_before.items():  # as it was: what serves keeps its configs
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
        for folder in added:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    _prune(target, [*history, manifest][-keep_releases:], models=None if not in_place else [*changed, ENSEMBLE])
    return manifest


def _prune(target: Path, kept: list[Release], models=None) -> None:
    """Remove versions no kept release names, from ``models`` (default: all)."""
    for model in (models if models is not None else (*MODELS, ENSEMBLE)):
        keep = {r.models.get(model) for r in kept}
        for version in _versions(target / model):
            if version not in keep:
                shutil.rmtree(target / model / str(version))


def restore_release(repository: Path, release: Release) -> None:
    """Point every config at the versions of ``release`` (rollback), leaving the version folders as they are."""
    missing = [f"{m}/{v}" for m, v in release.models.items() if not (Path(repository) / m / str(v)).is_dir()]
    if missing:
        raise RepositoryError(f"release {release.release} needs versions no longer in the repository: {missing}")
    for model, version in release.models.items():
        path = Path(repository) / model / "config.pbtxt"
        config = parse_config(path)
        del config.version_policy.specific.versions[:]
        config.version_policy.specific.versions.append(version)
        for key, value in release.parameters.get(model, {}).items():
            config.parameters[key].string_value = value
        write_config(config, path, config_header(path))


# -- validation -------------------------------------------------------------------------------------------------
def validate_repository(root: Path, require_parameters: bool = True) -> list[str]:
    """Every problem that would keep the repository from serving (empty list: servable). See the module doc."""
    from recsys_assets.serving.executor import TRITON_DTYPES
    from recsys_assets.serving.features import TENSOR_WIDTHS
    from recsys_assets.serving.stages import STAGE_CLASSES, stage_class

    root = Path(root)
    problems: list[str] = []
    configs = {}
    for model in (*MODELS, ENSEMBLE):
        path = root / model / "config.pbtxt"
        if not path.exists():
            problems.append(f"{model}: no config.pbtxt")
            continue
        try:
            config = configs[model] = parse_config(path)
        except RepositoryError as exc:
            problems.append(str(exc))
            continue
        if config.name != model:
            problems.append(f"{model}/config.pbtxt: name {config.name!r} differs from its directory {model!r}")
        versions = served_versions(config, root / model)
        if not versions:
            problems.append(f"{model}: no version directory to serve")
        for version in versions:
            vdir = root / model / str(version)
            if not vdir.is_dir():
                problems.append(f"{model}: the config serves version {version}, which has no directory")
            elif model != ENSEMBLE and not (vdir / "model.py").exists():
                problems.append(f"{model}/{version}: no model.py")
        for tensor in [*config.input, *config.output]:
            from tritonclient.grpc import model_config_pb2

            if model_config_pb2.DataType.Name(tensor.data_type) not in TRITON_DTYPES:
                problems.append(f"{model}: tensor {tensor.name!r} has an unsupported dtype")
            width = TENSOR_WIDTHS.get(tensor.name)
            if width is not None and tensor.dims and tensor.dims[-1] not in (-1, width):
                problems.append(f"{model}: tensor {tensor.name!r} is {list(tensor.dims)} wide, the feature spec says "
                                f"{width}: rebuild the repository with this code version")
        if model == ENSEMBLE:
            if is_executor(config):  # the executor layout: a python model walking graph.pbtxt
                for version in versions:
                    for name in ("model.py", GRAPH_FILE):
                        if not (root / model / str(version) / name).exists():
                            problems.append(f"{model}/{version}: the executor layout needs {name}")
            elif config.platform != "ensemble":
                problems.append(f"{model}: platform must be 'ensemble' (or backend 'python': the executor layout)")
            continue
        if config.backend != "python":
            problems.append(f"{model}: backend {config.backend!r}, expected 'python'")
        if model in STAGE_CLASSES:
            stage = stage_class(model)
            wanted_in = set(stage.inputs) | set(stage.optional_inputs)
            have_in = {t.name for t in config.input}
            if have_in != wanted_in:
                problems.append(f"{model}: config inputs {sorted(have_in)} != stage inputs {sorted(wanted_in)}")
            if {t.name for t in config.output} != set(stage.outputs):
                problems.append(f"{model}: config outputs {sorted(t.name for t in config.output)} != stage outputs "
                                f"{sorted(stage.outputs)}")
        if require_parameters:
            for key in REQUIRED_PARAMETERS.get(model, ()):
                if not config.parameters[key].string_value:
                    problems.append(f"{model}: parameter {key} is empty (the repository build injects it)")
    if ENSEMBLE in configs:
        from recsys_assets.serving.executor import StageConfigError

        try:
            graph = served_graph(root)
        except StageConfigError as exc:
            return [*problems, str(exc)]
        if is_executor(configs[ENSEMBLE]):
            for kind in ("input", "output"):
                have = [(t.name, t.data_type, tuple(t.dims)) for t in getattr(configs[ENSEMBLE], kind)]
                want = [(t.name, t.data_type, tuple(t.dims)) for t in getattr(graph, kind)]
                if have != want:
                    problems.append(f"{ENSEMBLE}: the executor's {kind}s differ from its graph's")
        problems += _check_ensemble(graph, {**configs, **_alias_configs(root, graph)})
    return problems


def _alias_configs(root: Path, ensemble) -> dict:
    """The configs of the aliases a served ensemble runs (``write_served``): what Triton loads for those steps."""
    found = {}
    for step in ensemble.ensemble_scheduling.step:
        path = root / step.model_name / "config.pbtxt"
        if parse_alias(step.model_name) is not None and path.exists():
            found[step.model_name] = parse_config(path)
    return found


def _check_ensemble(ensemble, configs: dict) -> list[str]:
    problems = []
    available = {t.name: (t.data_type, tuple(t.dims)) for t in ensemble.input}
    used_models = set()
    for i, step in enumerate(ensemble.ensemble_scheduling.step):
        where = f"ensemble step {i} ({step.model_name})"
        model = configs.get(step.model_name)
        if model is None:
            problems.append(f"{where}: no model {step.model_name!r} in the repository")
            continue
        used_models.add(model_of(step.model_name))
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t for t in model.output}
        for key, tensor in step.input_map.items():
            if key not in inputs:
                problems.append(f"{where}: the model has no input {key!r}")
            elif tensor not in available:
                problems.append(f"{where}: reads {tensor!r}, which no earlier step or ensemble input provides")
            elif available[tensor][0] != inputs[key].data_type:
                problems.append(f"{where}: {tensor!r} has dtype {available[tensor][0]}, input {key!r} wants "
                                f"{inputs[key].data_type}")
        for name, tensor in inputs.items():
            if name not in step.input_map and not tensor.optional:
                problems.append(f"{where}: required input {name!r} is not mapped")
        for key, tensor in step.output_map.items():
            if key not in outputs:
                problems.append(f"{where}: the model has no output {key!r}")
                continue
            if tensor in available:
                problems.append(f"{where}: output {tensor!r} is produced twice")
            available[tensor] = (outputs[key].data_type, tuple(outputs[key].dims))
    for tensor in ensemble.output:
        if tensor.name not in available:
            problems.append(f"ensemble output {tensor.name!r} is produced by no step")
        elif available[tensor.name][0] != tensor.data_type:
            problems.append(f"ensemble output {tensor.name!r}: dtype differs from its producer")
    unused = set(MODELS) - used_models
    if unused:
        problems.append(f"models not in the ensemble: {sorted(unused)}")
    return problems


@contextlib.contextmanager
def repository_lock(root: Path, timeout_s: float = 600.0):
    """An exclusive lock on the live repository of a local artifact root (candidate builds and switches)."""
    try:
        with exclusive_lock(Path(root) / "serving" / ".repository.lock", timeout_s):
            yield
    except LockTimeout as exc:
        raise ReleaseError(f"{exc}: wait for the other run to finish (a promotion or a candidate build)") from None


# -- a release's artifacts inside the repository ---------------------------------------------------------------
def version_dir(repository: Path, release: Release, model: str) -> Path:
    path = Path(repository) / model / str(release.models[model])
    if not path.is_dir():
        raise ReleaseError(f"release {release.release} needs {model}/{release.models[model]}, which is no longer in "
                           f"{repository}: it was pruned (only the last releases are kept); rebuild it")
    return path


def trained_from_release(repository: Path, release: Release, **overrides) -> TrainedArtifacts:
    """The artifacts ``release`` serves, read from its repository versions; ``overrides`` replace some
    (a fine-tune passes its new ``query_tower`` and ``dlrm``)."""
    faiss_dir = version_dir(repository, release, "faiss_retrieval")
    params = release.parameters
    fields = dict(
        transforms_dir=version_dir(repository, release, "nvt_user_transform") / "transforms",
        query_tower=version_dir(repository, release, "query_tower") / "model.onnx",
        dlrm=version_dir(repository, release, "dlrm_ranking") / "model.onnx",
        faiss_index=faiss_dir / "index.faiss",
        faiss_ids=(faiss_dir / "index_ids.npy") if (faiss_dir / "index_ids.npy").exists() else None,
        multimodal=version_dir(repository, release, "multimodal_embedding_lookup") / "multimodal.npy",
        items=version_dir(repository, release, "feast_item_lookup") / "items.parquet",
        query_tower_input_map=json.loads(params["query_tower"].get("INPUT_MAP") or "{}"),
        dlrm_input_map=json.loads(params["dlrm_ranking"].get("INPUT_MAP") or "{}"),
        image_dims=int(params["multimodal_embedding_lookup"]["IMAGE_DIMS"]),
        prior_weight=float(params["softmax_sampling"].get("PRIOR_WEIGHT") or 0.0),
        prior_coefficients=prior.parse_coefficients(params["softmax_sampling"].get("PRIOR_COEFFICIENTS")),
    )
    fields.update(overrides)
    return TrainedArtifacts(**fields)


def defaults_from_release(repository: Path, release: Release) -> ServingDefaults:
    """The serving defaults ``release`` was built with (its parameters and instance counts), so a rebuild that
    only swaps artifacts leaves every other model's version as it is."""
    p = release.parameters
    cp, fr, fs = p["context_preprocessor"], p["faiss_retrieval"], p["filter_seen_items"]
    counts = {}
    for model in MODELS:
        config = parse_config(Path(repository) / model / "config.pbtxt")
        counts[model] = int(config.instance_group[0].count) if config.instance_group else 1
    instances = max(set(counts.values()), key=list(counts.values()).count)
    return ServingDefaults(
        retrieval_topk=int(fr["RETRIEVAL_TOPK"]), retrieval_margin=int(fr["RETRIEVAL_MARGIN"]),
        ranking_topk=int(cp["RANKING_TOPK"]), default_top_k=int(cp["DEFAULT_TOP_K"]),
        diversity_mode=cp["DIVERSITY_MODE"] == "true",
        diversity_temperature=float(p["softmax_sampling"]["DIVERSITY_TEMPERATURE"]),
        sampling_seed=int(p["softmax_sampling"]["SAMPLING_SEED"]),
        bloom_capacity=int(fs["BLOOM_CAPACITY"]), bloom_error_rate=float(fs["BLOOM_ERROR_RATE"]),
        bloom_ttl_s=int(fs["BLOOM_TTL_S"]), bloom_mode=fs["BLOOM_MODE"],
        context_candidates=int(fs.get("CONTEXT_CANDIDATES") or 0),
        item_cache_refresh_s=float(p["feast_item_lookup"]["ITEM_CACHE_REFRESH_S"]),
        feast_read=p["feast_user_lookup"]["FEAST_READ"], instances=instances,
        instance_counts={m: c for m, c in counts.items() if c != instances}, layout=release.layout,
        executor_instances=release.executor_instances,
    )


def start_date_of(release: Release) -> str:
    return release.parameters["faiss_retrieval"]["START_DATE"]


def canonical_ensemble(repository: Path) -> str:
    """The ensemble config as the build wrote it (model names, no aliases); from the templates if the live one
    is already a served (aliased) config."""
    path = Path(repository) / ENSEMBLE / "config.pbtxt"
    if path.exists():
        text = path.read_text()
        config = parse_config(path)
        if not is_executor(config) and not any(parse_alias(s.model_name) for s in config.ensemble_scheduling.step):
            return text
    return (TEMPLATES / ENSEMBLE / "config.pbtxt").read_text()


# -- candidates -------------------------------------------------------------------------------------------------
def assemble_candidate(target: Path, previous: Path | None, trained: TrainedArtifacts, defaults: ServingDefaults,
                       start_date: str, release: int, history: Sequence[Release], keep_releases: int = 3,
                       served: Release | None = None, served_ensemble: str = "",
                       expected_changes: Iterable[str] | None = None,
                       pending: Sequence[Release] = ()) -> tuple[Release, str]:
    """Build release ``release`` into ``target`` from the live repository ``previous``, keeping what serves.

    ``target`` == ``previous`` builds in place (the local live repository): the folders of the models the
    candidate does not change are left untouched, so promoting it loads only the changed models' aliases.

    ``history``: the promoted releases, oldest first, the serving one last: unchanged models keep its versions,
    and the versions of the last ``keep_releases - 1`` of them stay (rollback) beside the candidate's. The
    configs still describe ``served`` afterwards (the candidate is not served until promoted). With
    ``expected_changes``, a model outside it that changed fails the build (a fine-tune changes only the towers).
    ``pending``: candidates not promoted yet whose versions must survive this build (:func:`pending_candidates`).
    Returns the candidate manifest and its canonical ensemble config.
    """
    # Candidates not promoted yet keep their versions too (a fine-tune built while a weekly retrain's candidate
    # waits must not prune the retrain's versions); the serving release stays last (unchanged models keep its
    # versions).
    history = list(history)
    pending = [p for p in pending if p.release not in {h.release for h in history}]
    if pending and history:
        history = [*history[:-1], *pending, history[-1]]
    built = build_repository(Path(target), trained, defaults, start_date, release, previous=previous,
                             previous_releases=history, keep_releases=keep_releases + len(pending))
    ensemble_text = (Path(target) / ENSEMBLE / "config.pbtxt").read_text()
    if expected_changes is not None:
        unexpected = sorted(set(built.changed) - set(expected_changes) - {ENSEMBLE})
        if unexpected:
            if served is not None:  # built in place: the configs describe the served release again
                write_served(Path(target), served, served_ensemble or canonical_ensemble(Path(target)))
                restore_release(Path(target), served)
            raise ReleaseError(f"release {release} changes {unexpected} beyond {sorted(expected_changes)}: the "
                               "artifacts it was built from differ from the served release's; rebuild the release "
                               "with the full pipeline instead")
    _drop_stale_aliases(Path(target))
    if served is not None:
        write_served(Path(target), served, served_ensemble or canonical_ensemble(Path(target)))
    return built, ensemble_text


def _drop_stale_aliases(repository: Path) -> None:
    """Remove alias folders whose model version was pruned (their symlink points nowhere)."""
    for path in repository.iterdir():
        parsed = parse_alias(path.name)
        if parsed is not None and not (repository / parsed[0] / str(parsed[1])).is_dir():
            shutil.rmtree(path)


# -- served configs ---------------------------------------------------------------------------------------------
def write_aliases(repository: Path, release: Release) -> list[str]:
    """The alias model of every composing model of ``release`` (created or left as is); returns their names."""
    from google.protobuf import text_format

    repository = Path(repository)
    names = []
    for model in MODELS:
        version = int(release.models[model])
        version_dir(repository, release, model)
        name = alias(model, version)
        folder = repository / name
        folder.mkdir(exist_ok=True)
        link = folder / str(version)
        if link.is_symlink() and not link.exists():
            link.unlink()
        if not link.exists():
            link.symlink_to(Path("..") / model / str(version), target_is_directory=True)
        config = parse_config(repository / model / "config.pbtxt")
        config.name = name
        del config.version_policy.specific.versions[:]
        config.version_policy.specific.versions.append(version)
        config.parameters.clear()
        for key, value in release.parameters.get(model, {}).items():
            config.parameters[key].string_value = value
        text = config_header(repository / model / "config.pbtxt") + text_format.MessageToString(config)
        path = folder / "config.pbtxt"
        if not path.exists() or path.read_text() != text:  # an unchanged file must not look modified to Triton
            path.write_text(text)
        names.append(name)
    return names


def write_served_ensemble(repository: Path, release: Release, ensemble_text: str) -> None:
    """``ensemble_model`` serving ``release`` (version = the release number), in the release's layout: an
    ensemble whose steps run the release's aliases, or the executor (a python model walking that same graph,
    kept in its version folder as ``graph.pbtxt``)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(ensemble_text, model_config_pb2.ModelConfig())
    for step in config.ensemble_scheduling.step:
        model = step.model_name
        if model not in release.models:
            raise ReleaseError(f"release {release.release}: the ensemble names {model!r}, which the manifest lacks")
        step.model_name = alias(model, release.models[model])
        step.model_version = int(release.models[model])
    del config.version_policy.specific.versions[:]
    config.version_policy.specific.versions.append(int(release.release))
    if release.layout == "executor":
        write_executor(repository, config, release.executor_instances)
        return
    folder = Path(repository) / ENSEMBLE / str(release.release)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / GRAPH_FILE).unlink(missing_ok=True)
    (folder / "model.py").unlink(missing_ok=True)
    header = "# Served release %d (written by recsys_assets.release.repository): steps run the release's model versions.\n"
    write_config(config, Path(repository) / ENSEMBLE / "config.pbtxt", header % release.release)


def write_executor(repository: Path, graph, instances: int) -> None:
    """Serve ``graph`` (an ensemble config: its steps, inputs, outputs and version) in the executor layout:
    ``ensemble_model/<version>/`` gets the graph and the executor's shim, ``ensemble_model/config.pbtxt`` a
    python model with the graph's inputs, outputs and version. Also turns a plain build into that layout."""
    from tritonclient.grpc import model_config_pb2

    version = served_versions(graph, Path(repository) / ENSEMBLE)[-1]
    folder = Path(repository) / ENSEMBLE / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    write_config(graph, folder / GRAPH_FILE, f"# The graph the executor of version {version} walks.\n")
    shutil.copy2(EXECUTOR_SHIM, folder / "model.py")
    config = model_config_pb2.ModelConfig(name=ENSEMBLE, backend="python", max_batch_size=0)
    config.input.extend(graph.input)
    config.output.extend(graph.output)
    config.version_policy.CopyFrom(graph.version_policy)
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=int(instances))
    header = (f"# Version {version} in the executor layout (written by recsys_assets.release.repository): one python "
              f"model\n# running the graph of {version}/{GRAPH_FILE} in one process (recsys_assets.serving.graph).\n")
    write_config(config, Path(repository) / ENSEMBLE / "config.pbtxt", header)


def convert_layout(repository: Path, layout: str, executor_instances: int = ServingDefaults.executor_instances) -> None:
    """Serve the graph ``repository`` serves now (a plain build or a served release, either layout) in ``layout``,
    in place: the layout twin the serving benchmark compares (on a copy)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    graph = served_graph(repository)
    if layout == "executor":
        write_executor(repository, graph, executor_instances)
        return
    version = served_versions(graph, Path(repository) / ENSEMBLE)[-1]
    for name in ("model.py", GRAPH_FILE):
        (Path(repository) / ENSEMBLE / str(version) / name).unlink(missing_ok=True)
    write_config(graph, Path(repository) / ENSEMBLE / "config.pbtxt",
                 f"# Version {version} in the ensemble layout (written by recsys_assets.release.repository).\n")


def write_served(repository: Path, release: Release, ensemble_text: str) -> list[str]:
    """The release's aliases and its served ``ensemble_model``; returns the aliases' names. In the executor
    layout Triton loads none of them: the executor builds their stages from the alias folders itself."""
    names = write_aliases(repository, release)
    write_served_ensemble(repository, release, ensemble_text)
    return names


def served_release_of(repository: Path) -> int | None:
    """The release the ensemble config on disk serves (None when it is a plain build, not a served config)."""
    config = parse_config(Path(repository) / ENSEMBLE / "config.pbtxt")
    if not is_executor(config) and not any(parse_alias(s.model_name) for s in config.ensemble_scheduling.step):
        return None
    return int(config.version_policy.specific.versions[0])
