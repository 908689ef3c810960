"""The click path over HTTP, and the time from a click to changed recommendations.

Sets up the tiny serving world in a temporary root (``recsys_assets.release.tiny``: catalogue, 60 users, Feast
apply + materialize into an embedded Valkey on a free port, popularity tables), starts Triton with the tiny
ensemble (``--no-triton`` skips it) and the API as its own process (``python -m recsys_assets.api``, uvicorn, one
worker), then measures from a client on the same machine:

1. ``POST /events`` round trips (``--clicks`` by 100 users new to the online store, random available items,
   after a warm-up), once per durability mode (``fsync``, the default with an append-only file: the response once the
   event is fsynced, WAITAOF; ``async``: once the server has it), with the server's own breakdown (stream, seen
   filter, window, Feast reads, the Feast pushes of top_category and of the interests);
2. click -> changed recommendations (``--trials``): ask for a user's top 10, click the first one, ask again at
   once; the time from the click's response to the new list (which no longer holds the clicked item), and from
   sending the click to the new list.

    .venv/bin/python benchmarks/events.py [--clicks 300] [--trials 40] [--no-triton]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DAY3 = 1767225600 + 3 * 86_400 + 8 * 3600


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def row(name: str, values) -> str:
    return f"{name:<44} {pct(values, 50):8.2f} {pct(values, 95):8.2f} {np.mean(values):8.2f} {len(values):6d}"


@contextlib.contextmanager
def api_process(env: dict, port: int, log: Path):
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "recsys_assets.api", "--port", str(port),
                                 "--log-level", "warning"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=PROJECT_ROOT)
    try:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited ({proc.returncode}); see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the API did not answer within 180 s; see {log}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def click_latencies(base: str, first_user: int, items, n: int, seed: int) -> tuple[list[float], dict[str, list[float]]]:
    """``n`` clicks (after 20 warm-up ones) of 100 users from ``first_user`` on; the same seed gives the same
    click sequence, so two modes over disjoint user ranges do the same work (the same pushes)."""
    import httpx

    rng = np.random.default_rng(seed)
    rtt, parts = [], {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(n + 20):
            user = first_user + int(rng.integers(0, 100))
            body = {"user_id": user, "item_id": int(rng.choice(items)), "device_type": int(rng.integers(0, 3)),
                    "timestamp": DAY3 + i}
            t0 = time.perf_counter()
            response = client.post("/events", json=body)
            took = (time.perf_counter() - t0) * 1e3
            if response.status_code != 201:
                raise RuntimeError(f"click failed: {response.status_code} {response.text}")
            if i >= 20:  # warm-up first
                rtt.append(took)
                for k, v in response.json()["timings_ms"].items():
                    parts.setdefault(k, []).append(v)
    return rtt, parts


def click_to_change(base: str, users, trials: int) -> dict[str, list[float]]:
    import httpx

    out = {"after_response": [], "from_send": [], "recommendation": [], "changed": []}
    with httpx.Client(base_url=base, timeout=30) as client:
        for i in range(trials):
            user = int(users[i % len(users)])
            params = {"user_id": user, "device_type": 1, "timestamp": DAY3 + 7200 + i, "k": 10}
            first = client.get("/recommendations", params=params)
            if first.status_code != 200:
                raise RuntimeError(f"recommendations failed: {first.status_code} {first.text}")
            shown = [x["item_id"] for x in first.json()["items"]]
            t_send = time.perf_counter()
            clicked = client.post("/events", json={"user_id": user, "item_id": shown[0], "device_type": 1,
                                                   "timestamp": DAY3 + 7200 + i})
            t_clicked = time.perf_counter()
            if clicked.status_code != 201:
                raise RuntimeError(f"click failed: {clicked.status_code} {clicked.text}")
            again = client.get("/recommendations", params=params)
            t_done = time.perf_counter()
            new = [x["item_id"] for x in again.json()["items"]]
            out["after_response"].append((t_done - t_clicked) * 1e3)
            out["from_send"].append((t_done - t_send) * 1e3)
            out["recommendation"].append(again.json()["triton_ms"])
            out["changed"].append(float(shown[0] not in new and new != shown))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=300)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--no-triton", action="store_true")
    args = parser.parse_args(argv)

    from recsys_assets.lib import paths
    from recsys_assets.lib.artifacts import ArtifactStore
    from recsys_assets.release.triton_server import TritonServer, free_port
    from recsys_assets.lib.valkey_server import EmbeddedValkey
    from recsys_assets.release.repository import ServingDefaults, build_repository
    from recsys_assets.release.tiny import build_tiny_artifacts, publish_online_state, serving_environ

    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp, \
            EmbeddedValkey(Path(tmp) / "valkey", port=free_port()) as valkey:
        root = Path(tmp) / "root"
        t0 = time.perf_counter()
        tiny = build_tiny_artifacts(Path(tmp) / "tiny")
        url = f"redis://127.0.0.1:{valkey.port}"
        environ = serving_environ(url, root)
        published = publish_online_state(tiny, environ)
        ArtifactStore(root).write_parquet(paths.ITEMS, tiny.items)
        print(f"set-up (tiny artifacts, feast apply + materialize): {time.perf_counter() - t0:.1f} s", flush=True)
        users = np.array(sorted(published["top_category"]))
        items = tiny.items.loc[tiny.items["available_from_day"] == 0, "item_id"].to_numpy()

        triton = None
        triton_port = free_port()
        if not args.no_triton:
            t0 = time.perf_counter()
            build_repository(Path(tmp) / "repository", tiny.trained, ServingDefaults(), tiny.start_date, release=1)
            triton = TritonServer(Path(tmp) / "repository", http_port=triton_port, env=environ)
            triton.start(models=["ensemble_model"], timeout=300)
            print(f"Triton with the tiny ensemble up in {time.perf_counter() - t0:.1f} s", flush=True)
        env = {**os.environ, **environ, "RECSYS_VALKEY_URL": url, "RECSYS_TRITON_URL": f"127.0.0.1:{triton_port}",
               "PYTHONPATH": str(PROJECT_ROOT)}
        try:
            print(f"\n{'ms':<44} {'p50':>8} {'p95':>8} {'mean':>8} {'n':>6}")
            for n, mode in enumerate(("fsync", "async")):
                with api_process({**env, "RECSYS_EVENTS_DURABILITY": mode}, free_port(), Path(tmp) / "api.log") as base:
                    rtt, parts = click_latencies(base, 10**6 * (n + 1), items, args.clicks, seed=11)
                    print(row(f"POST /events round trip ({mode})", rtt))
                    for name in ("stream", "seen_filter", "window", "feast_read", "feast_push",
                                 "feast_push_interests", "total"):
                        if name in parts:
                            print(row(f"  server: {name}", parts[name]))
                    print(f"  clicks that pushed a new top_category: {len(parts.get('feast_push', []))}/{len(rtt)}, "
                          f"new interests: {len(parts.get('feast_push_interests', []))}/{len(rtt)}")
                    if triton is not None and mode == "fsync":
                        change = click_to_change(base, users, args.trials)
            if triton is not None:
                print(row("click response -> changed recommendations", change["after_response"]))
                print(row("click sent -> changed recommendations", change["from_send"]))
                print(row("  of which GET /recommendations (Triton)", change["recommendation"]))
                print(f"lists changed (clicked item gone): {int(sum(change['changed']))}/{len(change['changed'])}")
        finally:
            if triton is not None:
                triton.stop()
    print(f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
