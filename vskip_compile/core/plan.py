"""The skip plan's vocabulary: per-layer actions and the freeze scope.

This is the small leaf that both ``models/`` (the PyTorch reference) and ``passes/``
(the graph rewrite) import; it depends on nothing but the standard library.
Semantics (DESIGN.md section 2), for the visual rows V of a layer with input h:

    full                    V -> normal layer
    skip_visual_attention   V -> h + FFN(norm2(h))      (V rows are not queries)
    skip_visual_ffn         V -> h + Attn(norm1(h))
    freeze                  V -> h
Text rows always get the normal layer; K/V are computed for every row.

Plans are read from two JSON formats by :func:`load_plan`, which detects the format:

vskip's own plan (written by :func:`to_json`)::

    {"format": "vskip-plan", "version": 1,
     "model": {"family": "qwen2_vl", "num_layers": 24},
     "freeze_scope": "visual",
     "layers": {"0-1": "full", "2": "skip_visual_attention", "17-23": "freeze"}}

``model.num_layers`` is required; ``model.family`` (a transformers ``model_type``) may be
left out for a plan that fits any family. Layer keys are one index or an inclusive range
"a-b"; unlisted layers run in full; values are the :class:`Action` values.
``freeze_scope`` (default "visual") and a free-text ``description`` are optional.

OpSkip policy files (github.com/zayan-l/OpSkip), accepted as that project writes them.
Facts from its repository (``opskip/policy.py``, ``opskip/runtime.py``, ``README.md``,
``configs/<family>/preset<N>.json``):

- A policy is one JSON object. ``load_policy`` in ``opskip/policy.py`` accepts exactly the
  fields model_family, num_layers, attention_only, ffn_only, freeze, freeze_scope,
  use_triton, mlp_chunk_size, rmsnorm_backend, budget, checkpoint, source, preset, and
  refuses any other. The released ``configs/*/preset*.json`` use a subset of these, e.g.
  ``configs/qwen3_vl/preset20.json``: model_family "qwen3_vl", checkpoint
  "Qwen/Qwen3-VL-8B-Instruct", num_layers 36, preset 20, budget 20, the three lists,
  freeze_scope, mlp_chunk_size 512, source (a script or log name), use_triton false.
  The Qwen2.5-VL files add rmsnorm_backend "torch".
- model_family is one of qwen3_vl, qwen2_5_vl, llava, llava_next in OpSkip (the same
  spellings as transformers' model_type); num_layers is a positive int; the three lists
  hold zero-based layer indices in range, and no layer may appear twice across them;
  budget, when present, must equal the number of listed layers (the preset number
  counts selected layers, README.md).
- Per-layer action (``Policy.action``, README.md): ``attention_only`` keeps the visual
  attention update and skips the visual FFN; ``ffn_only`` keeps the visual FFN update and
  skips visual attention; ``freeze`` skips both; unlisted layers run normally.
- freeze_scope is "visual" (the default) or "prefix_through_visual", the same spellings
  as :class:`FreezeScope`. In one stored version of ``opskip/runtime.py`` freeze layers
  update only the text after the last visual row whatever the scope says, and README.md
  says the released policies freeze the text prefix; the released files say "visual",
  and the version of runtime.py that reads freeze_scope honours it. vskip follows the
  file's field.
- use_triton, mlp_chunk_size and rmsnorm_backend choose OpSkip's PyTorch kernels and
  chunking; they do not change what is computed, so vskip checks their types and keeps
  them (with checkpoint, preset, budget, source) in ``PlanInfo.metadata`` only.

vskip accepts any model_family string (it supports more families than OpSkip);
``PlanInfo.check_model`` refuses a plan whose family or layer count differs from the model.
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import VskipError


class Action(str, enum.Enum):
    FULL = "full"
    SKIP_ATTENTION = "skip_visual_attention"
    SKIP_FFN = "skip_visual_ffn"
    FREEZE = "freeze"

    @property
    def skips_attention(self) -> bool:
        return self in (Action.SKIP_ATTENTION, Action.FREEZE)

    @property
    def skips_ffn(self) -> bool:
        return self in (Action.SKIP_FFN, Action.FREEZE)


class FreezeScope(str, enum.Enum):
    # Only the visual rows are frozen in freeze layers.
    VISUAL = "visual"
    # Every row up to and including the last visual row is frozen in freeze layers;
    # only the text suffix after the last visual row is updated.
    PREFIX_THROUGH_VISUAL = "prefix_through_visual"


class Rows(str, enum.Enum):
    """A set of a prompt's rows, named by what they are for a given visual-row mask."""

    ALL = "all"
    TEXT = "text"          # every row that is not visual
    SUFFIX = "suffix"      # the rows after the last visual row


def live_rows(action: Action, scope: FreezeScope) -> tuple[Rows, Rows]:
    """The rows whose (attention, FFN) update a layer with ``action`` computes.

    This is the one statement of what a plan means for rows: the graph rewrite takes
    these rows' row input, the PyTorch reference zeroes every other row's update, and the
    FLOPs formulas count these rows. Rows outside the set pass through on the residual.
    ``scope`` matters only for freeze layers (DESIGN.md section 2).
    """
    kept = Rows.SUFFIX if action is Action.FREEZE and scope is FreezeScope.PREFIX_THROUGH_VISUAL else Rows.TEXT
    return (kept if action.skips_attention else Rows.ALL, kept if action.skips_ffn else Rows.ALL)


@dataclass(frozen=True)
class Plan:
    """One action per decoder layer plus the freeze scope."""

    actions: tuple[Action, ...]
    freeze_scope: FreezeScope = FreezeScope.VISUAL

    def __post_init__(self):
        object.__setattr__(self, "actions", tuple(Action(a) for a in self.actions))
        object.__setattr__(self, "freeze_scope", FreezeScope(self.freeze_scope))

    @classmethod
    def empty(cls, num_layers: int) -> "Plan":
        return cls((Action.FULL,) * num_layers)

    @classmethod
    def from_layers(cls, num_layers: int, layers: dict[int, Action | str],
                    freeze_scope: FreezeScope | str = FreezeScope.VISUAL) -> "Plan":
        actions = [Action.FULL] * num_layers
        for index, action in layers.items():
            if not 0 <= index < num_layers:
                raise ValueError(f"layer {index} is out of range for a {num_layers}-layer model")
            actions[index] = Action(action)
        return cls(tuple(actions), FreezeScope(freeze_scope))

    @property
    def num_layers(self) -> int:
        return len(self.actions)

    @property
    def is_empty(self) -> bool:
        return all(a is Action.FULL for a in self.actions)

    def live_rows(self, layer: int) -> tuple[Rows, Rows]:
        """:func:`live_rows` of layer ``layer`` under this plan's freeze scope."""
        return live_rows(self.actions[layer], self.freeze_scope)


# --------------------------------------------------------------------------- plan files

VSKIP_FORMAT = "vskip-plan"
VSKIP_VERSION = 1

_VSKIP_FIELDS = ("format", "version", "model", "freeze_scope", "layers", "description")
_VSKIP_MODEL_FIELDS = ("family", "num_layers")
# Exactly the fields OpSkip's own load_policy accepts (opskip/policy.py).
_OPSKIP_FIELDS = ("model_family", "num_layers", "attention_only", "ffn_only", "freeze",
                  "freeze_scope", "use_triton", "mlp_chunk_size", "rmsnorm_backend",
                  "budget", "checkpoint", "source", "preset")
# OpSkip names each list after what it keeps; these are the actions they mean here.
OPSKIP_ACTIONS = {
    "ffn_only": Action.SKIP_ATTENTION,
    "attention_only": Action.SKIP_FFN,
    "freeze": Action.FREEZE,
}
# OpSkip fields that do not change the computation: kept for reports, typed like OpSkip.
_OPSKIP_METADATA = {"checkpoint": "string", "preset": "integer", "budget": "integer",
                    "source": "string", "use_triton": "boolean",
                    "mlp_chunk_size": "integer", "rmsnorm_backend": "string"}

# No decoder has more layers; a bound read before any per-layer list is built.
MAX_LAYERS = 4096
MAX_PLAN_BYTES = 2**20

_LAYER_KEY = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")


class PlanError(VskipError):
    """A plan that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class PlanInfo:
    """Where a plan came from and which model it was made for."""

    source: str                 # the file path, or "<dict>" for an in-memory plan
    format: str                 # "vskip-plan" or "opskip"
    family: str | None          # transformers model_type; None: made for any family
    num_layers: int
    metadata: dict = field(default_factory=dict)  # informational fields (no effect on the graph)

    def check_model(self, family: str, num_layers: int) -> None:
        """Raise PlanError unless the plan was made for this family and layer count."""
        family_ok = self.family is None or self.family == family
        if family_ok and self.num_layers == num_layers:
            return
        made_for = f"a {self.num_layers}-layer {self.family or 'decoder'}"
        raise PlanError(f"{self.source}: plan was made for {made_for}, but the model is a "
                        f"{num_layers}-layer {family}; use a plan made for this model")


def load_plan(plan: str | os.PathLike | Mapping) -> tuple[Plan, PlanInfo]:
    """Read a vskip plan or an OpSkip policy (a file path or an already-parsed dict)."""
    if isinstance(plan, Mapping):
        source, data = "<dict>", plan
    else:
        source = os.fspath(plan)
        data = _read_json(source)
    if not isinstance(data, Mapping):
        raise PlanError(f"{source}: a plan must be a JSON object, got {_json_type(data)}")
    if "format" in data:
        return _load_vskip(data, source)
    if "model_family" in data or any(name in data for name in OPSKIP_ACTIONS):
        return _load_opskip(data, source)
    raise PlanError(f"{source}: not a plan: a vskip plan has \"format\": \"{VSKIP_FORMAT}\", "
                    "an OpSkip policy has model_family, num_layers and the layer lists "
                    "ffn_only / attention_only / freeze")


def to_json(plan: Plan, *, family: str | None = None, description: str | None = None) -> str:
    """The plan in vskip's format; consecutive layers with one action become a range."""
    model: dict = {"family": family} if family is not None else {}
    model["num_layers"] = plan.num_layers
    layers: dict[str, str] = {}
    start = 0
    while start < plan.num_layers:
        action, end = plan.actions[start], start
        while end + 1 < plan.num_layers and plan.actions[end + 1] is action:
            end += 1
        if action is not Action.FULL:  # unlisted layers are full
            layers[str(start) if start == end else f"{start}-{end}"] = action.value
        start = end + 1
    doc: dict = {"format": VSKIP_FORMAT, "version": VSKIP_VERSION, "model": model,
                 "freeze_scope": plan.freeze_scope.value, "layers": layers}
    if description is not None:
        doc["description"] = description
    return json.dumps(doc, indent=2) + "\n"


def _load_vskip(data: Mapping, source: str) -> tuple[Plan, PlanInfo]:
    def fail(problem: str):
        raise PlanError(f"{source}: {problem}")

    if data["format"] != VSKIP_FORMAT:
        fail(f"unknown plan format {data['format']!r}; vskip reads \"{VSKIP_FORMAT}\" plans "
             "and OpSkip policies")
    _check_fields(data, _VSKIP_FIELDS, "a vskip plan", source)
    version = _field(data, "version", "integer", source)
    if version != VSKIP_VERSION:
        fail(f"plan format version {version} is not supported; this vskip reads version "
             f"{VSKIP_VERSION}")
    model = _field(data, "model", "object", source)
    _check_fields(model, _VSKIP_MODEL_FIELDS, "'model'", source)
    num_layers = _num_layers(model, "model.num_layers", source)
    family = _field(model, "family", "string", source, required=False, where="model.family")
    description = _field(data, "description", "string", source, required=False)
    scope = _freeze_scope(data, source)

    actions = [Action.FULL] * num_layers
    listed_by: dict[int, str] = {}  # layer -> the key that listed it, for duplicate messages
    for key, value in _field(data, "layers", "object", source).items():
        start, end = _layer_range(key, num_layers, source)
        action = _action(value, f"layers[{key!r}]", source)
        for index in range(start, end + 1):
            if index in listed_by:
                fail(f"layer {index} is listed twice in 'layers' (by {listed_by[index]!r} "
                     f"and {key!r}); list every layer once")
            listed_by[index] = key
            actions[index] = action
    metadata = {"description": description} if description is not None else {}
    return (Plan(tuple(actions), scope),
            PlanInfo(source, VSKIP_FORMAT, family, num_layers, metadata))


def _load_opskip(data: Mapping, source: str) -> tuple[Plan, PlanInfo]:
    _check_fields(data, _OPSKIP_FIELDS, "an OpSkip policy", source)
    family = _field(data, "model_family", "string", source)
    num_layers = _num_layers(data, "'num_layers'", source)
    actions = [Action.FULL] * num_layers
    listed_in: dict[int, str] = {}
    for name, action in OPSKIP_ACTIONS.items():
        for position, index in enumerate(_field(data, name, "array", source, required=False) or ()):
            where = f"{name}[{position}]"
            _expect(index, "integer", where, source)
            if not 0 <= index < num_layers:
                raise PlanError(f"{source}: {where}: layer {index} is out of range for "
                                f"num_layers {num_layers} (layers are 0-{num_layers - 1})")
            if index in listed_in:
                raise PlanError(f"{source}: layer {index} is listed twice (in "
                                f"{listed_in[index]!r} and {name!r}); a layer has one action")
            listed_in[index] = name
            actions[index] = action
    scope = _freeze_scope(data, source)
    metadata = {key: _field(data, key, kind, source)
                for key, kind in _OPSKIP_METADATA.items() if key in data}
    # OpSkip's own loader checks these two; a policy it refuses is refused here too.
    if metadata.get("mlp_chunk_size", 0) < 0:
        raise PlanError(f"{source}: 'mlp_chunk_size' must be >= 0, got {metadata['mlp_chunk_size']}")
    if "budget" in metadata and metadata["budget"] != len(listed_in):
        raise PlanError(f"{source}: 'budget' is {metadata['budget']} but the policy lists "
                        f"{len(listed_in)} layers")
    return Plan(tuple(actions), scope), PlanInfo(source, "opskip", family, num_layers, metadata)


def _read_json(source: str):
    from .files import read_json

    try:
        return read_json(source, "plan file", MAX_PLAN_BYTES)
    except PlanError:
        raise
    except VskipError as exc:
        raise PlanError(str(exc)) from None


def _check_fields(data: Mapping, allowed: tuple[str, ...], what: str, source: str) -> None:
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise PlanError(f"{source}: unknown field(s) {', '.join(map(repr, unknown))} in {what}; "
                        f"allowed: {', '.join(allowed)}")


_KINDS = {
    # type(x) is int: JSON true/false load as bool, which Python counts as an int.
    "integer": lambda x: type(x) is int,
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: type(x) is bool,
    "object": lambda x: isinstance(x, Mapping),
    "array": lambda x: isinstance(x, (list, tuple)),
}


def _expect(value, kind: str, where: str, source: str):
    if not _KINDS[kind](value):
        article = "an" if kind[0] in "aeiou" else "a"
        raise PlanError(f"{source}: {where} must be {article} {kind}, got "
                        f"{_json_type(value)} {_short(value)}")
    return value


def _field(data: Mapping, key: str, kind: str, source: str, *, required: bool = True,
           where: str | None = None):
    where = where or repr(key)
    if key not in data:
        if required:
            raise PlanError(f"{source}: missing required field {where}")
        return None
    return _expect(data[key], kind, where, source)


def _num_layers(data: Mapping, where: str, source: str) -> int:
    value = _field(data, "num_layers", "integer", source, where=where)
    if not 0 < value <= MAX_LAYERS:
        raise PlanError(f"{source}: {where} must be an integer in 1-{MAX_LAYERS}, got {value}")
    return value


def _freeze_scope(data: Mapping, source: str) -> FreezeScope:
    value = _field(data, "freeze_scope", "string", source, required=False)
    if value is None:
        return FreezeScope.VISUAL
    try:
        return FreezeScope(value)
    except ValueError:
        raise PlanError(f"{source}: unknown freeze_scope {value!r}; use one of "
                        f"{', '.join(s.value for s in FreezeScope)}") from None


def _action(value, where: str, source: str) -> Action:
    _expect(value, "string", where, source)
    try:
        return Action(value)
    except ValueError:
        hint = (f" (OpSkip's {value!r} list means {OPSKIP_ACTIONS[value].value!r})"
                if value in OPSKIP_ACTIONS else "")
        raise PlanError(f"{source}: {where}: unknown action {value!r}{hint}; actions are "
                        f"{', '.join(a.value for a in Action)}") from None


def _layer_range(key: str, num_layers: int, source: str) -> tuple[int, int]:
    match = _LAYER_KEY.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        raise PlanError(f"{source}: layer key {key!r} is neither a layer index like \"5\" nor "
                        "an inclusive range like \"17-23\"")
    start = int(match[1])
    end = int(match[2]) if match[2] is not None else start
    if end < start:
        raise PlanError(f"{source}: layer range {key!r} ends before it starts; write "
                        f"\"{end}-{start}\"")
    if end >= num_layers:
        raise PlanError(f"{source}: layer key {key!r} is out of range for num_layers "
                        f"{num_layers} (layers are 0-{num_layers - 1})")
    return start, end


def _json_type(value) -> str:
    for kind, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                       (Mapping, "object"), ((list, tuple), "array"), (type(None), "null")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _short(value) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # an in-memory dict may hold values JSON cannot
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
