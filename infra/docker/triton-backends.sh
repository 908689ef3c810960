#!/bin/sh
# Lays out the python backend of the tritonserver that nvidia-pytriton bundles (2.51.0, r24.10) so that the
# plain binary can serve a model repository: the backend library plus the python-backend stub built for this
# interpreter's CPython version, in one backend directory.
#
#   triton-backends.sh DEST        (the python3 first on PATH must have nvidia-pytriton installed)
# Used at image build (infra/docker/pipeline.Dockerfile) and by tests/infra against the pipeline venv.
set -eu
dest=${1:?usage: triton-backends.sh DEST}
pytriton=$(python3 -c 'import os, pytriton; print(os.path.dirname(pytriton.__file__))')
pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
stub="$pytriton/tritonserver/python_backend_stubs/$pyver/triton_python_backend_stub"
[ -x "$stub" ] || { echo "triton-backends.sh: no python-backend stub for CPython $pyver in $pytriton" >&2; exit 1; }
mkdir -p "$dest/python"
cp "$pytriton/tritonserver/backends/python/libtriton_python.so" \
   "$pytriton/tritonserver/backends/python/triton_python_backend_utils.py" "$dest/python/"
cp "$stub" "$dest/python/triton_python_backend_stub"
echo "triton-backends.sh: python backend (CPython $pyver stub) in $dest/python"
