"""Dagster check results and metadata: one way to write a check result, a blocking spec, a table or a plot.

Also turns the pure :class:`~recsys_assets.lib.validation.CheckOutcome` into Dagster check results.
"""

from __future__ import annotations

import base64

import dagster as dg

from recsys_assets.lib.validation import CheckOutcome

INGEST_CHECKS = ("schema", "non_empty", "id_ranges", "unique_keys")

# What each asset check verifies, shown in the Dagster UI beside every check of that name (one place: a spec whose
# name is missing here fails when the definitions load). Gates judge by true expected clicks where the data has
# truth (the generator) and by logged recall/AUC otherwise.
CHECK_DESCRIPTIONS = {
    # data
    "schema": "Every expected column is present with its dtype.",
    "non_empty": "The partition or table has rows.",
    "id_ranges": "Ids are dense (0..n-1, the row number) and every referenced id exists.",
    "unique_keys": "The table's key column has no duplicate values.",
    "unique_event_ids": "No event id appears twice.",
    "value_ranges": "Devices, timestamps and ids lie in their valid ranges.",
    "history_complete": "Every earlier day this day's history codes read from is present.",
    "inputs_complete": "Every input the asset reads is present; nothing downstream runs without them.",
    "masking_recorded": "The rows masked to anonymous (training days only) are recorded in the metadata.",
    # transforms
    "train_days_complete": "Every training day's masked interactions are present before the workflows are fit.",
    "null_and_oov_rows": "A masked user lands on the null row and an unseen one on the OOV row, as serving expects.",
    "input_valid": "The masked day to transform has the columns and dtypes the workflows were fit on.",
    "rows_preserved": "The transform keeps every row of the day (none dropped or added).",
    "parity": "The compiled numpy transforms equal NVTabular's output on edge cases and real rows.",
    # embeddings and index
    "row_per_item": "One vector per catalogue item, in item-id order.",
    "finite": "No NaN or infinite value in any vector.",
    "unit_norm": "Every encoder vector has L2 norm 1.",
    "width": "The multimodal table is image PCA + text PCA wide.",
    "rows_present": "Every item of the catalogue, the day's new ones included, has content vectors.",
    "projected_with_saved_pca": "New items are projected with the saved PCA, not a refit one.",
    "ids_are_raw_items": "The FAISS index returns raw item ids, covering every indexed item.",
    "new_items_retrievable": "The day's new items are in the retrieval index and found by their own vectors.",
    "existing_items_kept": "Items indexed before the day are still indexed with unchanged vectors.",
    # feature store
    "top_category_days": "Every day of top_category history the feature views read is present.",
    "covers_all_ids": "The offline tables hold a row for every user and item.",
    "feature_values": "Feature values lie in their valid ranges and vocabularies.",
    "online_coverage": "Every user and item reads back from the online store.",
    "new_users_online": "The day's new users are online with their top_category.",
    "new_items_online": "The day's new items are online with their features.",
    "window_complete": "Every day of the popularity window is present and non-empty.",
    "read_back": "The popularity tables read back from Valkey equal what was written.",
    # models
    "reload_identical": "The saved model reloads and scores identically to the trained one.",
    "onnx_parity": "onnxruntime matches TensorFlow on real rows within the tolerance.",
    "item_vectors_unchanged": "The fine-tune left the item tower, and so the served FAISS index, exactly unchanged.",
    "beats_popularity": "The candidate beats the popularity list (true expected clicks, or logged recall/AUC "
                        "without truth); a fine-tune or retrain that fails it is rejected, not an error.",
    "no_regression": "The candidate is no worse than the deployed release beyond the tolerance.",
    # serving
    "configs_valid": "Every model config of the repository parses and matches the spec's tensor widths.",
    "replayed": "The day's requests were replayed through the running Triton ensemble.",
    "no_failed_requests": "No replayed request failed.",
    "served_beats_popularity": "The served lists beat the popularity list on the day's requests.",
}


def check_specs(asset_key: str, names=INGEST_CHECKS, blocking: bool = True) -> list[dg.AssetCheckSpec]:
    """Blocking checks (by default): a failed one stops everything downstream of the asset in the same run.
    Each carries its :data:`CHECK_DESCRIPTIONS` entry."""
    missing = [name for name in names if name not in CHECK_DESCRIPTIONS]
    if missing:
        raise KeyError(f"checks {missing} of {asset_key} have no description: add them to CHECK_DESCRIPTIONS")
    return [dg.AssetCheckSpec(name, asset=asset_key, blocking=blocking, description=CHECK_DESCRIPTIONS[name])
            for name in names]


def check(name: str, passed: bool, description: str, severity=dg.AssetCheckSeverity.ERROR,
          **metadata) -> dg.AssetCheckResult:
    """A check result whose description is also in its metadata (the UI shows metadata in the check's history)."""
    return dg.AssetCheckResult(check_name=name, passed=bool(passed), severity=severity, description=description,
                               metadata={"description": description, **metadata})


def to_results(outcomes: list[CheckOutcome]) -> list[dg.AssetCheckResult]:
    return [
check(o.name, o.passed, o.description, **o.metadata) for o in outcomes
    ]


def markdown_table(df, floatfmt: str = ".3f") -> dg.MetadataValue:
    """A small DataFrame as a markdown table (no tabulate dependency)."""
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def png_markdown(store, rel: str) -> dg.MetadataValue:
    """A PNG of the artifact store inlined as markdown, so the UI shows the plot itself."""
    data = store.read_bytes(rel)
    return dg.MetadataValue.md(f"![{rel}](data:image/png;base64,{base64.b64encode(data).decode()})")
