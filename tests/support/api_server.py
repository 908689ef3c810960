"""The API app under a real uvicorn server in a thread of the test process (what the browser and HTTP tests talk
to: the guard, the limits and the routes exactly as ``python -m recsys_assets.api`` serves them)."""

from __future__ import annotations

import threading
import time

from recsys_assets.api.config import ApiConfig
from recsys_assets.lib.valkey_server import free_port


class ApiServer:
    """The API app under uvicorn in a thread of the test process, on a free port of 127.0.0.1."""

    def __init__(self, config: ApiConfig) -> None:
        import uvicorn

        from recsys_assets.api.app import create_app, uvicorn_options

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=self.port,
                                                    log_level="warning", **uvicorn_options(config)))
        self.thread = threading.Thread(target=self.server.run, name=f"api-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the API server stopped while starting (see the log above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start within {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
