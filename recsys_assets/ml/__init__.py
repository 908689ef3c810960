"""What runs in the merlin environment (NVTabular, merlin-models, TensorFlow): each ``recsys_assets.ml.*`` entry
point is one Dagster Pipes step (``defs.resources.MerlinRunner``)."""

import sys


def without_tensorflow() -> None:
    """Keep TensorFlow out of a step that only runs NVTabular (called in its ``__main__`` block, before ``main``).

    ``import nvtabular`` imports ``merlin.dtypes``, which imports TensorFlow whenever it is installed, only to map
    its dtypes: 4.7 s of every such step's start on a 2-core machine, 1.5 s without it. With the name blocked,
    that optional mapping is skipped. Never in a process that trains or exports (they need TensorFlow).
    """
    if "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None
