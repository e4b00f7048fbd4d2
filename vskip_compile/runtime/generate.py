"""From a model's inputs to generated tokens, on an export's graphs.

The pipeline, stage by stage (each timed):

1. vision: the host makes the vision graph's feeds from the pixel inputs
   (:func:`vskip_compile.host.vision_feeds`) and the vision graph gives the rows the
   decoder receives at the image tokens;
2. prefill: the token embedding table (memory-mapped) gives every text row, the image
   rows are written over the image tokens in order, the host makes the positions (M-RoPE
   for the Qwen-VL families) and the family's extra inputs, and the prefill graph runs,
   compiled with a plan or not; with a plan, the visual rows become the compiled graph's
   row inputs (exactly the image-token rows, or their whole span with ``span``);
3. decode: the decode graph runs one token at a time over the cache the prefill wrote.
   The cache stays in the backend's own values between steps (ONNX Runtime's OrtValues
   through I/O binding), never copied into numpy.

Greedy by default; with ``temperature`` > 0, sampling (``top_p`` nucleus, ``seed``).
A prompt stops at any of the export's EOS ids; the batch stops when every prompt has,
or after ``max_new_tokens``. Padded batches are left-padded, as ``generate`` pads them.

Everything goes through the backend interface (:mod:`vskip_compile.backends`), so an
engine backend plugs in without another code path.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.dtypes import numpy_dtype
from ..core.errors import VskipError
from ..core.files import input_file, read_json
from ..core.sidecar import SIDECAR, load_sidecar_file
from ..core.plan import Plan
from ..core.routing import is_routing_input, routing_feeds, routing_layers
from ..core.visual_rows import ROW_INPUTS, row_feeds, shared_rows, visual_mask
from ..host import vision_feeds
from ..host.decoder import decoder_extras
from ..host.positions import decode_positions, mrope_positions, text_positions
from ..core.embedding import embed, read_table

TEXT_INPUTS = ("input_ids", "attention_mask")
# Modality ids a processor returns beside the ids; vskip derives them from input_ids, so
# they are accepted and not read.
MODALITY_INPUTS = ("mm_token_type_ids", "token_type_ids")
MAX_CONFIG_BYTES = 4 << 20
# Backends that run the export's graphs as they are; the PyTorch ones run the prefill only.
GENERATE_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "onnx-ref")


@dataclass
class Timings:
    """Seconds per stage; decode tokens per second over the steps after the first token."""

    vision: float = 0.0
    prefill: float = 0.0            # host preparation and the prefill graph
    decode: float = 0.0
    steps: int = 0                  # decode graph runs
    processor: float = 0.0

    @property
    def first_token(self) -> float:
        """Time to first token: the prompt's processing, vision and prefill."""
        return self.processor + self.vision + self.prefill

    @property
    def tokens_per_second(self) -> float | None:
        return self.steps / self.decode if self.steps and self.decode > 0 else None

    def to_dict(self) -> dict:
        return {"processor_s": self.processor, "vision_s": self.vision, "prefill_s": self.prefill,
                "first_token_s": self.first_token, "decode_s": self.decode, "decode_steps": self.steps,
                "decode_tokens_per_s": self.tokens_per_second,
                "total_s": self.first_token + self.decode}


@dataclass
class Generation:
    token_ids: list[list[int]]       # the new tokens of each prompt, up to and with its EOS
    visual_rows: np.ndarray          # [B, S] bool: the rows treated as visual
    timings: Timings
    text: list[str] | None = None
    plan: str | None = None          # the plan's description, when one was applied
    extras: dict = field(default_factory=dict)


class Runtime:
    """An export's graphs loaded on one backend, ready to generate.

    ``compiled``: a prefill graph compiled from this export's ``prefill.onnx`` (it
    replaces it). ``backend``: one of :data:`GENERATE_BACKENDS`, or ``trt`` for engines:
    with ``engines`` every graph runs the engine `vskip build` wrote beside it
    (``GRAPH.engine``, checked to be built from that graph), else each gets an engine built
    in memory.
    """

    def __init__(self, export_dir: str | Path, *, compiled: str | Path | None = None, backend: str = "ort-cpu",
                 threads: int | None = None, progress: Callable[[str], None] | None = None, engines: bool = False):
        from ..backends import check_engines, engine_options, get_backend

        self.directory = Path(export_dir)
        if not self.directory.is_dir():
            raise VskipError(f"{self.directory}: not an export directory (run `vskip export SOURCE -o DIR`)")
        self.sidecar = load_sidecar_file(input_file(self.directory / SIDECAR, "export sidecar"))
        sidecar = self.sidecar.require(("family", "prefill", "decode", "embedding", "config", "position_rank",
                                        "image_token_id"),
                                       "re-export with this vskip: `vskip export` writes what generate needs")
        if backend not in GENERATE_BACKENDS + ("trt",):
            raise VskipError(f"--backend {backend}: generate runs exported graphs on {', '.join(GENERATE_BACKENDS)} "
                             "or trt; the PyTorch backends run prefill graphs only")
        check_engines((backend,), engines)
        self.backend = get_backend(backend)
        self.config = read_json(self.directory / sidecar.config, "model config", MAX_CONFIG_BYTES)
        self.table = read_table(input_file(self.directory / sidecar.embedding, "embedding table"))
        if self.table.shape != (sidecar.vocab_size, sidecar.hidden_size):
            raise VskipError(f"{self.directory / sidecar.embedding}: a {self.table.shape[0]} x {self.table.shape[1]} "
                             f"table for a model of vocab {sidecar.vocab_size} and hidden {sidecar.hidden_size}")
        self.float_type = numpy_dtype(sidecar.float_type)

        def load(path: Path, what: str):
            if progress:
                progress(f"loading {what} {path}")
            return self.backend.load(path, threads=threads, sidecar=sidecar,
                                     **engine_options(self.backend, path, engines))

        prefill = Path(compiled) if compiled is not None else self.directory / sidecar.prefill.file
        self.prefill = load(prefill, "prefill graph")
        self._check_prefill(prefill)
        self.decode = load(self.directory / sidecar.decode.file, "decode graph")
        if [s.name for s in self.decode.inputs][:1] != ["inputs_embeds"]:
            raise VskipError(f"{self.directory / sidecar.decode.file}: a decode graph that takes token ids (vskip "
                             "before the embedding table); re-export with this vskip")
        self.vision = load(self.directory / sidecar.vision.file, "vision graph") if sidecar.vision else None
        names = [s.name for s in self.prefill.inputs]
        self.row_names = [name for name in names if name in ROW_INPUTS]
        # A routable prefill (vskip-compile --routable) takes the plan at run time.
        self.routing_names = [name for name in names if is_routing_input(name)]
        self.routable_layers = routing_layers(self.routing_names)
        self.plan_description = _plan_description(prefill) if self.row_names else None
        self.cache_names = [n for n in sidecar.prefill.outputs if n.startswith("present.")]

    def _check_prefill(self, path: Path) -> None:
        """A compiled graph must be this export's prefill graph with row inputs."""
        expected = list(self.sidecar.prefill.inputs)
        names = [s.name for s in self.prefill.inputs if not s.name.startswith("vskip_")]
        outputs = [s.name for s in self.prefill.outputs]
        hidden = next((s.shape[-1] for s in self.prefill.inputs if s.name == "inputs_embeds"), None)
        if names != expected or outputs != list(self.sidecar.prefill.outputs) or hidden != self.sidecar.hidden_size:
            raise VskipError(f"{path}: not a prefill graph of the export in {self.directory} (its inputs, outputs "
                             "or widths differ); compile this export's prefill.onnx")
        from ..core.sidecar import read_sidecar

        beside = read_sidecar(path) if path.parent != self.directory else None
        if beside is not None and (beside.source, beside.seed) != (self.sidecar.source, self.sidecar.seed):
            raise VskipError(f"{path}: compiled from {beside.source} (seed {beside.seed}), but the export in "
                             f"{self.directory} is {self.sidecar.source} (seed {self.sidecar.seed})")

    def _check_positions(self, positions: np.ndarray, max_new_tokens: int) -> None:
        """Refuse a run whose last fed token would sit past the model's trained positions
        (rotary tables beyond them give garbage, silently)."""
        text = self.config.get("text_config") or self.config
        limit = text.get("max_position_embeddings")
        last = int(np.max(positions)) + max_new_tokens - 1 if positions.size else max_new_tokens - 1
        if isinstance(limit, int) and last >= limit:
            raise VskipError(f"the prompt reaches position {int(np.max(positions))} and --max-new-tokens "
                             f"{max_new_tokens} would feed position {last}, past the model's "
                             f"max_position_embeddings {limit}: ask for at most {limit - int(np.max(positions))} "
                             "new tokens or shorten the prompt")

    # ------------------------------------------------------------------ stages
    def prefill_feeds(self, inputs: dict[str, np.ndarray], span: bool = False,
                      timings: Timings | None = None, plan: Plan | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
        """The prefill graph's feeds for ``inputs`` (a routable prefill's rows for ``plan``,
        vanilla without one); also the positions and the visual rows."""
        timings = timings or Timings()
        if plan is not None and self.routable_layers is None:
            raise VskipError("a plan at run time needs a routable prefill (vskip-compile --routable, passed as "
                             "--compiled); this one applies its own plan, or none")
        if plan is not None and plan.num_layers != self.routable_layers:
            raise VskipError(f"the plan has {plan.num_layers} layers but the routable prefill has "
                             f"{self.routable_layers}; use a plan made for this model")
        ids, mask = _text_inputs(inputs)
        sidecar = self.sidecar
        is_image = ids == sidecar.image_token_id
        pixels = {k: v for k, v in inputs.items() if k not in TEXT_INPUTS + MODALITY_INPUTS}
        vision_out: dict[str, np.ndarray] = {}
        start = time.perf_counter()
        if is_image.any():
            if self.vision is None:
                raise VskipError(f"{self.directory}: the prompt has image tokens but the export has no vision graph "
                                 "(re-export without --no-vision)")
            if not pixels:
                raise VskipError("the prompt has image tokens but no pixel inputs (pixel_values, ...)")
            feeds = vision_feeds(sidecar.family, self.config, pixels)
            feeds = {s.name: _typed(feeds[s.name], s.dtype) for s in self.vision.inputs if s.name in feeds}
            vision_out = self.vision.run(feeds)
            rows = vision_out["image_features"]
            if rows.shape[0] != int(is_image.sum()):
                raise VskipError(f"the images give {rows.shape[0]} image rows but the prompts have "
                                 f"{int(is_image.sum())} image tokens: one image marker per image, expanded by "
                                 "the model's processor")
        elif pixels:
            raise VskipError(f"pixel inputs ({', '.join(pixels)}) but no image tokens in the prompt")
        timings.vision = time.perf_counter() - start
        start = time.perf_counter()
        embeds = embed(self.table, np.where(is_image, 0, ids)).astype(self.float_type, copy=False)
        if vision_out:
            embeds[is_image] = vision_out["image_features"].astype(self.float_type, copy=False)
        if sidecar.position_rank == 3:
            merge = int((self.config.get("vision_config") or {}).get("spatial_merge_size", 1))
            positions = mrope_positions(ids, mask, sidecar.image_token_id, inputs.get("image_grid_thw"), merge)
        else:
            positions = text_positions(mask)
        feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}
        feeds.update(decoder_extras(sidecar.family, self.config, ids, mask, sidecar.image_token_id, vision_out))
        visual = visual_mask(ids, sidecar.image_token_id, span)
        if self.row_names:
            feeds.update(row_feeds(shared_rows(visual), self.row_names))
        if self.routing_names:
            routed = plan or Plan.empty(self.routable_layers)
            feeds.update(routing_feeds(routed, shared_rows(visual) if not routed.is_empty else visual[0],
                                       self.routing_names))
        specs = {s.name: s for s in self.prefill.inputs}
        feeds = {name: _typed(value, specs[name].dtype) for name, value in feeds.items()}
        timings.prefill = time.perf_counter() - start
        return feeds, positions, visual

    def generate(self, inputs: dict[str, np.ndarray], *, max_new_tokens: int = 32, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, span: bool = False, ignore_eos: bool = False,
                 on_token: Callable[[int, int], None] | None = None, plan: Plan | None = None) -> Generation:
        """Generate up to ``max_new_tokens`` for every prompt of ``inputs`` (see the module).
        ``ignore_eos`` runs all ``max_new_tokens`` steps (benchmarks). ``plan``: the plan a
        routable prefill applies to this call (None: vanilla)."""
        if max_new_tokens < 1:
            raise VskipError("--max-new-tokens must be at least 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise VskipError("--temperature must be >= 0 and --top-p in (0, 1]")
        timings = Timings()
        feeds, positions, visual = self.prefill_feeds(inputs, span, timings, plan)
        self._check_positions(positions, max_new_tokens)
        rng = np.random.default_rng(seed)
        eos = set() if ignore_eos else set(self.sidecar.eos_token_ids or ())
        start = time.perf_counter()
        outputs, cache = self.prefill.run_kept(feeds, tuple(self.cache_names))
        timings.prefill += time.perf_counter() - start
        batch = feeds["attention_mask"].shape[0]
        mask = feeds["attention_mask"]
        tokens: list[list[int]] = [[] for _ in range(batch)]
        done = np.zeros(batch, dtype=bool)
        pad = self.sidecar.pad_token_id or 0
        decode_types = {s.name: s.dtype for s in self.decode.inputs}
        step = 0
        start = time.perf_counter()
        while True:
            logits = np.asarray(outputs["logits"][:, -1], dtype=np.float32)
            _check_finite(logits, step)
            chosen = _choose(logits, temperature, top_p, rng)
            for b in range(batch):
                if not done[b]:
                    tokens[b].append(int(chosen[b]))
                    if on_token:
                        on_token(b, int(chosen[b]))
                    done[b] = int(chosen[b]) in eos
            step += 1
            if done.all() or step >= max_new_tokens:
                break
            # Finished prompts go on with padding tokens, as generate pads them; their
            # tokens are no longer recorded.
            next_ids = np.where(done, pad, chosen).astype(np.int64)[:, None]
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=mask.dtype)], axis=1)
            step_feeds = {"inputs_embeds": embed(self.table, next_ids), "attention_mask": mask,
                          "position_ids": decode_positions(positions, 1, done=step - 1)}
            step_feeds = {k: _typed(v, decode_types[k]) for k, v in step_feeds.items()}
            step_feeds.update({f"past_key_values.{name[len('present.'):]}": value for name, value in cache.items()})
            outputs, cache = self.decode.run_kept(step_feeds, tuple(self.cache_names))
            timings.steps += 1
        timings.decode = time.perf_counter() - start
        description = _describe(plan) if plan is not None else self.plan_description
        return Generation(tokens, visual, timings, plan=description)


def generate(export_dir: str | Path, inputs: dict[str, np.ndarray], *, compiled: str | Path | None = None,
             backend: str = "ort-cpu", threads: int | None = None, **options) -> Generation:
    """Load ``export_dir`` on ``backend`` and generate for ``inputs`` (see :class:`Runtime`)."""
    return Runtime(export_dir, compiled=compiled, backend=backend, threads=threads).generate(inputs, **options)


# ---------------------------------------------------------------------- helpers
def _text_inputs(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if "input_ids" not in inputs:
        raise VskipError("the inputs have no input_ids")
    ids = np.asarray(inputs["input_ids"])
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or ids.shape[1] == 0:
        raise VskipError(f"input_ids must be a [batch, length] integer array, got {ids.dtype} {ids.shape}")
    mask = np.asarray(inputs.get("attention_mask", np.ones_like(ids)))
    if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
        raise VskipError(f"attention_mask must be 0/1 of input_ids' shape {ids.shape}, got {mask.dtype} {mask.shape}")
    if (mask[:, -1] == 0).any():
        raise VskipError("attention_mask must pad on the left: every prompt's last token must be real")
    return ids.astype(np.int64), mask.astype(np.int64)


def _typed(value: np.ndarray, dtype) -> np.ndarray:
    return np.asarray(value) if dtype is None else np.asarray(value).astype(dtype, copy=False)


def _check_finite(logits: np.ndarray, step: int) -> None:
    if not np.isfinite(logits).all():
        where = "the prefill" if step == 0 else f"decode step {step}"
        raise VskipError(f"{where} gave non-finite logits; run `vskip validate` on the graphs (an fp16 "
                         "overflow? try --dtype bfloat16)")


def _choose(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> np.ndarray:
    """Greedy (temperature 0) or nucleus sampling of one token per row."""
    if temperature == 0:
        return logits.argmax(axis=-1)
    scaled = logits / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=-1, keepdims=True)
    chosen = np.empty(len(probs), dtype=np.int64)
    for b, p in enumerate(probs):
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        keep = order[:int(np.searchsorted(cumulative, top_p) + 1)]
        weights = p[keep] / p[keep].sum()
        chosen[b] = keep[rng.choice(len(keep), p=weights)]
    return chosen


def _plan_description(path: Path) -> str | None:
    from ..core.graph_io import load_graph, recorded_plan

    plan = recorded_plan(load_graph(path, weights_needed=False), path)
    return None if plan is None else _describe(plan)


def _describe(plan: Plan) -> str:
    from ..bench.report import describe_plan

    return describe_plan(plan)


@contextlib.contextmanager
def compiled_on_the_fly(export_dir: str | Path, plan_path: str | Path, progress: Callable[[str], None] | None = None):
    """The export's prefill compiled with ``plan_path``, for the length of the block.

    The graph goes beside the export's prefill (it shares its external weights), under a
    hidden name registered as a temporary file, so it is removed however the block is
    left, signals included.
    """
    import os

    from ..compile import compile_model
    from ..core.files import check_directory, register_temp, release_temp
    from ..core.plan import load_plan

    directory = Path(export_dir)
    sidecar = load_sidecar_file(input_file(directory / SIDECAR, "export sidecar")).require(("prefill", "num_layers"))
    plan, info = load_plan(plan_path)
    info.check_model(sidecar.family, sidecar.num_layers)
    try:
        check_directory(directory)
    except VskipError:
        raise VskipError(f"{directory}: not writable, and --plan compiles beside the export's prefill; compile "
                         "elsewhere with `vskip-compile` and pass --compiled") from None
    target = directory / f".generate-{os.getpid()}.prefill.onnx"
    register_temp(target)
    try:
        compile_model(directory / sidecar.prefill.file, plan, target, progress=progress)
        yield target
    finally:
        release_temp(target, remove=True)
