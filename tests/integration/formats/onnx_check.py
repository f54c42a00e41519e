"""Checks an ONNX file cae exported and runs it in ONNX Runtime (tests/integration/formats/onnx.rs).

    python3 onnx_check.py MODEL.onnx [INPUT.npy OUTPUT.npy]...

Runs onnx.checker.check_model with full_check (strict shape inference too), then the model on
each INPUT.npy with ONNX Runtime's CPU provider, saving what it returns as OUTPUT.npy. Prints one
JSON object describing the graph: IR version, opsets, input and output names and shapes (a
symbolic dimension by its name), operator types in order, initializer names.
"""

import json
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as missing:
    sys.exit(
        f"the ONNX checks need the Python packages onnx and onnxruntime ({missing}): "
        "python3 -m pip install onnx onnxruntime (.ci/run installs them)"
    )


def dims(value_info):
    shape = value_info.type.tensor_type.shape
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in shape.dim]


def main(path, *pairs):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (input_meta,) = session.get_inputs()
    for source, target in zip(pairs[::2], pairs[1::2]):
        (output,) = session.run(None, {input_meta.name: np.load(source)})
        np.save(target, output)
    print(json.dumps({
        "ir_version": model.ir_version,
        "opsets": {entry.domain: entry.version for entry in model.opset_import},
        "inputs": [[v.name, dims(v)] for v in graph.input],
        "outputs": [[v.name, dims(v)] for v in graph.output],
        "ops": [node.op_type for node in graph.node],
        "initializers": [t.name for t in graph.initializer],
        "metadata": {p.key: p.value for p in model.metadata_props},
        "onnxruntime": ort.__version__,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
