"""The one ensemble request encoder: JSON body and tritonclient tensors agree with each other and with the
ensemble's config."""

from pathlib import Path

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from recsys_assets.lib.ensemble_request import INPUTS, OUTPUTS, infer_inputs, request_body, request_values

CONFIG = Path(__file__).resolve().parents[2] / "triton_repo" / "ensemble_model" / "config.pbtxt"


def test_inputs_and_outputs_are_the_ensemble_configs():
    config = text_format.Parse(CONFIG.read_text(), model_config_pb2.ModelConfig())
    declared = {i.name: model_config_pb2.DataType.Name(i.data_type).removeprefix("TYPE_") for i in config.input}
    assert dict(INPUTS) == declared
    assert set(OUTPUTS) == {o.name for o in config.output}


def test_optional_inputs_are_left_out_and_diversity_is_kept():
    assert request_values(5) == [("user_id", "INT64", 5)]
    assert request_values(5, 1, 1767225600, 7, False)[-1] == ("diversity", "BOOL", False)
    body = request_body(-1, diversity=True)
    assert [i["name"] for i in body["inputs"]] == ["user_id", "diversity"] and body["inputs"][1]["data"] == [True]


def test_tritonclient_tensors_carry_the_same_values_over_http_and_grpc():
    for module in (httpclient, grpcclient):
        tensors = infer_inputs(module, 12, 2, 1767225600, 5, True)
        assert [(t.name(), t.datatype()) for t in tensors] == [(n, d) for n, d, _ in request_values(12, 2, 1767225600,
                                                                                                     5, True)]
        assert all(list(t.shape()) == [1] for t in tensors)
