"""The weekly retrain's sliding window, and which NVTabular fit (vocabulary) each transformed day was made with.

A *fit* is identified by the digest of its compiled serving transforms (``transforms/serving``): the same value a
release manifest records as ``inputs["transforms_dir"]``, so a release and a transformed day can be compared.

The weekly retrain (``full_retrain_job``) refits the workflows on a window of recent days, which changes the
vocabularies: users and items first seen since the previous fit get their own rows. It never rewrites the daily
``transformed_interactions`` partitions (their train days would change meaning); its own transformed days live
under ``transforms/retrain/``, described by :class:`RetrainWindow` (``transforms/retrain/window.json``).

Each daily transformed day records the fit it was made with (``paths.transformed_vocabulary``). A fine-tune
reads a day from wherever it exists in its parent release's vocabulary (:func:`day_source`), and otherwise has it
transformed from the masked table with the parent's own workflows, so a fine-tune never mixes vocabularies with
its parent, whichever release is serving.

Pure: no Dagster, no merlin imports.
"""

from __future__ import annotations

import dataclasses
import json

from recsys_assets.lib import paths

DEFAULT_TRAIN_DAYS = 9
DEFAULT_VALIDATION_DAYS = 3


class WindowError(ValueError):
    """The window cannot be formed from the days that exist; the message says which are missing."""


@dataclasses.dataclass
class RetrainWindow:
    newest_day: int
    train_days: list
    validation_days: list
    mean_age: float
    masked: dict = dataclasses.field(default_factory=dict)        # str(day) -> masked parquet the fit/transform read
    transforms_digest: str = ""                                   # the refit's compiled transforms (after the fit)

    @property
    def days(self) -> list:
        return [*self.train_days, *self.validation_days]

    def masked_path(self, day: int) -> str:
        return self.masked[str(int(day))]

    @staticmethod
    def transformed_path(day: int) -> str:
        return paths.retrain_transformed(day)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RetrainWindow":
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def window_days(available, newest_day: int = -1, train_days: int = DEFAULT_TRAIN_DAYS,
                validation_days: int = DEFAULT_VALIDATION_DAYS) -> tuple[list, list]:
    """``(train days, validation days)``: the ``validation_days`` newest days up to ``newest_day`` (-1: the newest
    available) validate, the ``train_days`` before them train. Every one of them must be available."""
    available = sorted(set(int(d) for d in available))
    if train_days < 1 or validation_days < 1:
        raise WindowError(f"train_days={train_days}, validation_days={validation_days}: both must be at least 1")
    if not available:
        raise WindowError("no day with masked interactions exists: materialize masked_interactions first")
    newest = available[-1] if newest_day < 0 else int(newest_day)
    first = newest - validation_days - train_days + 1
    if first < 0:
        raise WindowError(f"a window of {train_days} train + {validation_days} validation days ending at day "
                          f"{newest:02d} would start before day 00")
    days = list(range(first, newest + 1))
    missing = [d for d in days if d not in available]
    if missing:
        raise WindowError(f"the window days {days[0]:02d}-{days[-1]:02d} need masked_interactions of days "
                          f"{', '.join(f'{d:02d}' for d in missing)}, which are missing: materialize them")
    return days[:train_days], days[train_days:]


def read_window(store) -> RetrainWindow:
    if not store.exists(paths.RETRAIN_WINDOW):
        raise WindowError(f"no retrain window ({store.uri(paths.RETRAIN_WINDOW)}): materialize retrain_window first")
    return RetrainWindow.from_json(store.read_bytes(paths.RETRAIN_WINDOW).decode())


def transforms_digest(store) -> str:
    """The digest of the current compiled transforms (``""`` when there are none)."""
    if not store.exists(paths.SERVING_TRANSFORMS):
        return ""
    from recsys_assets.lib.digests import path_sha256

    return path_sha256(store.local_path(paths.SERVING_TRANSFORMS))


def record_day_vocabulary(store, day: int, digest: str) -> None:
    store.write_bytes(paths.transformed_vocabulary(day), json.dumps({"transforms": digest}).encode())


def day_vocabulary(store, day: int) -> str:
    """The fit ``transformed_interactions(day)`` was made with: its record, or, for a day transformed before
    records existed, the current fit (a refit records every unrecorded day first, :func:`record_unrecorded`)."""
    rel = paths.transformed_vocabulary(day)
    if store.exists(rel):
        return json.loads(store.read_bytes(rel)).get("transforms", "")
    return transforms_digest(store)


def record_unrecorded(store, digest: str, days=range(0, 1000)) -> list:
    """Before a refit replaces the current fit: every transformed day without a record was made with ``digest``."""
    done = []
    for d in days:
        if store.exists(f"{paths.transformed_interactions(d)}/schema.pbtxt") and \
                not store.exists(paths.transformed_vocabulary(d)):
            record_day_vocabulary(store, d, digest)
            done.append(d)
    return done


def day_source(store, day: int, vocabulary: str) -> dict:
    """Where ``day`` can be read in the vocabulary ``vocabulary``: ``{"transformed": rel}`` when a transformed
    copy of it exists in that vocabulary (the daily partition, or the retrain window's copy), else
    ``{"masked": rel}`` (to be transformed with that vocabulary's workflows)."""
    daily = paths.transformed_interactions(day)
    if store.exists(f"{daily}/schema.pbtxt") and day_vocabulary(store, day) == vocabulary:
        return {"transformed": daily}
    if store.exists(paths.RETRAIN_WINDOW):
        window = read_window(store)
        copy = window.transformed_path(day)
        if window.transforms_digest == vocabulary and day in window.days and store.exists(f"{copy}/schema.pbtxt"):
            return {"transformed": copy}
    return {"masked": paths.masked_interactions(day)}


def current_fit(store) -> str:
    """The digest of the compiled transforms if they were compiled from the current workflows (not older than
    them), else ``""``: what a day transformed now with ``transforms/workflows/full`` is recorded as."""
    meta = f"{paths.NVT_WORKFLOWS}/meta.json"
    compiled = f"{paths.SERVING_TRANSFORMS}/transforms.json"
    if not (store.exists(meta) and store.exists(compiled)):
        return ""
    if not store.is_s3 and store.local_path(compiled).stat().st_mtime < store.local_path(meta).stat().st_mtime:
        return ""
    return transforms_digest(store)


def parent_workflows(store, lineage: dict, vocabulary: str) -> str | None:
    """The saved workflows (relative folder with ``full/``, ``item/``, ...) that made ``vocabulary``: the
    release's own snapshot (a retrained release keeps one), the current workflows when they are that fit, or the
    archive a refit left; None when none of them is."""
    own = lineage.get("workflows")
    if own and store.exists(f"{own}/full/workflow.pkl"):
        return own
    if vocabulary and current_fit(store) == vocabulary:
        return paths.NVT_WORKFLOWS
    if vocabulary:
        archived = paths.workflows_archive(vocabulary)
        if store.exists(f"{archived}/full/workflow.pkl"):
            return archived
    return None
