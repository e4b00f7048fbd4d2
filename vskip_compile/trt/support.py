"""What TensorRT's ONNX parser accepts, per target: the support tables ``vskip lint`` checks.

Data only (no onnx import), written for vskip from these sources (facts, not code):

- onnx/onnx-tensorrt ``docs/operators.md``, the revision headed "TensorRT 10.15 supports
  operators in the inclusive range of opset 9 to opset 24" (read through the code index):
  :data:`OPS`, every operator with its supported types and its restrictions.
- onnx/onnx-tensorrt ``docs/operators.md`` at ``main`` 7ecb49a (2024-05-02, "TensorRT 10.0
  supports operators in the inclusive range of opset 9 to opset 20") and at ``10.1-GA``
  96e7811: which ops 10.0 lacks and the 10.0 restrictions recorded in ``until`` fields. Its
  types agree with 10.15's but for Pow (FP only; integer bases came in 10.12, integer
  exponents in 10.8, per the changelog), quantized types, and ConstantOfShape, which the
  10.0 table lists as FP32 only while the 10.0-GA importer takes any value type (the 10.1
  table lists FP32, FP16, BF16, INT32, INT64, BOOL): the lint follows the importer.
- onnx/onnx-tensorrt ``CHANGELOG.md`` (10.15 GA 2026-2-2 revision): the minor that added an
  op or lifted a restriction (``since`` / ``until``): DeformConv 10.1; tensor ``axes`` for
  Slice 10.3 and Pad 10.4; Blackman/Hamming/HannWindow 10.4; STFT 10.5; dynamic axes for
  Squeeze/Unsqueeze 10.7; "fixed support for opset 18+ ScatterND" 10.9; Attention 10.14;
  RMSNormalization, RotaryEmbedding and TensorScatter 10.15.
- onnx-tensorrt ``onnxOpImporters.cpp`` at ``10.1-GA``: Gather, GatherElements and GatherND
  cast INT64 indices to INT32 unless the data is INT64; ScatterND refuses a ``reduction``
  attribute whatever its value (hence "absent before 10.9"). That importer does not cast
  Scatter indices; the lint holds them to INT32 all the same, as DESIGN.md section 7 states
  ("Gather/Scatter INT64 indices are cast to INT32").
- TensorRT 11 (NVIDIA/TensorRT release notes 11.0 and 11.2; no 11.x ``operators.md`` was
  available): 11.0 removed weak typing (strongly typed networks only) and its parser added
  Swish; 11.2 added DFT. Without an 11.x table, ``trt11`` checks the 10.15 table plus those
  two ops; the release notes name no restriction 11.x added, so a later 11.x may accept
  more than this lint does.

What a target means. ``trt10`` is "every TensorRT 10.x, from 10.0": an op or a form that
needs a later 10.x minor is a finding that names it ("needs TensorRT >= 10.15"), so a graph
clean for ``trt10`` uses nothing these tables say some 10.x release lacks. ``trt11`` is
TensorRT 11.0 and later. vskip's own opset-20 exports use only ops 10.0 has; opset 23 adds
Attention (>= 10.14), RMSNormalization and RotaryEmbedding (>= 10.15), true findings for
``trt10`` whose fix is "export with --opset 20, or build with TensorRT >= 10.15".

Types use the table's names (FP32, FP16, BF16, INT32, INT64, BOOL, UINT8, INT8, FP8, FP4,
INT4); the parser casts DOUBLE down to FP32, and INT8/FP8/FP4/INT4 exist only as quantized
types (through Q/DQ), so the lint does not check those four.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.errors import VskipError

Version = tuple[int, int]

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Target:
    """A TensorRT version range: ``floor`` is the oldest release the graph must build on."""

    name: str
    floor: Version
    describe: str


TARGETS = {
    "trt10": Target("trt10", (10, 0), "TensorRT 10.x, every minor from 10.0"),
    "trt11": Target("trt11", (11, 0), "TensorRT 11.x, strongly typed"),
}
TARGET_NAMES = tuple(TARGETS)


def target(name: str) -> Target:
    if name not in TARGETS:
        raise VskipError(f"unknown TensorRT target {name!r}; choose {' or '.join(TARGET_NAMES)}")
    return TARGETS[name]


def version_text(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


@dataclass(frozen=True)
class Attr:
    """An attribute restriction: its value must be in ``allowed`` (``default`` when absent);
    before ``absent_before`` the attribute may not be written at all."""

    name: str
    allowed: tuple
    default: object = None
    absent_before: Version | None = None
    all_ones: bool = False  # instead of ``allowed``: empty or every value 1 (pool dilations)


@dataclass(frozen=True)
class ConstInput:
    """Input ``index`` (``name``) must be a build-time constant (an initializer or a Constant
    node's output); ``until`` is the first version that takes a tensor there (None: never)."""

    index: int
    name: str
    until: Version | None = None


@dataclass(frozen=True)
class TypedInput:
    """Input ``index`` (``name``) must have one of ``types``; ``since`` lists types that
    need a later version, as (type, version) pairs."""

    index: int
    name: str
    types: frozenset[str]
    since: tuple[tuple[str, Version], ...] = ()


@dataclass(frozen=True)
class Op:
    """One row of the operator table."""

    types: frozenset[str] = frozenset()
    supported: bool = True
    since: Version = (10, 0)
    inputs_unsupported: tuple[tuple[int, str], ...] = ()
    outputs_unsupported: tuple[tuple[int, str], ...] = ()
    attrs: tuple[Attr, ...] = ()
    const_inputs: tuple[ConstInput, ...] = ()
    rank4_inputs: tuple[tuple[int, str], ...] = ()      # inputs that must be 4-D
    type_since: tuple[tuple[str, Version], ...] = ()    # types of the op's tensor added after 10.0
    input_types: tuple[TypedInput, ...] = ()            # inputs typed apart from the op's tensor
    fix: str = ""


def _t(text: str) -> frozenset[str]:
    """Types, with F = FP32 FP16 BF16, F2 = FP32 FP16, I = INT32 INT64, B = BOOL."""
    groups = {"F": ("FP32", "FP16", "BF16"), "F2": ("FP32", "FP16"), "I": ("INT32", "INT64"), "B": ("BOOL",)}
    out: list[str] = []
    for word in text.split():
        out.extend(groups.get(word, (word,)))
    return frozenset(out)


_N = Op(supported=False)
_OPSET20 = "export with --opset 20 (vskip then decomposes it into ops every 10.x has)"
_DILATIONS = Attr("dilations", (), all_ones=True)


def _reduce() -> Op:
    return Op(_t("F I"), const_inputs=(ConstInput(1, "axes"),))


# The TensorRT 10.15 table (onnx-tensorrt docs/operators.md), one row per operator.
OPS: dict[str, Op] = {
    "Abs": Op(_t("F I")), "Acos": Op(_t("F")), "Acosh": Op(_t("F")), "Add": Op(_t("F I")),
    "AffineGrid": _N, "And": Op(_t("B")), "ArgMax": Op(_t("F I")), "ArgMin": Op(_t("F I")),
    "Asin": Op(_t("F")), "Asinh": Op(_t("F")), "Atan": Op(_t("F")), "Atanh": Op(_t("F")),
    "Attention": Op(
        _t("F INT8 FP8"), since=(10, 14),
        inputs_unsupported=((4, "past_key"), (5, "past_value"), (6, "nonpad_kv_seqlen")),
        outputs_unsupported=((1, "present_key"), (2, "present_value"), (3, "qk_matmul_output")),
        attrs=(Attr("qk_matmul_output_mode", (0,), 0), Attr("softcap", (0.0,), 0.0)),
        rank4_inputs=((0, "Q"), (1, "K"), (2, "V"), (3, "attn_mask")),
        fix=f"{_OPSET20}, or build with TensorRT >= 10.14"),
    "AveragePool": Op(_t("F"), attrs=(_DILATIONS,)),
    "BatchNormalization": Op(_t("F")), "Bernoulli": _N, "BitShift": _N, "BitwiseAnd": _N,
    "BitwiseNot": _N, "BitwiseOr": _N, "BitwiseXor": _N,
    "BlackmanWindow": Op(_t("F2"), since=(10, 4)),
    "Cast": Op(_t("F I UINT8 B")), "CastLike": Op(_t("F I UINT8 B")), "Ceil": Op(_t("F")),
    "Col2Im": _N, "Celu": Op(_t("F")), "CenterCropPad": _N, "Clip": Op(_t("F")), "Compress": _N,
    "Concat": Op(_t("F I B")), "ConcatFromSequence": _N,
    "Constant": Op(_t("F FP8 FP4 INT4 I B"), attrs=(Attr("sparse_value", ()), Attr("value_string", ()),
                                                     Attr("value_strings", ()))),
    "ConstantOfShape": Op(_t("F FP8 FP4 INT4 I B")),
    "Conv": Op(_t("F")), "ConvInteger": _N, "ConvTranspose": Op(_t("F")), "Cos": Op(_t("F")), "Cosh": Op(_t("F")),
    "CumSum": Op(_t("F"), const_inputs=(ConstInput(1, "axis"),)),
    "DFT": _N, "DeformConv": Op(_t("F2"), since=(10, 1)), "DepthToSpace": Op(_t("F I")),
    "DequantizeLinear": Op(_t("INT8 FP8 FP4 INT4")), "Det": _N, "Div": Op(_t("F I")),
    "Dropout": Op(_t("F"), const_inputs=(ConstInput(2, "training_mode"),)),
    "DynamicQuantizeLinear": _N, "Einsum": Op(_t("F")), "Elu": Op(_t("F")), "Equal": Op(_t("F I")),
    "Erf": Op(_t("F")), "Exp": Op(_t("F")), "Expand": Op(_t("F I B")), "EyeLike": Op(_t("F I B")),
    "Flatten": Op(_t("F I B")), "Floor": Op(_t("F")),
    "Gather": Op(_t("F I B")), "GatherElements": Op(_t("F I B")), "GatherND": Op(_t("F I B")),
    "Gelu": Op(_t("F INT8 I")), "Gemm": Op(_t("F")), "GlobalAveragePool": Op(_t("F")),
    "GlobalLpPool": Op(_t("F")), "GlobalMaxPool": Op(_t("F")), "Greater": Op(_t("F I")),
    "GreaterOrEqual": Op(_t("F I")), "GridSample": Op(_t("F2")), "GroupNormalization": Op(_t("F")),
    "GRU": Op(_t("F")), "HammingWindow": Op(_t("F2"), since=(10, 4)), "HannWindow": Op(_t("F2"), since=(10, 4)),
    "HardSigmoid": Op(_t("F")), "HardSwish": Op(_t("F")), "Hardmax": Op(_t("F")), "Identity": Op(_t("F I B")),
    "If": Op(_t("F I B")), "ImageScaler": Op(_t("F")), "ImageDecoder": _N, "InstanceNormalization": Op(_t("F")),
    "IsInf": Op(_t("F")), "IsNaN": Op(_t("F I")),
    "LayerNormalization": Op(_t("F"), outputs_unsupported=((1, "Mean"), (2, "InvStdDev"))),
    "LeakyRelu": Op(_t("F")), "Less": Op(_t("F I")), "LessOrEqual": Op(_t("F I")), "Log": Op(_t("F")),
    "LogSoftmax": Op(_t("F")), "Loop": Op(_t("F I B")), "LRN": Op(_t("F")),
    "LSTM": Op(_t("F"), attrs=(Attr("input_forget", (0,), 0), Attr("layout", (0,), 0))),
    "LpNormalization": Op(_t("F")), "LpPool": Op(_t("F"), attrs=(_DILATIONS,)),
    "MatMul": Op(_t("F")), "MatMulInteger": _N, "Max": Op(_t("F I")),
    "MaxPool": Op(_t("F"), outputs_unsupported=((1, "Indices"),), attrs=(_DILATIONS,)),
    "MaxRoiPool": _N, "MaxUnpool": _N, "Mean": Op(_t("F FP8 I")), "MeanVarianceNormalization": Op(_t("F")),
    "MelWeightMatrix": _N, "Min": Op(_t("F I")), "Mish": Op(_t("F2")), "Mod": Op(_t("F I")),
    "Mul": Op(_t("F I")), "Multinomial": _N, "Neg": Op(_t("F I")), "NegativeLogLikelihoodLoss": _N,
    "NonMaxSuppression": Op(_t("F2")), "NonZero": Op(_t("F2")), "Not": Op(_t("B")),
    "OneHot": Op(_t("F I B"), const_inputs=(ConstInput(1, "depth"),)),
    "Optional": _N, "OptionalGetElement": _N, "OptionalHasElement": _N, "Or": Op(_t("B")),
    "Pad": Op(_t("F I"), const_inputs=(ConstInput(3, "axes", until=(10, 4)),)),
    "ParametricSoftplus": Op(_t("F")),
    "Pow": Op(_t("F I"), type_since=(("INT32", (10, 12)), ("INT64", (10, 12))),
              input_types=(TypedInput(1, "Y", _t("F I"), (("INT32", (10, 8)), ("INT64", (10, 8)))),)), "PRelu": Op(_t("F")),
    "QLinearConv": _N, "QLinearMatMul": _N, "QuantizeLinear": Op(_t("F")),
    "RandomNormal": Op(_t("F")), "RandomNormalLike": Op(_t("F")), "RandomUniform": Op(_t("F")),
    "RandomUniformLike": Op(_t("F")), "Range": Op(_t("F I")), "Reciprocal": Op(_t("F")),
    "ReduceL1": _reduce(), "ReduceL2": _reduce(), "ReduceLogSum": _reduce(), "ReduceLogSumExp": _reduce(),
    "ReduceMax": _reduce(), "ReduceMean": _reduce(), "ReduceMin": _reduce(), "ReduceProd": _reduce(),
    "ReduceSum": _reduce(), "ReduceSumSquare": _reduce(),
    "RegexFullMatch": _N, "Relu": Op(_t("F I")), "Reshape": Op(_t("F I B")),
    "Resize": Op(_t("F"), attrs=(
        Attr("coordinate_transformation_mode",
             ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"),
             "half_pixel"),
        Attr("mode", ("nearest", "linear"), "nearest"),
        Attr("nearest_mode", ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"), "round_prefer_floor"),
        Attr("keep_aspect_ratio_policy", ("stretch",), "stretch"),
        Attr("antialias", (0,), 0))),
    "ReverseSequence": Op(_t("F I B")),
    "RMSNormalization": Op(_t("F"), since=(10, 15), fix=f"{_OPSET20}, or build with TensorRT >= 10.15"),
    "RNN": Op(_t("F")), "RoiAlign": Op(_t("F2")),
    "RotaryEmbedding": Op(_t("F"), since=(10, 15), input_types=(TypedInput(3, "position_ids", _t("INT64")),),
                          fix=f"{_OPSET20}, or build with TensorRT >= 10.15"),
    "Round": Op(_t("F")),
    "STFT": Op(_t("FP32"), since=(10, 5), const_inputs=(ConstInput(1, "frame_step"), ConstInput(2, "window"))),
    "ScaledTanh": Op(_t("F")), "Scan": Op(_t("F")), "Scatter": Op(_t("F I")), "ScatterElements": Op(_t("F I")),
    "ScatterND": Op(_t("F I"), attrs=(Attr("reduction", ("none",), "none", absent_before=(10, 9)),)),
    "Selu": Op(_t("F")), "SequenceAt": _N, "SequenceConstruct": _N, "SequenceEmpty": _N, "SequenceErase": _N,
    "SequenceInsert": _N, "SequenceLength": _N, "SequenceMap": _N, "Shape": Op(_t("F I B")),
    "Shrink": Op(_t("F I")), "Sigmoid": Op(_t("F")), "Sign": Op(_t("F I")), "Sin": Op(_t("F")),
    "Sinh": Op(_t("F")), "Size": Op(_t("F I B")),
    "Slice": Op(_t("F I B"), const_inputs=(ConstInput(3, "axes", until=(10, 3)),)),
    "Softmax": Op(_t("F")), "SoftmaxCrossEntropyLoss": _N, "Softplus": Op(_t("F")), "Softsign": Op(_t("F")),
    "SpaceToDepth": Op(_t("F I")), "Split": Op(_t("F I B")), "SplitToSequence": _N, "Sqrt": Op(_t("F")),
    # 10.15: "axes must be resolvable to a constant" (build-time folding the lint does not model)
    "Squeeze": Op(_t("F I B"), const_inputs=(ConstInput(1, "axes", until=(10, 7)),)),
    "StringConcat": _N, "StringNormalizer": _N, "StringSplit": _N,
    "Sub": Op(_t("F I")), "Sum": Op(_t("F I")), "Tan": Op(_t("F")), "Tanh": Op(_t("F")),
    "TensorScatter": Op(_t("F INT32"), since=(10, 15), attrs=(Attr("axis", (-2,), -2),),
                        rank4_inputs=((0, "past_cache"), (1, "update"))),
    "TfIdfVectorizer": _N, "ThresholdedRelu": Op(_t("F")), "Tile": Op(_t("F I B")),
    "TopK": Op(_t("F I"), attrs=(Attr("sorted", (1,), 1),)),
    "Transpose": Op(_t("F I B")), "Trilu": Op(_t("F I B")), "Unique": _N,
    "Unsqueeze": Op(_t("F I B"), const_inputs=(ConstInput(1, "axes", until=(10, 7)),)),
    "Upsample": Op(_t("F")), "Where": Op(_t("F I B")), "Xor": Op(_t("B")),
}

# TensorRT 11 parser additions (release notes): Swish in 11.0, DFT (cuFFT plugin) in 11.2.
OPS_11: dict[str, Op] = {
    "Swish": Op(_t("F"), since=(11, 0)),
    "DFT": Op(_t("F"), since=(11, 2)),
}

# Which tensor carries the type the table lists: input 0 unless named here ("out" = output 0).
TYPED_BY: dict[str, tuple[str, int]] = {
    "Where": ("in", 1), "Constant": ("out", 0), "ConstantOfShape": ("out", 0), "RandomNormal": ("out", 0),
    "RandomUniform": ("out", 0), "Cast": ("out", 0), "CastLike": ("out", 0),
}
NOT_CHECKED_TYPES = frozenset({"DOUBLE", "INT8", "FP8", "FP4", "INT4"})


def op_for(name: str, tgt: Target) -> Op | None:
    """The table row of default-domain op ``name`` for ``tgt`` (None: not in the table)."""
    if tgt.floor >= (11, 0) and name in OPS_11:
        return OPS_11[name]
    return OPS.get(name)


