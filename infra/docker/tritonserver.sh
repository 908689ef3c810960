#!/bin/sh
# `tritonserver` for the pipeline image: the binary nvidia-pytriton bundles, with its shared libraries
# (nvidia_pytriton.libs), libpython for the python-backend stub, and the backend directory laid out by
# triton-backends.sh. The python models run in the python3 first on PATH (the pipeline venv: numpy < 2,
# which the stub needs -- ENVIRONMENT.md section 2). All arguments go to tritonserver.
#   TRITON_BACKENDS   backend directory (default /opt/tritonserver/backends)
set -eu
backends=${TRITON_BACKENDS:-/opt/tritonserver/backends}
eval "$(python3 -c '
import os, sysconfig, pytriton
root = os.path.dirname(os.path.dirname(pytriton.__file__))
print("site=%s libdir=%s" % (root, sysconfig.get_config_var("LIBDIR")))
')"
export LD_LIBRARY_PATH="$site/nvidia_pytriton.libs:$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$site/pytriton/tritonserver/bin/tritonserver" --backend-directory="$backends" "$@"
