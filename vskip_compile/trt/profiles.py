"""TensorRT optimization profiles: the largest shapes an engine must serve.

:class:`ProfileLimits` bounds the dynamic dims of a decoder graph: batch, sequence (prompt
rows) and visual rows (DeepStack's ``visual_rows``). ``vskip lint`` checks INT64 index ranges
at these maxima (an index into an axis longer than 2^31-1 does not survive TensorRT's cast
to INT32). The defaults describe one prompt of up to 4096 rows, every one of which may be
visual: DESIGN.md's benchmark prompt (1024 visual + 64 text rows) fits with room to spare.

:func:`derive_profiles` turns a graph's inputs and these limits into the one TensorRT
optimization profile an engine is built with (``vskip build``). Every dynamic axis of every
input is attributed to one kind of count, by its name (the ``dim_param`` the exporter wrote,
see :data:`DIM_NAMES`; ``--dim NAME=KIND`` names others) or, for vskip's row inputs, by the
input itself:

    kind          min   opt                        max            where
    batch         1     opt_batch                  max_batch      axis "batch"
    sequence      1     opt_seq                    max_seq        axis "sequence" (inputs_embeds, masks,
                                                                  positions, Gemma3's [B,1,S,S] masks)
    visual_rows   0     opt_visual_rows            max_visual_rows  DeepStack's [L, V, D] features
    text_rows     1     opt_seq - opt_visual_rows  max_seq        vskip_text_rows (S - V rows)
    suffix_rows   1     opt_seq - opt_visual_rows  max_seq        vskip_suffix_rows (rows after the last
                                                                  visual one)
    routed_rows   1     opt_seq                    max_seq        a routable graph's per-layer rows
                                                                  (vskip_layer{i}_attention_rows, ..._ffn_rows)

A **decode graph** (the export's ``decode.onnx``: it takes ``past_key_values.N.key/value``)
feeds one new token per step on a cache of earlier rows. Its axes are attributed by what
each input is, since the exporter leaves them unnamed (``s10``, ``s0``, ...); ``--max-seq``
is then the longest context an engine serves (prompt plus generated tokens):

    kind           min   opt          max          where
    batch          1     opt_batch    max_batch    axis 0 (axis 1 of [3, B, Q] positions)
    new_tokens     1     1            1            inputs_embeds and position_ids: the step's token
    past_sequence  1     opt_seq      max_seq - 1  axis 2 of past_key_values.N.key / .value
    context        2     opt_seq + 1  max_seq      attention_mask: the past rows and the new one

The three decode shapes are one step each: a mask is always one row longer than the cache
it covers, which TensorRT checks when it builds.

A **vision graph** (the export's ``vision.onnx``) takes whole images ("images": LLaVA,
Gemma3, InternVL, SmolVLM) or the image tokens of all images together ("image_tokens": the
Qwen families, one entry per token the decoder receives):

    kind           min   opt                    max
    images         1     opt_images             max_images
    image_tokens   1     opt_visual_rows (>=1)  max_visual_rows (>=1)

The minimum is the smallest prompt a graph runs: one text row and no image (a compiled
graph then updates every row, as the vanilla graph does; Qwen3-VL's DeepStack features are
[L, 0, D], which ONNX Runtime runs). At least one text row is always left (the row inputs
cannot be empty), so text rows start at 1 and reach max_seq when there is no image. The opt
shapes are one coherent prompt: opt_seq rows of which opt_visual_rows are visual and the
rest, all after the image, text. A routable graph's layers take every row under the empty
plan and the text rows where a plan skips: one engine serves both, so its row inputs span
1 to max_seq, with the all-row prompt as the optimum. Static axes keep their sizes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Iterable, NamedTuple

from ..core.errors import VskipError
from ..core.routing import is_routing_input
from ..core.visual_rows import SUFFIX_ROWS, TEXT_ROWS

# Bounds on what a profile may ask for: far above any prompt, low enough to keep every
# shape's element count in int64 and every message short.
MAX_BATCH = 2**16
MAX_ROWS = 2**20


@dataclass(frozen=True)
class ProfileLimits:
    """Largest (and optimal) batch, sequence and visual-row counts of a profile."""

    max_batch: int = 1
    max_seq: int = 4096
    max_visual_rows: int = 4096
    opt_batch: int = 1
    opt_seq: int = 1088
    opt_visual_rows: int = 1024
    max_images: int = 8
    opt_images: int = 1

    def check(self) -> "ProfileLimits":
        """These limits, if they make one valid profile; else a one-line error naming the flag."""
        for f in fields(self):
            value = getattr(self, f.name)
            low = 0 if f.name.endswith("visual_rows") else 1
            high = MAX_BATCH if f.name.endswith(("batch", "images")) else MAX_ROWS
            if type(value) is not int or not low <= value <= high:
                raise VskipError(f"{_flag(f.name)} must be an integer in {low}-{high}, got {value!r}")
        for opt, largest in (("opt_batch", "max_batch"), ("opt_seq", "max_seq"),
                             ("opt_visual_rows", "max_visual_rows"), ("opt_images", "max_images")):
            if getattr(self, opt) > getattr(self, largest):
                raise VskipError(f"{_flag(opt)} {getattr(self, opt)} is above {_flag(largest)} "
                                 f"{getattr(self, largest)}; the optimum must lie inside the range")
        if self.max_visual_rows > self.max_seq:
            raise VskipError(f"--max-visual-rows {self.max_visual_rows} is above --max-seq {self.max_seq}: "
                             "visual rows are rows of the sequence")
        if self.opt_visual_rows >= self.opt_seq:
            raise VskipError(f"--opt-visual-rows {self.opt_visual_rows} leaves no text row in an --opt-seq "
                             f"{self.opt_seq} prompt; a prompt has at least one text row")
        return self

    @classmethod
    def within(cls, **given) -> "ProfileLimits":
        """The limits with the fields in ``given`` (None: not given) set and every default
        not given kept inside them: ``within(max_seq=512)`` lowers opt_seq, max_visual_rows
        and opt_visual_rows to fit 512 rows; an explicit value is never changed (:meth:`check`
        refuses it if it does not fit)."""
        unknown = sorted(set(given) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unknown profile limits: {', '.join(unknown)}")
        limits = replace(cls(), **{k: v for k, v in given.items() if v is not None})
        clip = {}
        if given.get("opt_batch") is None:
            clip["opt_batch"] = min(limits.opt_batch, limits.max_batch)
        if given.get("opt_images") is None:
            clip["opt_images"] = min(limits.opt_images, limits.max_images)
        if given.get("max_visual_rows") is None:
            clip["max_visual_rows"] = min(limits.max_visual_rows, limits.max_seq)
        limits = replace(limits, **clip)
        if given.get("opt_seq") is None:
            limits = replace(limits, opt_seq=min(limits.opt_seq, limits.max_seq))
        if given.get("opt_visual_rows") is None:  # the default prompt's text rows stay text
            text = cls.opt_seq - cls.opt_visual_rows
            limits = replace(limits, opt_visual_rows=min(limits.opt_visual_rows, limits.max_visual_rows,
                                                         max(0, limits.opt_seq - text)))
        return limits

    def ranges(self) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) of every kind of axis (see the module's table)."""
        self.check()
        text = self.opt_seq - self.opt_visual_rows
        past = max(1, self.max_seq - 1)   # a decode graph needs max_seq >= 2 (checked where one is read)
        opt_past = min(self.opt_seq, past)
        return {BATCH: (1, self.opt_batch, self.max_batch), SEQUENCE: (1, self.opt_seq, self.max_seq),
                VISUAL: (0, self.opt_visual_rows, self.max_visual_rows), TEXT: (1, text, self.max_seq),
                SUFFIX: (1, text, self.max_seq), ROUTED: (1, self.opt_seq, self.max_seq),
                NEW: (1, 1, 1), PAST: (1, opt_past, past), CONTEXT: (2, opt_past + 1, past + 1),
                IMAGES: (1, self.opt_images, self.max_images),
                IMAGE_TOKENS: (1, max(1, self.opt_visual_rows), max(1, self.max_visual_rows))}

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


# ------------------------------------------------------------------------ axis kinds

BATCH, SEQUENCE, VISUAL, TEXT, SUFFIX = "batch", "sequence", "visual_rows", "text_rows", "suffix_rows"
ROUTED = "routed_rows"
NEW, PAST, CONTEXT = "new_tokens", "past_sequence", "context"   # a decode graph's axes
IMAGES, IMAGE_TOKENS = "images", "image_tokens"                  # a vision graph's
KINDS = (BATCH, SEQUENCE, VISUAL, TEXT, SUFFIX, ROUTED, NEW, PAST, CONTEXT, IMAGES, IMAGE_TOKENS)
# The kinds a user may name with --dim (the others belong to vskip's own inputs).
NAMEABLE = (BATCH, SEQUENCE, VISUAL, IMAGES, IMAGE_TOKENS)

# Axis names and what they count. vskip's exporter names its torch.export Dims "batch",
# "sequence" and "visual_rows" (models/export.py); compile names the row inputs' axes
# "<input>_count" (compile.py), the vision graphs' "images" and "image_tokens" (models/vision.py);
# "seq" and "batch_size" are what hand-written dynamic_axes (the legacy exporter) commonly say. Nothing else is read into a name: sympy names such as
# "s29" (transformers' exporter, decode graphs) must be named with --dim.
DIM_NAMES = {
    "batch": BATCH, "batch_size": BATCH,
    "sequence": SEQUENCE, "seq": SEQUENCE, "sequence_length": SEQUENCE,
    "visual_rows": VISUAL,
    "images": IMAGES, "image_tokens": IMAGE_TOKENS,
    f"{TEXT_ROWS}_count": TEXT, f"{SUFFIX_ROWS}_count": SUFFIX,
}
# vskip's row inputs are 1-D and count their rows whatever their axis is called.
ROW_INPUT_KINDS = {TEXT_ROWS: TEXT, SUFFIX_ROWS: SUFFIX}


def row_input_kind(name: str) -> str | None:
    """The kind of a vskip row input's one axis (static row sets or a routable graph's), else None."""
    return ROW_INPUT_KINDS.get(name) or (ROUTED if is_routing_input(name) else None)


# The export's cache inputs (DESIGN.md section 3), one per layer and kind: a graph that takes
# them is a decode graph.
_PAST_INPUT = re.compile(r"past_key_values\.\d+\.(key|value)")


def is_decode_graph(input_names: Iterable[str]) -> bool:
    """Whether a graph with these inputs is a decode graph (it takes a K/V cache)."""
    return any(_PAST_INPUT.fullmatch(name) for name in input_names)


def _decode_kind(name: str, axis: int, rank: int) -> str | None:
    """What axis ``axis`` of a decode graph's input ``name`` counts, by what the input is."""
    if _PAST_INPUT.fullmatch(name):
        return {0: BATCH, 2: PAST}.get(axis)
    if name == "attention_mask" and rank == 2:
        return {0: BATCH, 1: CONTEXT}.get(axis)
    if name == "inputs_embeds" and rank == 3:
        return {0: BATCH, 1: NEW}.get(axis)
    if name == "position_ids":
        return ({0: BATCH, 1: NEW} if rank == 2 else {1: BATCH, 2: NEW} if rank == 3 else {}).get(axis)
    return None


def axis_kind(name: str, axis: int, rank: int, dim_name: str, known: dict[str, str], decode: bool) -> str | None:
    """The kind of a dynamic axis (module table), or None where nothing says what it counts:
    a row input's own axis, a decode graph's inputs by role, then the axis' name."""
    kind = row_input_kind(name) if axis == 0 else None
    if kind is None and decode:
        kind = _decode_kind(name, axis, rank)
    return kind or known.get(dim_name)


class InputProfile(NamedTuple):
    """One input's shapes in the profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class InputAxes:
    """One graph input as the profile sees it: per axis a static size (int) or a kind (str)."""

    name: str
    axes: tuple                   # int for static axes, a kind for dynamic ones
    names: tuple                  # the graph's dim_param per axis ('' for static axes)
    elem_type: int                # onnx TensorProto data type

    @property
    def dynamic(self) -> bool:
        """Whether TensorRT sees a dynamic axis here (a named axis, even one named "64")."""
        return any(isinstance(a, str) for a in self.axes) or any(self.names)

    def shape_text(self) -> str:
        return "[" + ", ".join(str(a) for a in self.axes) + "]"


def parse_dim_names(items: Iterable[str] | None) -> dict[str, str]:
    """``--dim NAME=KIND`` values as {dim name: kind}; each one checked."""
    names: dict[str, str] = {}
    for item in items or ():
        name, sep, kind = str(item).partition("=")
        name, kind = name.strip(), kind.strip()
        if not sep or not name or len(name) > 200:
            raise VskipError(f"--dim {str(item)[:60]!r}: give NAME=KIND, e.g. --dim s29=sequence")
        if kind not in NAMEABLE:
            raise VskipError(f"--dim {name}={kind[:40]}: KIND must be one of {', '.join(NAMEABLE)}")
        if names.get(name, kind) != kind:
            raise VskipError(f"--dim names {name!r} twice, as {names[name]} and {kind}")
        names[name] = kind
    return names


def graph_axes(graph_inputs, sidecar=None, dim_names: dict[str, str] | None = None,
               source: str = "the graph", initializers: Iterable[str] = ()) -> list[InputAxes]:
    """Every real input of a graph (``ModelProto.graph.input``), each dynamic axis attributed
    to a kind; an axis that cannot be is a one-line error naming the input and the axis.

    ``sidecar`` (the export's vskip.json, if any) must describe the graph: its position
    rank and hidden size are checked against the inputs. A decode graph's axes are
    attributed by role (:func:`is_decode_graph`).
    """
    known = {**DIM_NAMES, **(dim_names or {})}
    skip = set(initializers)
    decode = is_decode_graph(i.name for i in graph_inputs if i.name not in skip)
    result = []
    for info in graph_inputs:
        if info.name in skip:
            continue
        tensor = info.type.tensor_type
        if not info.type.HasField("tensor_type") or not tensor.HasField("shape"):
            raise VskipError(f"{source}: input {info.name!r} has no shape; a TensorRT profile needs every "
                             "input's rank (re-export the graph with shapes)")
        axes, names = [], []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                axes.append(int(dim.dim_value))
                names.append("")
                continue
            name = dim.dim_param if dim.HasField("dim_param") else ""
            if name.isdigit() and len(name) < 10 and name not in known:
                axes.append(int(name))  # a size written as a name (transformers' exporter): fixed
                names.append(name)
                continue
            kind = axis_kind(info.name, axis, len(tensor.shape.dim), name, known, decode)
            if kind is None:
                if not name:
                    raise VskipError(f"{source}: input {info.name!r} axis {axis} is dynamic and has no name, so vskip "
                                     "cannot tell what it counts; re-export with named dynamic axes")
                raise VskipError(f"{source}: input {info.name!r} axis {axis} is dynamic ({name!r}) and vskip cannot "
                                 f"tell what it counts; name it: --dim {name}=KIND with KIND one of "
                                 f"{', '.join(NAMEABLE)}")
            axes.append(kind)
            names.append(name)
        result.append(InputAxes(info.name, tuple(axes), tuple(names), tensor.elem_type))
    if sidecar is not None:
        _check_sidecar(result, sidecar, source)
    if not result:
        raise VskipError(f"{source}: the graph has no inputs; nothing to build a profile for")
    return result


def _check_sidecar(inputs: list[InputAxes], sidecar, source: str) -> None:
    """The export's sidecar must describe this graph: a one-line error where it does not."""
    by_name = {i.name: i for i in inputs}
    where = f"{source}: its sidecar {sidecar.path}"
    position = by_name.get("position_ids")
    if position is not None and sidecar.position_rank is not None:
        rank = len(position.axes)
        if (sidecar.position_rank == 3) != (rank == 3):
            raise VskipError(f"{where} says position_ids are {'[3, B, S]' if sidecar.position_rank == 3 else '[B, S]'}"
                             f" but the graph takes {position.shape_text()}; the sidecar does not describe "
                             "this graph")
    embeds = by_name.get("inputs_embeds")
    if embeds is not None and sidecar.hidden_size is not None and embeds.axes and isinstance(embeds.axes[-1], int) \
            and embeds.axes[-1] != sidecar.hidden_size:
        raise VskipError(f"{where} gives hidden size {sidecar.hidden_size} but inputs_embeds is "
                         f"{embeds.shape_text()}; the sidecar does not describe this graph")


def derive_profiles(graph_inputs, sidecar=None, limits: ProfileLimits | None = None,
                    dim_names: dict[str, str] | None = None, source: str = "the graph",
                    initializers: Iterable[str] = ()) -> list[InputProfile]:
    """The optimization profile of a graph: (input, min, opt, max) for every input with a
    dynamic axis, in the graph's order (see the module's table for what each axis gets).

    ``graph_inputs`` is ``ModelProto.graph.input`` (or a list of :class:`InputAxes` already
    attributed); ``sidecar`` the export's vskip.json (checked against the graph);
    ``dim_names`` extra axis names (``--dim``).
    """
    limits = (limits or ProfileLimits()).check()
    ranges = limits.ranges()
    inputs = list(graph_inputs)
    if not all(isinstance(i, InputAxes) for i in inputs):
        inputs = graph_axes(inputs, sidecar, dim_names, source, initializers)
    if limits.max_seq < 2 and any(PAST in i.axes for i in inputs):
        raise VskipError(f"{source}: is a decode graph, and --max-seq {limits.max_seq} leaves no room for a past "
                         "row and the new token; --max-seq is the longest context (prompt and generated tokens)")
    profiles = []
    for item in inputs:
        if not item.dynamic:
            continue
        shapes = [tuple(a if isinstance(a, int) else ranges[a][k] for a in item.axes) for k in range(3)]
        profiles.append(InputProfile(item.name, *shapes))
    return profiles


def format_profiles(inputs: list[InputAxes], profiles: list[InputProfile], limits: ProfileLimits) -> str:
    """The profile as a table: per input its axes, then min / opt / max shapes."""
    rows = [("input", "axes", "min", "opt", "max")]
    by_name = {p.name: p for p in profiles}
    for item in inputs:
        profile = by_name.get(item.name)
        if profile is None:
            shape = _shape(item.axes)
            rows.append((item.name, item.shape_text(), shape, shape, shape))
        else:
            rows.append((item.name, item.shape_text(), _shape(profile.min), _shape(profile.opt), _shape(profile.max)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    used = [k for k in KINDS if any(k in i.axes for i in inputs)]
    ranges = limits.ranges()
    if used:
        lines.append("axes (min/opt/max): " + ", ".join(f"{k} {'/'.join(map(str, ranges[k]))}" for k in used))
    return "\n".join(lines)


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def profiles_to_dict(profiles: list[InputProfile]) -> list[dict]:
    return [{"input": p.name, "min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for p in profiles]
