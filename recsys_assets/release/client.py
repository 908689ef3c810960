"""Ask the running ensemble for recommendations, over HTTP or gRPC, and print them with product names.

    python -m recsys_assets.release.client --user 12 --device 1 [--timestamp 1767600000] [--k 10] [--diversity]
        [--url 127.0.0.1:8000 | --grpc [--url 127.0.0.1:8001]]

The server address defaults to ``RECSYS_TRITON_URL`` (``host:port`` or ``http://host:port``), else the local
server's fixed ports (``RECSYS_TRITON_HTTP_PORT`` / ``RECSYS_TRITON_GRPC_PORT``, 8000 / 8001). A rejected request
prints Triton's message (what was wrong) and exits with status 2; an unreachable server exits with status 3.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

from recsys_assets.lib.ensemble_request import ENSEMBLE, infer_inputs, requested_outputs


class RecommendationClient:
    """``recommend(user_id, ...) -> (ids, scores)`` against the ensemble (``protocol``: ``http`` or ``grpc``)."""

    def __init__(self, url: str, protocol: str = "http", timeout_s: float = 30.0) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol {protocol!r}: expected http or grpc")
        self.protocol = protocol
        url = url.split("://", 1)[-1].rstrip("/")
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(url)
        self._module = module
        self.url = url

    def inputs(self, user_id: int, device_type: int | None = None, timestamp: int | None = None,
               top_k: int | None = None, diversity: bool | None = None) -> list:
        return infer_inputs(self._module, user_id, device_type, timestamp, top_k, diversity)

    def recommend(self, user_id: int, device_type: int | None = None, timestamp: int | None = None,
                  top_k: int | None = None, diversity: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        outputs = requested_outputs(self._module)
        result = self._client.infer(ENSEMBLE, self.inputs(user_id, device_type, timestamp, top_k, diversity),
                                    outputs=outputs)
        return result.as_numpy("ordered_ids"), result.as_numpy("ordered_scores")

    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_model_ready(ENSEMBLE))
        except Exception:
            return False

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "RecommendationClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_url(protocol: str, environ=os.environ) -> str:
    if protocol == "http" and environ.get("RECSYS_TRITON_URL"):
        return environ["RECSYS_TRITON_URL"]
    port = environ.get("RECSYS_TRITON_HTTP_PORT" if protocol == "http" else "RECSYS_TRITON_GRPC_PORT")
    return f"127.0.0.1:{port or (8000 if protocol == 'http' else 8001)}"


def format_table(ids: Sequence[int], scores: Sequence[float]) -> str:
    """Rank, id, score, category, style and name of each recommendation (names from the packaged catalogue)."""
    from recsys_assets.lib.catalogue import load_catalogue

    catalogue = load_catalogue().set_index("item_id")
    lines = [f"{'#':>3}  {'item':>5}  {'score':>6}  {'category':<16} {'style':<18} name"]
    for rank, (item, score) in enumerate(zip(ids, scores), 1):
        row = catalogue.loc[int(item)] if int(item) in catalogue.index else None
        category = row["category_l1"] if row is not None else "?"
        style = row["category_l2"] if row is not None else "?"
        name = row["name"] if row is not None else "(not in the catalogue)"
        lines.append(f"{rank:>3}  {int(item):>5}  {float(score):6.3f}  {category:<16.16} {style:<18.18} {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_assets.release.client",
                                     description="Recommendations from the running Triton ensemble.")
    parser.add_argument("--user", type=int, required=True, help="user id (-1: anonymous)")
    parser.add_argument("--device", type=int, default=None, help="0 desktop, 1 mobile, 2 tablet (default: unknown)")
    parser.add_argument("--timestamp", type=int, default=None, help="Unix seconds (default: the server's clock)")
    parser.add_argument("--k", type=int, default=None, help="how many (default: the server's, 10)")
    parser.add_argument("--diversity", action="store_true", help="score-weighted sampling instead of the top K")
    parser.add_argument("--grpc", action="store_true", help="use gRPC (default HTTP)")
    parser.add_argument("--url", default=None, help="host:port of the server")
    args = parser.parse_args(argv)
    protocol = "grpc" if args.grpc else "http"
    url = args.url or default_url(protocol)
    from tritonclient.utils import InferenceServerException

    try:
        with RecommendationClient(url, protocol) as client:
            ids, scores = client.recommend(args.user, args.device, args.timestamp, args.k,
                                           True if args.diversity else None)
    except InferenceServerException as exc:
        message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
        unreachable = "connect" in message.lower() or "unavailable" in message.lower()
        print(f"{'cannot reach' if unreachable else 'rejected by'} the server at {url}: {message}", file=sys.stderr)
        return 3 if unreachable else 2
    except OSError as exc:
        print(f"cannot reach the server at {url} ({protocol}): {exc}; start it with `make serve`", file=sys.stderr)
        return 3
    who = "anonymous user" if args.user == -1 else f"user {args.user}"
    device = {None: "unknown device", -1: "unknown device", 0: "desktop", 1: "mobile", 2: "tablet"}.get(
        args.device, f"device {args.device}")
    mode = "diversity sampling" if args.diversity else "top K"
    print(f"{len(ids)} recommendations for {who} on {device} ({mode}, {protocol}://{url}):")
    print(format_table(ids, scores))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
