"""The embedding stage's resource: where CLIP weights come from, whether the random fallback is allowed, device.

| variable                       | default | meaning                                                        |
|--------------------------------|---------|----------------------------------------------------------------|
| RECSYS_CLIP_WEIGHTS            | (unset) | a local open_clip checkpoint file or model folder (offline)    |
| RECSYS_CLIP_OFFLINE_FALLBACK   | 0       | 1: without pretrained weights, use a small random open_clip    |
|                                |         | encoder (reported in metadata) instead of failing              |
| RECSYS_EMBEDDING_DEVICE        | auto    | ``auto`` (GPU when torch sees one), ``cpu`` or ``cuda``        |
| RECSYS_EMBEDDING_CACHE         | (unset) | a folder (or s3:// prefix) for the encoders' content-hash      |
|                                |         | caches, shared by every artifact root that names it (unset:    |
|                                |         | ``<artifacts>/embeddings/cache/``)                             |

Read by :func:`build_resources` when the code location loads, never at import time.
"""

import os
from typing import Mapping, Optional

import dagster as dg

from recsys_assets.lib.embeddings import ENV_CLIP_OFFLINE_FALLBACK, ENV_CLIP_WEIGHTS
from recsys_assets.lib.settings import Settings, SettingsError

ENV_DEVICE = "RECSYS_EMBEDDING_DEVICE"
ENV_CACHE = "RECSYS_EMBEDDING_CACHE"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


class EmbeddingSettings(dg.ConfigurableResource):
    """Operator-level choices of the embedding assets (hyperparameters stay in each asset's config)."""

    clip_weights_path: str = ""
    """A local open_clip checkpoint (file) or model folder; wins over the pretrained tag of the asset config."""
    clip_offline_fallback: bool = False
    """Allow a randomly initialised encoder when pretrained CLIP weights cannot be obtained (reported, never silent)."""
    device: str = "auto"
    cache: str = ""
    """Where the encoders' content-hash caches live when several artifact roots share them (a folder or s3://
    prefix: the demo, a shop's own data and the test suite's many roots encode the same catalogue once); empty: in
    the artifact root, ``embeddings/cache/``."""
    progress: bool = True
    """Show tqdm progress bars while encoding (they go to the run's captured stderr)."""


def parse_flag(name: str, raw: Optional[str]) -> bool:
    value = (raw or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: expected 1/true/yes/on or 0/false/no/off")


def build_resources(settings: Settings, environ: Optional[Mapping[str, str]] = None) -> dict:
    env = os.environ if environ is None else environ
    return {
        "embedding_settings": EmbeddingSettings(
            clip_weights_path=env.get(ENV_CLIP_WEIGHTS, ""),
            clip_offline_fallback=parse_flag(ENV_CLIP_OFFLINE_FALLBACK, env.get(ENV_CLIP_OFFLINE_FALLBACK)),
            device=env.get(ENV_DEVICE, "auto") or "auto",
            cache=env.get(ENV_CACHE, ""),
        )
    }
