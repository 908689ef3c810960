"""``python -m recsys_assets.api [--host H] [--port P]``: the API under uvicorn, configured from ``RECSYS_*``.

Binds 127.0.0.1:8080 unless ``RECSYS_API_HOST`` / ``RECSYS_API_PORT`` or the flags say otherwise (8000 is
Triton's local HTTP port). Stops on Ctrl-C / SIGTERM (uvicorn finishes in-flight requests first).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from recsys_assets.api.config import ApiConfig, ConfigError

    parser = argparse.ArgumentParser(prog="python -m recsys_assets.api", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=None, help="address to bind (default RECSYS_API_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default RECSYS_API_PORT or 8080)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        config = ApiConfig.from_environ(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    config = dataclasses.replace(config, host=args.host or config.host, port=args.port or config.port)

    import uvicorn

    from recsys_assets.api.app import create_app, uvicorn_options

    print(f"recsys API on http://{config.host}:{config.port} (docs: /docs; Triton {config.triton_url})", flush=True)
    if not config.tokens:
        print("writes are open: no API token (RECSYS_API_TOKENS) on the local profile", flush=True)
    uvicorn.run(create_app(config), host=config.host, port=config.port, log_level=args.log_level,
                **uvicorn_options(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
