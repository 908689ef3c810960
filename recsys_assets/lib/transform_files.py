"""The files of compiled transforms: ``transforms.json`` and the vocabularies beside it (see
:mod:`recsys_assets.serving.transforms` for what they mean and how they are applied).

Here, below every layer, because the pipeline reads the vocabularies too (which users a release knows) without
importing the serving code. Only numpy and the standard library (Python 3.10, numpy < 2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

FORMAT = "recsys-compiled-transforms"
VERSION = 1
DESCRIPTION_FILE = "transforms.json"
VOCAB_DIR = "vocab"


def vocab_files(name: str) -> tuple[str, str]:
    return f"{VOCAB_DIR}/{name}.values.npy", f"{VOCAB_DIR}/{name}.labels.npy"


def write_description(folder, description: dict, vocabularies: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write ``transforms.json`` and one ``values``/``labels`` .npy pair per vocabulary into ``folder``."""
    folder = Path(folder)
    (folder / VOCAB_DIR).mkdir(parents=True, exist_ok=True)
    for name, (values, labels) in vocabularies.items():
        values = np.asarray(values)
        if values.dtype == object:
            values = values.astype(str)
        values_file, labels_file = vocab_files(name)
        np.save(folder / values_file, values, allow_pickle=False)
        np.save(folder / labels_file, np.asarray(labels, dtype=np.int64), allow_pickle=False)
    (folder / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1, sort_keys=False))


def read_description(folder) -> tuple[dict, dict[str, tuple[np.ndarray, np.ndarray]]]:
    folder = Path(folder)
    path = folder / DESCRIPTION_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: materialize the serving_transforms asset first")
    description = json.loads(path.read_text())
    if description.get("format") != FORMAT or description.get("version") != VERSION:
        raise ValueError(f"{path}: format {description.get('format')!r} v{description.get('version')}, expected "
                         f"{FORMAT!r} v{VERSION}: recompile with the serving_transforms asset")
    vocabularies = {}
    for name in description["vocabularies"]:
        values_file, labels_file = vocab_files(name)
        vocabularies[name] = (np.load(folder / values_file, allow_pickle=False),
                              np.load(folder / labels_file, allow_pickle=False))
    return description, vocabularies
