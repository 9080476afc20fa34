"""InsightFace's antelopev2 layout with small random-weight models, for the tiny and random-full profiles.

Two ONNX files under antelopev2's names, with the inputs and outputs InsightFace's model zoo tells models
apart by, so ``FaceAnalysis`` loads them as it loads the real ones:

- ``scrfd_10g_bnkps.onnx``: an SCRFD detector. Input [1, 3, H, W] (H and W free); nine outputs, the
  scores [N, 1], box distances [N, 4] and keypoint distances [N, 10] of strides 8, 16 and 32, with two
  anchors per cell (N = H/stride x W/stride x 2, rows in cell-then-anchor order).
- ``glintr100.onnx``: an ArcFace recogniser. Input [batch, 3, 112, 112]; output [batch, 512].

Each stride's head is a pooling and two 1x1 convolutions. By default every score is a sigmoid of about
-20, far under InsightFace's 0.5 threshold: the detector never finds a face, the path the stack sees on
random weights. ``finds_face=True`` (tests) reports exactly one face wherever the photo is: one anchor of
stride 32 scores about 1, and every anchor's box and keypoints are constants (a frontal face 192 pixels
wide in the detector's 640-pixel input). Recognition then runs on a real aligned crop, and its random
convolution makes the embedding depend on the photo's pixels. The same seed writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.instantid_xl.faces import EMBEDDING_SIZE
from models.instantid_xl.keypoints import ARCFACE_LANDMARKS_112

DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
STRIDES = (8, 16, 32)
ANCHORS = 2
# Per anchor: one score, four box distances, five (x, y) keypoint distances.
HEAD_WIDTHS = {"score": 1, "bbox": 4, "kps": 10}
HIDDEN = 8
OPSET = 17
# Old enough for any onnxruntime InsightFace supports, and fixed so the bytes do not follow onnx's default.
IR_VERSION = 8
# Score logit of every anchor: sigmoid(-20) ≈ 2e-9. The head's small random weights move it by about one.
NO_FACE_LOGIT = -20.0
HEAD_WEIGHT_STD = 0.05
# finds_face: the one anchor that fires, its logit, and the face's geometry in detector-input pixels.
FACE_STRIDE = 32
FACE_CELL = (6, 8)  # (row, column): anchor centre at x = 8 x 32 = 256, y = 6 x 32 = 192
FACE_LOGIT = 40.0
FACE_SIZE = 192.0
RECOGNITION_SIZE = 112
RECOGNITION_PATCH = 16
RECOGNITION_CHANNELS = 16


def write_random_antelopev2(folder: Path, *, finds_face: bool = False, seed: int = 0) -> None:
    """Write the random-weight detector and recogniser into ``folder`` (created if absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _save(build_detector(rng, finds_face=finds_face), folder / DETECTOR_FILE)
    _save(build_recognizer(rng), folder / RECOGNIZER_FILE)


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString(deterministic=True))


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln")
    model.ir_version = IR_VERSION
    return model


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name=name)


def _face_distances() -> dict[str, np.ndarray]:
    """finds_face's constant box and keypoint distances from the anchor centre, in units of the stride: a
    square box ``FACE_SIZE`` wide, and ArcFace's reference landmarks placed in it as in its aligned crop."""
    half = FACE_SIZE / 2 / FACE_STRIDE
    keypoints = (ARCFACE_LANDMARKS_112 / RECOGNITION_SIZE - 0.5) * FACE_SIZE / FACE_STRIDE
    return {"bbox": np.full(4, half, dtype=np.float32), "kps": keypoints.reshape(-1).astype(np.float32)}


def _head_initializers(rng: np.random.Generator, kind: str, finds_face: bool) -> tuple[np.ndarray, np.ndarray]:
    """A head's 1x1 convolution weight [ANCHORS x width, HIDDEN, 1, 1] and bias.

    Scores: small random weights on a bias of ``NO_FACE_LOGIT``. Boxes and keypoints: random, or with
    ``finds_face`` zero weights on the constant face's distances, so the geometry ignores the photo.
    Both variants draw the same numbers, so the recogniser written after them is the same.
    """
    outputs = ANCHORS * HEAD_WIDTHS[kind]
    weight = rng.normal(0.0, HEAD_WEIGHT_STD, size=(outputs, HIDDEN, 1, 1)).astype(np.float32)
    if kind == "score":
        return weight, np.full(outputs, NO_FACE_LOGIT, dtype=np.float32)
    bias = rng.uniform(0.5, 3.0, size=outputs).astype(np.float32)
    if finds_face:
        return np.zeros_like(weight), np.tile(_face_distances()[kind], ANCHORS)
    return weight, bias


def _stride_nodes(
    rng: np.random.Generator, stride: int, finds_face: bool
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], dict[str, str]]:
    """One stride's feature map (average pooling, a 1x1 convolution) and its three heads as [N, width]."""
    feature = f"feature{stride}"
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], [f"pool{stride}"], kernel_shape=[stride, stride], strides=[stride, stride]
        ),
        helper.make_node("Conv", [f"pool{stride}", f"stem{stride}.weight", f"stem{stride}.bias"], [f"stem{stride}"]),
        helper.make_node("Relu", [f"stem{stride}"], [feature]),
    ]
    initializers = [
        _init(f"stem{stride}.weight", rng.normal(0.0, 0.5, size=(HIDDEN, 3, 1, 1)).astype(np.float32)),
        _init(f"stem{stride}.bias", rng.normal(0.0, 0.1, size=HIDDEN).astype(np.float32)),
    ]
    outputs = {}
    for kind, width in HEAD_WIDTHS.items():
        weight, bias = _head_initializers(rng, kind, finds_face)
        initializers += [_init(f"{kind}{stride}.weight", weight), _init(f"{kind}{stride}.bias", bias)]
        raw = f"{kind}{stride}.map"
        nodes.append(helper.make_node("Conv", [feature, f"{kind}{stride}.weight", f"{kind}{stride}.bias"], [raw]))
        if kind == "score" and finds_face and stride == FACE_STRIDE:
            nodes += _face_bump_nodes(raw, f"{raw}.face")
            initializers += _face_bump_initializers()
            raw = f"{raw}.face"
        # [1, ANCHORS x width, h, w] → [1, h, w, ANCHORS x width] → [h x w x ANCHORS, width]
        nodes.append(helper.make_node("Transpose", [raw], [f"{kind}{stride}.nhwc"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("Reshape", [f"{kind}{stride}.nhwc", f"shape{width}"], [f"{kind}{stride}.rows"]))
        out = f"{kind}_{stride}"
        if kind == "score":
            nodes.append(helper.make_node("Sigmoid", [f"{kind}{stride}.rows"], [out]))
        else:
            nodes.append(helper.make_node("Identity", [f"{kind}{stride}.rows"], [out]))
        outputs[kind] = out
    return nodes, initializers, outputs


def _face_bump_initializers() -> list[onnx.TensorProto]:
    return [
        _init("face.bump", np.full((1, 1, 1, 1), FACE_LOGIT - NO_FACE_LOGIT, dtype=np.float32)),
        _init("face.pads_fixed", np.array([0, 0, *FACE_CELL, 0, ANCHORS - 1], dtype=np.int64)),
        _init("face.cell_end", np.array([FACE_CELL[0] + 1, FACE_CELL[1] + 1], dtype=np.int64)),
        _init("face.hw_start", np.array([2], dtype=np.int64)),
        _init("face.hw_end", np.array([4], dtype=np.int64)),
    ]


def _face_bump_nodes(logits: str, out: str) -> list[onnx.NodeProto]:
    """Raise one anchor's logit (anchor 0 of cell ``FACE_CELL``) to ``FACE_LOGIT``, whatever the map's size.

    The bump is a 1x1 tensor padded with zeros to the map's shape: pads before are fixed (the cell), pads
    after are the map's height and width less the cell's end, read from the map at run time.
    """
    return [
        helper.make_node("Shape", [logits], ["face.shape"]),
        helper.make_node("Slice", ["face.shape", "face.hw_start", "face.hw_end"], ["face.hw"]),
        helper.make_node("Sub", ["face.hw", "face.cell_end"], ["face.pads_after_hw"]),
        # Pads: [n, c, h, w] before, then n, c after from pads_before's tail, then h, w after.
        helper.make_node("Concat", ["face.pads_fixed", "face.pads_after_hw"], ["face.pads"], axis=0),
        helper.make_node("Pad", ["face.bump", "face.pads"], ["face.bump_map"], mode="constant"),
        helper.make_node("Add", [logits, "face.bump_map"], [out]),
    ]


def build_detector(rng: np.random.Generator, *, finds_face: bool) -> onnx.ModelProto:
    """The SCRFD-shaped detector: outputs ordered scores, boxes, keypoints, each by stride 8, 16, 32."""
    nodes: list[onnx.NodeProto] = []
    initializers = [_init(f"shape{width}", np.array([-1, width], dtype=np.int64)) for width in HEAD_WIDTHS.values()]
    outputs: dict[str, list[str]] = {kind: [] for kind in HEAD_WIDTHS}
    for stride in STRIDES:
        stride_nodes, stride_initializers, stride_outputs = _stride_nodes(rng, stride, finds_face)
        nodes += stride_nodes
        initializers += stride_initializers
        for kind, name in stride_outputs.items():
            outputs[kind].append(name)
    graph = helper.make_graph(
        nodes,
        "scrfd_random",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"{name}.rows", HEAD_WIDTHS[kind]])
            for kind in HEAD_WIDTHS
            for name in outputs[kind]
        ],
        initializers,
    )
    return _model(graph)


def build_recognizer(rng: np.random.Generator) -> onnx.ModelProto:
    """The ArcFace-shaped recogniser: a patch convolution, ReLU and a linear layer to 512 values.

    No node name starts with Sub or Mul, so InsightFace normalises its input as for antelopev2's model.
    """
    cells = RECOGNITION_SIZE // RECOGNITION_PATCH
    features = RECOGNITION_CHANNELS * cells * cells
    patch = [RECOGNITION_PATCH, RECOGNITION_PATCH]
    nodes = [
        helper.make_node(
            "Conv", ["input.1", "conv.weight", "conv.bias"], ["conv"], name="conv", kernel_shape=patch, strides=patch
        ),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Flatten", ["relu"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["683"], name="fc", transB=1),
    ]
    conv_weight = rng.normal(0.0, 1.0 / RECOGNITION_PATCH, size=(RECOGNITION_CHANNELS, 3, *patch))
    fc_weight = rng.normal(0.0, 1.0 / np.sqrt(features), size=(EMBEDDING_SIZE, features))
    initializers = [
        _init("conv.weight", conv_weight.astype(np.float32)),
        _init("conv.bias", rng.normal(0.0, 0.1, size=RECOGNITION_CHANNELS).astype(np.float32)),
        _init("fc.weight", fc_weight.astype(np.float32)),
        _init("fc.bias", np.zeros(EMBEDDING_SIZE, dtype=np.float32)),
    ]
    graph = helper.make_graph(
        nodes,
        "arcface_random",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, RECOGNITION_SIZE, RECOGNITION_SIZE])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", EMBEDDING_SIZE])],
        initializers,
    )
    return _model(graph)
