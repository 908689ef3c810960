"""The release jobs: build and deploy a release behind its gates, promote a candidate, roll back.

- ``serving_job``: the evaluation gates (``retrieval_evaluation``, ``ranking_evaluation``, each with blocking
  ``beats_popularity`` / ``no_regression`` checks) -> ``triton_model_repository`` -> ``triton_deployment``. The
  gates are in the job because a blocking check only stops what runs after it in the same run: a release is
  (re)built and deployed only when the models it packages pass their gates now.
- ``promote_release_job`` / ``rollback_release_job``: ``served_release``, switched to a candidate (the promotion
  sensor beside them requests it) or back to the release promoted before the serving one.
"""

import dagster as dg

from recsys_assets.defs.release.assets import triton_deployment, triton_model_repository
from recsys_assets.defs.release.releases import served_release
from recsys_assets.defs.training.assets import ranking_evaluation, retrieval_evaluation

# The gates a release of the full build must pass in the run that builds it (upstream of triton_model_repository).
RELEASE_GATES = (retrieval_evaluation, ranking_evaluation)

serving_job = dg.define_asset_job(
    "serving_job",
    selection=dg.AssetSelection.assets(*RELEASE_GATES, triton_model_repository, triton_deployment),
    description="Judge the trained models (retrieval and ranking gates), then assemble a versioned Triton repository "
                "from them and (re)deploy it; a failed gate stops the build and nothing new is served.",
)
promote_release_job = dg.define_asset_job(
    "promote_release_job",
    selection=[served_release],
    description="Switch the running server to a candidate release (whole set at once); the old one keeps serving "
                "if anything fails.",
)
rollback_release_job = dg.define_asset_job(
    "rollback_release_job",
    selection=[served_release],
    config={"ops": {"served_release": {"config": {"rollback": True}}}},
    description="Serve the release promoted before the serving one again (whole set at once).",
)
