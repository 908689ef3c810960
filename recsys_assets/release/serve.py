"""Run Triton with the latest model repository on fixed local ports (what ``make serve`` calls).

    python -m recsys_assets.release.serve [run]     start (or take over the running one), print the addresses,
                                                    serve until Ctrl-C / SIGTERM, then stop cleanly
    python -m recsys_assets.release.serve start     start in the background and return (hot-swaps a running one)
    python -m recsys_assets.release.serve stop      stop the background server of this artifact root
    python -m recsys_assets.release.serve status    print whether it runs, and where

The repository is ``<RECSYS_ARTIFACTS>/serving/triton_repository`` (materialize ``triton_model_repository``).
Ports: ``RECSYS_TRITON_HTTP_PORT`` / ``_GRPC_PORT`` / ``_METRICS_PORT`` (8000 / 8001 / 8002), on 127.0.0.1.
Valkey: ``RECSYS_VALKEY_URL``, else the embedded one of the artifact root (started if needed; ``run`` stops it
again on exit if it started it). The server records itself in ``<root>/serving/triton_server.json``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from recsys_assets.release import deploy


def _root(arg: str | None) -> Path:
    root = arg or os.environ.get("RECSYS_ARTIFACTS") or "artifacts"
    if "://" in root:
        raise SystemExit(f"the local server needs a local artifact root, got {root!r} (on Kubernetes the "
                         "triton_deployment asset deploys the Helm release)")
    return Path(root).resolve()


def _print_addresses(server, action: str, release: str) -> None:
    print(f"Triton {action} ({release}):")
    print(f"  HTTP     http://{server.http_url}   (ensemble: /v2/models/ensemble_model)")
    print(f"  gRPC     {server.grpc_url}")
    print(f"  metrics  http://{server.host}:{server.metrics_port}/metrics")
    print(f"  log      {server.log_path}")
    print("  try      python -m recsys_assets.release.client --user 12 --device 1", flush=True)


def _release_label(root: Path) -> str:
    from recsys_assets.lib import paths

    folder = root / paths.TRITON_RELEASES
    found = sorted(folder.glob("*.json")) if folder.exists() else []
    return f"release {int(found[-1].stem)}" if found else "no release manifest"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recsys_assets.release.serve", description=__doc__.split("\n")[0])
    parser.add_argument("action", nargs="?", default="run", choices=["run", "start", "stop", "status"])
    parser.add_argument("--artifacts", default=None, help="artifact root (default: RECSYS_ARTIFACTS or ./artifacts)")
    args = parser.parse_args(argv)
    root = _root(args.artifacts)
    if args.action == "stop":
        stopped = deploy.stop_local(root)
        print("Triton stopped" if stopped else f"no Triton running for {root}")
        return 0
    if args.action == "status":
        server = deploy.running_server(root)
        if server is None:
            print(f"no Triton running for {root}")
            return 1
        _print_addresses(server, f"running, pid {server.pid}", _release_label(root))
        return 0

    from recsys_assets.lib import paths

    repository = root / paths.TRITON_REPOSITORY
    if not (repository / "ensemble_model" / "config.pbtxt").exists():
        print(f"no model repository at {repository}: materialize triton_model_repository first (make demo)",
              file=sys.stderr)
        return 1
    environ, valkey = deploy.local_environ(root)
    server, action, seconds = deploy.deploy_local(root, repository, environ, deploy.Ports.from_environ(os.environ))
    _print_addresses(server, f"{action} in {seconds:.1f} s", _release_label(root))
    if args.action == "start":
        print("  stop     python -m recsys_assets.release.serve stop")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("Serving; Ctrl-C stops.", flush=True)
    try:
        while not stop.wait(1.0):
            if not server.is_live():
                print(f"Triton stopped answering; see {server.log_path}", file=sys.stderr)
                return 1
    finally:
        print("stopping Triton ...", flush=True)
        server.stop()
        if valkey is not None and valkey.owned:
            valkey.stop()
    print("stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
