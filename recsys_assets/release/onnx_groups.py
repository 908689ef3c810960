"""An exported tower that takes the serving graph's feature groups directly, for Triton's onnxruntime backend.

Locally ``query_tower`` and ``dlrm_ranking`` are python models: the stage reads the feature-group matrices
(:mod:`recsys_assets.serving.features`) and feeds the ONNX model by feature name. On NVIDIA's GPU image the same
models can be served natively by the onnxruntime backend, which feeds an ONNX graph straight from the ensemble's
tensors. :func:`group_inputs` rewrites an exported model so that its inputs *are* the stage's tensors
(``user_categorical`` [N, 4], ``item_index`` [N], ``image_embedding`` [N, 64] ...): a prefix of ``Gather`` (one
column, axis 1), ``Unsqueeze`` and ``Cast`` nodes produces every original input under its original name, so the
rest of the graph is untouched. Feature names resolve as the python stage resolves them (``INPUT_MAP``, the
``image_pca``/``text_pca`` aliases, ``multimodal_embedding`` = [image | text]).

    .venv/bin/python -m recsys_assets.release.onnx_groups dlrm_ranking model.onnx model_groups.onnx

The rewritten graph gives the python stage's scores exactly (``tests/release/test_onnx_groups.py``); serving it
with the onnxruntime backend is not exercised here (the local server has only the python backend).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from recsys_assets.lib.onnx_model import ALIASES
from recsys_assets.serving.features import CONTEXT, ITEM, ITEM_INDEX, UNROLLED, USER, FeatureGroup

# stage -> the groups its tensors carry, and the plain tensors it takes as they are ([N] or [N, D])
GROUP_LAYOUTS: dict[str, tuple[tuple[FeatureGroup, ...], dict[str, str]]] = {
    "query_tower": ((USER, CONTEXT), {}),
    "dlrm_ranking": ((UNROLLED, ITEM), {"item_id": ITEM_INDEX, "image_embedding": "image_embedding",
                                        "text_embedding": "text_embedding"}),
}


def group_inputs(model, stage: str, input_map: dict[str, str] | None = None):
    """The ONNX ``model`` (a ModelProto) rewritten to take ``stage``'s tensors; returns a new ModelProto."""
    import onnx
    from onnx import TensorProto, helper

    if stage not in GROUP_LAYOUTS:
        raise ValueError(f"no feature-group layout for {stage!r}: expected one of {sorted(GROUP_LAYOUTS)}")
    groups, plain = GROUP_LAYOUTS[stage]
    input_map = input_map or {}
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    columns = {}
    for group in groups:
        for j, name in enumerate(group.categorical):
            columns[name] = (group.categorical_tensor, j, TensorProto.INT64, len(group.categorical))
        for j, name in enumerate(group.continuous):
            columns[name] = (group.continuous_tensor, j, TensorProto.FLOAT, len(group.continuous))
    new_inputs: dict[str, onnx.ValueInfoProto] = {}
    nodes = []

    def need(tensor: str, elem: int, dims: list) -> None:
        if tensor not in new_inputs:
            new_inputs[tensor] = helper.make_tensor_value_info(tensor, elem, dims)

    def as_input(source: str, name: str, elem: int, rank: int) -> None:
        """``name`` (the original input) from a [N] tensor: unsqueezed to [N, 1] when the graph wants that, cast."""
        if rank == 2:
            axes = f"{name}__axes"
            nodes.append(helper.make_node("Constant", [], [axes],
                                          value=helper.make_tensor(axes, TensorProto.INT64, [1], [1])))
            nodes.append(helper.make_node("Unsqueeze", [source, axes], [f"{name}__shaped"]))
            source = f"{name}__shaped"
        nodes.append(helper.make_node("Cast", [source], [name], to=elem))

    original = list(graph.input)
    for value in original:
        name = value.name
        base = name.split(":")[0]
        feature = input_map.get(name, ALIASES.get(base, base))
        elem = value.type.tensor_type.elem_type
        rank = len(value.type.tensor_type.shape.dim)
        if feature in columns:
            tensor, j, group_elem, width = columns[feature]
            need(tensor, group_elem, ["N", width])
            index = f"{name}__column"
            nodes.append(helper.make_node("Constant", [], [index], value=helper.make_tensor(index, TensorProto.INT64,
                                                                                          [], [j])))
            nodes.append(helper.make_node("Gather", [tensor, index], [f"{name}__gathered"], axis=1))  # [N]
            as_input(f"{name}__gathered", name, elem, rank)
        elif feature in plain and plain[feature] == name:
            new_inputs[name] = value  # the model already takes the stage's tensor under its name
        elif feature in plain:
            tensor = plain[feature]
            if feature == "item_id":
                need(tensor, TensorProto.INT64, ["N"])
                as_input(tensor, name, elem, rank)
            else:
                need(tensor, TensorProto.FLOAT, ["N", value.type.tensor_type.shape.dim[-1].dim_value or "D"])
                nodes.append(helper.make_node("Cast", [tensor], [name], to=elem))
        elif feature == "multimodal_embedding" and stage == "dlrm_ranking":
            need("image_embedding", TensorProto.FLOAT, ["N", "D_image"])
            need("text_embedding", TensorProto.FLOAT, ["N", "D_text"])
            nodes.append(helper.make_node("Concat", ["image_embedding", "text_embedding"], [f"{name}__cat"], axis=1))
            nodes.append(helper.make_node("Cast", [f"{name}__cat"], [name], to=elem))
        else:
            raise ValueError(f"ONNX input {name!r} (feature {feature!r}) is not carried by {stage}'s tensors; "
                             "map it with input_map")
    # Every tensor of the stage is an input, used or not: the config (and the ensemble's step) stay the python
    # stage's, whichever features this model reads.
    for group in groups:
        need(group.categorical_tensor, TensorProto.INT64, ["N", len(group.categorical)])
        need(group.continuous_tensor, TensorProto.FLOAT, ["N", len(group.continuous)])
    for feature, tensor in plain.items():
        need(tensor, TensorProto.INT64 if feature == "item_id" else TensorProto.FLOAT,
             ["N"] if feature == "item_id" else ["N", "D"])
    del graph.input[:]
    graph.input.extend(new_inputs.values())
    prefix = list(nodes) + list(graph.node)
    del graph.node[:]
    graph.node.extend(prefix)
    onnx.checker.check_model(model)
    return model


# -- the executor layout on the GPU image: the towers as their own models, called through BLS --------------------
BLS_SUFFIX = "_onnx"
_TRITON_TYPES = {1: "TYPE_FP32", 7: "TYPE_INT64", 6: "TYPE_INT32", 11: "TYPE_FP64", 9: "TYPE_BOOL"}  # onnx elem -> Triton
# A stand-in for the onnxruntime backend where the server has only the python backend (this machine): the same
# groups graph, run with onnxruntime in a python model, so the executor's BLS path runs for real here.
PYTHON_STANDIN = '''"""Stand-in for the onnxruntime backend (release.onnx_groups.write_bls_variant, backend="python")."""

import json
from pathlib import Path

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = Path(args["model_repository"]) / str(args["model_version"]) / "model.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.outputs = [o["name"] for o in json.loads(args["model_config"])["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            values = self.session.run(self.outputs, {t.name(): t.as_numpy() for t in request.inputs()})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]))
        return responses
'''


def _io_config(values, out) -> None:
    for value in values:
        dims = [d.dim_value if d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim]
        out.add(name=value.name, data_type=_TRITON_TYPES[value.type.tensor_type.elem_type], dims=dims)


def write_bls_variant(repository: Path, backend: str = "onnxruntime", kind: str = "KIND_GPU") -> list[str]:
    """Turn a repository serving the executor layout into its GPU variant: each tower (``query_tower``,
    ``dlrm_ranking``) becomes a Triton model of its own, ``<stage>_onnx``, whose version ``v`` is the served
    version's export rewritten to take the stage's tensors (:func:`group_inputs`), served by the onnxruntime
    backend on ``kind`` (``backend="python"``: a python model running the same graph with onnxruntime, for a
    server without that backend); the stage's alias config gets ``ONNX_BLS_MODEL`` / ``ONNX_BLS_VERSION``, so the
    executor's stage calls it through BLS instead of running onnxruntime itself. Returns the models Triton must
    load beside ``ensemble_model`` (before it).

    Applied to a served repository (at deployment); a promotion rewrites the alias configs from the release's
    parameters, so the variant is applied again after one (``docs/serving.md``).
    """
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from recsys_assets.release.repository import ReleaseError, parse_config, write_config
    from recsys_assets.serving.graph import ENSEMBLE, is_executor, model_of, served_graph, served_versions, versions

    if backend not in ("onnxruntime", "python"):
        raise ValueError(f"backend {backend!r}: expected onnxruntime or python")
    repository = Path(repository)
    if not is_executor(parse_config(repository / ENSEMBLE / "config.pbtxt")):
        raise ReleaseError(f"{repository} serves the ensemble layout: its ensemble calls the onnxruntime models "
                           "itself (docs/serving.md); the BLS variant is the executor layout's")
    names = []
    for step in served_graph(repository).ensemble_scheduling.step:
        stage = model_of(step.model_name)
        if stage not in GROUP_LAYOUTS:
            continue
        folder = repository / step.model_name
        config = parse_config(folder / "config.pbtxt")
        version = served_versions(config, folder)[-1]
        input_map = json.loads(config.parameters["INPUT_MAP"].string_value or "{}")
        rewritten = group_inputs(onnx.load(str(folder / str(version) / "model.onnx")), stage, input_map)
        name = stage + BLS_SUFFIX
        target = repository / name / str(version)
        target.mkdir(parents=True, exist_ok=True)
        onnx.save(rewritten, str(target / "model.onnx"))
        bls = model_config_pb2.ModelConfig(name=name, max_batch_size=0)
        if backend == "onnxruntime":
            bls.platform = "onnxruntime_onnx"
            bls.default_model_filename = "model.onnx"
        else:
            bls.backend = "python"
            (target / "model.py").write_text(PYTHON_STANDIN)
        _io_config(rewritten.graph.input, bls.input)
        _io_config(rewritten.graph.output, bls.output)
        bls.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.Kind.Value(kind), count=1)
        bls.version_policy.specific.versions.extend(versions(repository / name))  # every version written
        write_config(bls, repository / name / "config.pbtxt",
                     f"# {stage} for BLS from the executor (release.onnx_groups.write_bls_variant, {backend}).\n")
        config.parameters["ONNX_BLS_MODEL"].string_value = name
        config.parameters["ONNX_BLS_VERSION"].string_value = str(version)
        text = text_format.MessageToString(config)
        (folder / "config.pbtxt").write_text(
            "# with ONNX_BLS_MODEL: the executor's stage calls the tower through BLS (write_bls_variant)\n" + text)
        names.append(name)
    if not names:
        raise ReleaseError(f"{repository}: the served graph runs no {' or '.join(GROUP_LAYOUTS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    import onnx

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=sorted(GROUP_LAYOUTS))
    parser.add_argument("source", type=Path, help="the exported model.onnx")
    parser.add_argument("target", type=Path)
    parser.add_argument("--input-map", default="{}", help="JSON: ONNX input name -> feature (the INPUT_MAP parameter)")
    args = parser.parse_args(argv)
    rewritten = group_inputs(onnx.load(str(args.source)), args.stage, json.loads(args.input_map))
    onnx.save(rewritten, str(args.target))
    print(f"{args.target}: inputs {[i.name for i in rewritten.graph.input]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
