"""Releases: everything that builds, verifies, scores, promotes, rolls back and starts what Triton serves.

- :mod:`~recsys_assets.release.repository`: the versioned model repository (assembly, validation, candidates beside
  the serving release, served alias configs);
- :mod:`~recsys_assets.release.records`: release records and the served state;
- :mod:`~recsys_assets.release.promotion`: the switch into a running server and the one release state machine;
- :mod:`~recsys_assets.release.scoring`: a release scored as served, and the gate;
- :mod:`~recsys_assets.release.lineage`: where a release's trainable models are;
- :mod:`~recsys_assets.release.triton_server`, :mod:`~recsys_assets.release.deploy`,
  :mod:`~recsys_assets.release.serve`: the local Triton server, its deployment and the ``serve`` command;
- :mod:`~recsys_assets.release.client`, :mod:`~recsys_assets.release.pipeline`: the client and the in-process
  pipeline; :mod:`~recsys_assets.release.tiny`, :mod:`~recsys_assets.release.seed_faithful`,
  :mod:`~recsys_assets.release.onnx_groups`: test worlds and repository variants.

It sits above ``lib`` and ``serving`` (what runs inside Triton) and below ``defs``; no Dagster here.
"""
