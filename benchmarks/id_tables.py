"""What an optimizer step costs as the id tables grow: the user-id table of the seed's 300k users against the
demo's 4k, with the DLRM's settings (Adam, L2 on the whole id table), the Two-Tower's (Adam), and the
alternatives that touch only the looked-up rows (merlin-models' LazyAdam, Adagrad).

    .venv-merlin/bin/python benchmarks/id_tables.py [--rows 4000 300000] [--steps 200]

A Keras embedding with a table-wide L2 regularizer has a dense gradient (every row decays every step), and Adam's
moment updates run over the whole variable even for a sparse gradient: both make a step cost O(rows x dim) instead
of O(batch x dim). The DLRM trains with both (``DlrmParams.id_l2``, Adam); the Two-Tower with Adam. Prints the
median step time per table size and variant, and the ratio to the smallest table.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


VARIANTS = ("adam + table L2 (DLRM)", "adam (Two-Tower)", "lazyadam + table L2", "lazyadam (merlin's)", "adagrad",
            "legacy-adam + table L2", "adam-xla + table L2")


def step_seconds(rows: int, variant: str, steps: int, batch: int = 1024, dim: int = 64) -> float:
    import numpy as np
    import tensorflow as tf

    tf.random.set_seed(0)
    reg = tf.keras.regularizers.L2(1e-4) if "table L2" in variant else None
    ids = tf.keras.Input(shape=(1,), dtype=tf.int64)
    emb = tf.keras.layers.Embedding(rows, dim, embeddings_regularizer=reg)(ids)
    out = tf.keras.layers.Dense(1)(tf.keras.layers.Flatten()(emb))
    model = tf.keras.Model(ids, out)
    kind = variant.split(" ")[0]
    if kind == "lazyadam":
        import merlin.models.tf as mm

        optimizer = mm.LazyAdam(1e-3)
    elif kind == "adam-xla":
        optimizer = tf.keras.optimizers.Adam(1e-3, jit_compile=True)
    elif kind == "legacy-adam":  # TF's fused ResourceApplyAdam kernel
        optimizer = tf.keras.optimizers.legacy.Adam(1e-3)
    else:
        optimizer = tf.keras.optimizers.Adagrad(1e-2) if kind == "adagrad" else tf.keras.optimizers.Adam(1e-3)
    loss_fn = tf.keras.losses.BinaryCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)) + tf.add_n(model.losses or [tf.constant(0.0)])
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(0)
    times = []
    for i in range(steps + 10):
        x = tf.constant(rng.integers(0, rows, (batch, 1)), tf.int64)
        y = tf.constant(rng.integers(0, 2, (batch, 1)), tf.float32)
        t0 = time.perf_counter()
        step(x, y).numpy()
        if i >= 10:  # after tracing and warm-up
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[4_000, 300_000])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = parser.parse_args()
    variants = args.variants
    print(f"load average {os.getloadavg()[0]:.2f}; batch 1024, dim 64, median of {args.steps} steps")
    print(f"| variant | {' | '.join(f'{r:,} rows' for r in args.rows)} | ratio |")
    print(f"|---|{'---|' * len(args.rows)}---|")
    for variant in variants:
        ms = [1000 * step_seconds(r, variant, args.steps) for r in args.rows]
        print(f"| {variant} | {' | '.join(f'{m:.2f} ms' for m in ms)} | {ms[-1] / ms[0]:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
