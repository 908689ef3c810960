"""Platform: proves the merlin environment and the Pipes runner (locally a subprocess, on k8s a GPU pod)."""

import dagster as dg

from recsys_assets.defs.resources import MerlinRunner


@dg.asset(group_name="platform", kinds={"python", "tensorflow"})
def merlin_environment(context: dg.AssetExecutionContext, merlin: MerlinRunner):
    """The merlin env's versions (nvtabular, merlin-models, tensorflow), reported back through Dagster Pipes."""
    return merlin.run(context, "recsys_assets.ml.env_report").get_materialize_result()
