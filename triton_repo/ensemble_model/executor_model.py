"""Triton model `ensemble_model` in the executor layout: the whole served graph in one python model.

Copied into the served version folder beside graph.pbtxt by recsys_assets.release.repository.write_served when a
release's layout is "executor"; the ensemble layout serves config.pbtxt of this folder instead.
"""

from recsys_assets.serving.triton_model import executor_model

TritonPythonModel = executor_model()
