"""Embedding throughput: images/s and texts/s of the real architectures, and the whole catalogue's cold time.

Times, on ``--device`` (default cpu), after one warm-up batch:
- open_clip ViT-B-32 image tower, randomly initialised (the same compute as the laion2b weights, which cannot be
  downloaded here) and the offline fallback ``recsys-tiny-clip``: images/s over ``--n`` rendered product images
  (JPEG decode + preprocessing + forward, as the asset runs it);
- all-MiniLM-L6-v2 (the packaged real weights): texts/s over ``--n`` item texts (``name. description``);
- with ``--full``: the whole 2,465-item catalogue through ``encode_cached`` with an empty cache (what a first
  materialization costs; identical renders are encoded once), the same with a warm cache (a re-run), and the
  64-d PCA fit.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embeddings.py [--n 256] [--batch-size 64] [--full] [--device cpu]
"""

from __future__ import annotations

import argparse
import io
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub retries: the random ViT-B-32 is built without weights

from recsys_assets.lib import embeddings as emb  # noqa: E402


def catalogue():
    from recsys_assets.lib.catalogue import render_item_image
    from recsys_assets.lib.generator import World

    items = World(scale="tiny").items  # the catalogue is the same at every scale
    images = []
    for r in items.itertuples():
        buf = io.BytesIO()
        render_item_image(r.category_l1, r.category_l2, r.colour).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
    texts = [emb.item_text(n, d) for n, d in zip(items["name"], items["description"])]
    return images, texts


def rate(encoder, payloads, batch_size: int) -> tuple[float, float]:
    encoder.encode(payloads[:batch_size], batch_size=batch_size, progress=False)  # warm-up
    t0 = time.perf_counter()
    encoder.encode(payloads, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - t0
    return len(payloads) / seconds, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="inputs per throughput measurement")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--full", action="store_true", help="also time the whole catalogue (minutes on 2 CPU cores)")
    args = ap.parse_args()

    import torch

    device = emb.resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    t0 = time.perf_counter()
    images, texts = catalogue()
    print(f"rendered {len(images)} images ({len(set(images))} distinct) in {time.perf_counter() - t0:.1f} s")

    encoders = {}
    for arch in ("ViT-B-32", emb.TINY_CLIP):
        t0 = time.perf_counter()
        encoders[arch] = emb.load_image_encoder(
            emb.ClipSpec(pretrained="", offline_fallback=True, fallback_architecture=arch), device=device)
        print(f"{arch}: built in {time.perf_counter() - t0:.1f} s, {encoders[arch].dim}-d")
    t0 = time.perf_counter()
    encoders["all-MiniLM-L6-v2"] = emb.load_text_encoder(device=device)
    print(f"all-MiniLM-L6-v2: loaded in {time.perf_counter() - t0:.1f} s")

    # distinct inputs, so the timing is the model's and not the cache's
    distinct_images = list(dict.fromkeys(images))[:args.n]
    rows = []
    for name, enc in encoders.items():
        payloads = texts[:args.n] if enc.kind == "text" else distinct_images
        per_s, seconds = rate(enc, payloads, args.batch_size)
        rows.append((name, enc.kind, len(payloads), seconds, per_s))
    print(f"\n{'model':<20} {'kind':<5} {'inputs':>6} {'seconds':>8} {'per second':>11}")
    for name, kind, n, seconds, per_s in rows:
        print(f"{name:<20} {kind:<5} {n:>6} {seconds:>8.2f} {per_s:>11.1f}")

    if not args.full:
        return
    print(f"\nwhole catalogue ({len(images)} items), empty cache, then a re-run on the warm cache:")
    print(f"{'model':<20} {'encoded':>7} {'cold s':>8} {'warm s':>7}")
    for name, enc in encoders.items():
        payloads = texts if enc.kind == "text" else images
        cache = emb.EmbeddingCache(enc.digest, enc.dim)
        t0 = time.perf_counter()
        vectors, stats = emb.encode_cached(enc, payloads, cache, batch_size=args.batch_size, progress=False)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, again = emb.encode_cached(enc, payloads, cache, batch_size=args.batch_size, progress=False)
        warm = time.perf_counter() - t0
        assert again.encoded == 0
        print(f"{name:<20} {stats.encoded:>7} {cold:>8.1f} {warm:>7.2f}")
        t0 = time.perf_counter()
        pca = emb.fit_pca(vectors, emb.PCA_DIMS)
        pca.transform(vectors)
        print(f"{'':<20} PCA {enc.dim}->{emb.PCA_DIMS}: fit + transform {time.perf_counter() - t0:.2f} s, "
              f"explained variance {pca.explained_variance:.3f}")


if __name__ == "__main__":
    main()
