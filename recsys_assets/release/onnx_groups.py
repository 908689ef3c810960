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
LAYOUTS: dict[str, tuple[tuple[FeatureGroup, ...], dict[str, str]]] = {
    "query_tower": ((USER, CONTEXT), {}),
    "dlrm_ranking": ((UNROLLED, ITEM), {"item_id": ITEM_INDEX, "image_embedding": "image_embedding",
                                        "text_embedding": "text_embedding"}),
}


def group_inputs(model, stage: str, input_map: dict[str, str] | None = None):
    """The ONNX ``model`` (a ModelProto) rewritten to take ``stage``'s tensors; returns a new ModelProto."""
    import onnx
    from onnx import TensorProto, helper

    if stage not in LAYOUTS:
        raise ValueError(f"no feature-group layout for {stage!r}: expected one of {sorted(LAYOUTS)}")
    groups, plain = LAYOUTS[stage]
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


def main(argv: list[str] | None = None) -> int:
    import onnx

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=sorted(LAYOUTS))
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
