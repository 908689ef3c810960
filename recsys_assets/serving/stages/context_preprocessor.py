"""``context_preprocessor``: checks the request and fills what the client left out.

Inputs (each shape [1]): ``user_id`` INT64 (required, checked here; -1 = anonymous, the only negative id),
``device_type`` INT64 (0 desktop, 1 mobile, 2 tablet, -1 unknown; missing -> -1), ``timestamp`` INT64 Unix
seconds (missing -> the server's clock), ``top_k`` INT64 (missing -> ``DEFAULT_TOP_K``; 1..``RANKING_TOPK``),
``diversity`` BOOL (missing -> ``DIVERSITY_MODE``). Outputs: the same five, checked, as ``request_*``.
Anything out of range is a :class:`BadRequest` that says what was wrong and what is accepted.
"""

from __future__ import annotations

import time

import numpy as np

from recsys_assets.lib.feature_spec import DEVICE_NAMES
from recsys_assets.serving.common import scalar
from recsys_assets.serving.executor import BadRequest, Stage, StageConfigError, StageContext

DEVICE_TYPES = tuple(DEVICE_NAMES)


class ContextPreprocessor(Stage):
    inputs = ()
    # user_id is required, but declared optional: a request without it must reach this stage to be told so
    # (Triton's ensemble scheduler answers a missing input with an opaque "unexpected deadlock").
    optional_inputs = ("user_id", "device_type", "timestamp", "top_k", "diversity")
    outputs = ("request_user_id", "request_device_type", "request_timestamp", "request_top_k", "request_diversity")

    clock = staticmethod(time.time)

    def __init__(self, ctx: StageContext) -> None:
        super().__init__(ctx)
        self.max_top_k = ctx.param_int("RANKING_TOPK", 100)
        self.default_top_k = ctx.param_int("DEFAULT_TOP_K", 10)
        self.diversity_mode = ctx.param_bool("DIVERSITY_MODE", False)
        if not 1 <= self.default_top_k <= self.max_top_k:
            raise StageConfigError(f"DEFAULT_TOP_K={self.default_top_k} must be in 1..RANKING_TOPK={self.max_top_k}")

    def __call__(self, user_id=None, device_type=None, timestamp=None, top_k=None, diversity=None):
        if user_id is None:
            raise BadRequest("user_id is required: a user id >= 0, or -1 for an anonymous visitor")
        uid = int(scalar(user_id, "user_id"))
        if uid < -1:
            raise BadRequest(f"user_id {uid} is negative: -1 (anonymous) is the only negative id accepted")
        device = -1 if device_type is None else int(scalar(device_type, "device_type"))
        if device not in DEVICE_TYPES:
            raise BadRequest(f"unknown device_type {device}: expected 0 (desktop), 1 (mobile), 2 (tablet) or "
                             "-1 (unknown)")
        ts = int(self.clock()) if timestamp is None else int(scalar(timestamp, "timestamp"))
        if ts < 0:
            raise BadRequest(f"timestamp {ts} is negative: expected Unix seconds (UTC)")
        k = self.default_top_k if top_k is None else int(scalar(top_k, "top_k"))
        if not 1 <= k <= self.max_top_k:
            raise BadRequest(f"top_k {k} is out of range: expected 1..{self.max_top_k}")
        diverse = self.diversity_mode if diversity is None else bool(scalar(diversity, "diversity"))
        return {
            "request_user_id": np.array([uid], np.int64),
            "request_device_type": np.array([device], np.int64),
            "request_timestamp": np.array([ts], np.int64),
            "request_top_k": np.array([k], np.int64),
            "request_diversity": np.array([diverse], np.bool_),
        }
