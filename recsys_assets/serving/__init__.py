"""The serving side: what every Triton model of the ensemble runs, plus the tools around the server.

- ``stages/``: one module per model of ``triton_repo/`` (plain numpy stages, Python 3.10+, numpy < 2);
- ``executor.py`` + ``triton_model.py``: the one executor every ``model.py`` shim delegates to;
- ``bloom.py`` (seen-items filter), ``runtime.py`` (endpoints from the environment, fail-fast Valkey link),
  ``transforms.py`` (the compiled NVTabular transforms);
- ``repository.py`` (assemble + validate the versioned repository), ``pipeline.py`` (the graph in one process),
  ``deploy.py`` / ``serve.py`` (local server or Helm), ``client.py`` (recommendations on the command line),
  ``tiny.py`` (small real artifacts for tests and benchmarks).

Nothing here imports Dagster; heavy libraries (faiss, onnxruntime, feast) are imported where used.
"""
