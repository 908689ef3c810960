"""One ensemble request, encoded once: the inputs ``triton_repo/ensemble_model/config.pbtxt`` takes and the outputs
it answers with, for every client (the API's KServe JSON, ``tritonclient`` over HTTP or gRPC).

Inputs: ``user_id`` (required), ``device_type``, ``timestamp``, ``top_k`` (INT64 [1]) and ``diversity`` (BOOL [1]),
each left out when None so the ensemble's defaults apply. Outputs: ``ordered_ids`` (INT64), ``ordered_scores``
(FP32).
"""

from __future__ import annotations

import numpy as np

ENSEMBLE = "ensemble_model"
INPUTS = (("user_id", "INT64"), ("device_type", "INT64"), ("timestamp", "INT64"), ("top_k", "INT64"),
          ("diversity", "BOOL"))
OUTPUTS = ("ordered_ids", "ordered_scores")


def request_values(user_id: int, device_type: int | None = None, timestamp: int | None = None,
                   top_k: int | None = None, diversity: bool | None = None) -> list[tuple[str, str, int | bool]]:
    """``(name, datatype, value)`` of every input given, in the config's order."""
    given = {"user_id": user_id, "device_type": device_type, "timestamp": timestamp, "top_k": top_k,
             "diversity": diversity}
    return [(name, dtype, bool(given[name]) if dtype == "BOOL" else int(given[name]))
            for name, dtype in INPUTS if given[name] is not None]


def request_body(user_id: int, device_type: int | None = None, timestamp: int | None = None,
                 top_k: int | None = None, diversity: bool | None = None) -> dict:
    """The KServe v2 JSON body of one ensemble request (optional inputs left out when None)."""
    inputs = [{"name": name, "shape": [1], "datatype": dtype, "data": [value]}
              for name, dtype, value in request_values(user_id, device_type, timestamp, top_k, diversity)]
    return {"inputs": inputs, "outputs": [{"name": name} for name in OUTPUTS]}


def infer_inputs(client_module, user_id: int, device_type: int | None = None, timestamp: int | None = None,
                 top_k: int | None = None, diversity: bool | None = None) -> list:
    """``InferInput`` tensors of one request for ``client_module`` (``tritonclient.http`` or ``tritonclient.grpc``)."""
    out = []
    for name, dtype, value in request_values(user_id, device_type, timestamp, top_k, diversity):
        tensor = client_module.InferInput(name, [1], dtype)
        tensor.set_data_from_numpy(np.array([value], dtype=np.bool_ if dtype == "BOOL" else np.int64))
        out.append(tensor)
    return out


def requested_outputs(client_module) -> list:
    return [client_module.InferRequestedOutput(name) for name in OUTPUTS]
