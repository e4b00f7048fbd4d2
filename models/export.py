"""Export a model's decoder to ONNX: ``prefill.onnx``, ``decode.onnx`` and ``vskip.json``.

Files are written into a temporary sibling directory and moved into place only when all
of them exist, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import onnx
import torch

from vskip_compile.core.errors import VskipError
from vskip_compile.core.files import Outputs, check_directory, one_line, output_directory, usable_cores
from vskip_compile.core.dtypes import DTYPES
from vskip_compile.core.sidecar import SIDECAR, GraphEntry, Sidecar
from vskip_compile.core.islands import restore_norm_casts, softmax_islands

from .inputs import prepare_decoder_inputs, synthetic_prompt, Prompt
from .loading import LoadedModel, checkpoint_directory, load_model, timed
from vskip_compile.core.embedding import EMBEDDING_FILE, table_chunks, write_table

from .vision import CONFIG_FILE, VISION_GRAPH, config_dict, export_vision, vision_entry
from .wrappers import (DecodeStep, PrefillDecoder, decode_input_names, output_names,
                       prefill_input_names)

# Above this many parameter bytes, weights go to external data (protobuf caps a file at 2 GB).
EXTERNAL_DATA_BYTES = 256 * 2 ** 20
SUPPORTED_OPSETS = (20, 23)

# Sample sizes for tracing. torch.export specialises sizes 0 and 1, and the decode step
# needs a query of at least 3 to stay dynamic (DESIGN.md section 5).
_TRACE_BATCH, _TRACE_PAST, _TRACE_QUERY = 2, 5, 3


def describe(loaded: LoadedModel, opset: int, all_logits: bool, decode: bool = True,
             dtype: str = "float32", vision: bool = False) -> Sidecar:
    """The sidecar: what a compiler, a validator or the runtime needs to know about the export."""
    tc = loaded.text_config
    family = loaded.family
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    layers = tc.num_hidden_layers
    return Sidecar(
        family=family.model_type, source=loaded.source, seed=loaded.seed, num_layers=layers,
        hidden_size=tc.hidden_size, num_attention_heads=tc.num_attention_heads,
        num_key_value_heads=tc.num_key_value_heads, head_dim=head_dim, intermediate_size=tc.intermediate_size,
        vocab_size=tc.vocab_size, image_token_id=family.image_token_id(loaded.config),
        position_rank=family.position_rank, opset=opset, logits="all" if all_logits else "last", dtype=dtype,
        prefill=GraphEntry("prefill.onnx", tuple(prefill_input_names(family)), tuple(output_names(layers))),
        decode=GraphEntry("decode.onnx", tuple(decode_input_names(layers)), tuple(output_names(layers)))
        if decode else None,
        vision=vision_entry(family, loaded.config) if vision else None,
        embedding=EMBEDDING_FILE if vision else None, config=CONFIG_FILE if vision else None,
        eos_token_ids=_eos_ids(loaded), pad_token_id=getattr(tc, "pad_token_id", None),
        special_token_ids=tuple(sorted(family.special_token_ids(loaded.config))) or None,
        processor=processor_files(loaded.source) or None if vision else None,
    )


def _eos_ids(loaded: LoadedModel) -> tuple[int, ...] | None:
    """Where generation stops: the generation config's EOS ids, else the text config's."""
    generation = getattr(loaded.model, "generation_config", None)
    value = getattr(generation, "eos_token_id", None)
    if value is None:
        value = getattr(loaded.text_config, "eos_token_id", None)
    ids = [value] if isinstance(value, int) else list(value or [])
    return tuple(i for i in ids if isinstance(i, int)) or None


# A checkpoint's processor files that an export copies (what transformers' processors,
# tokenizers and chat templates read); nothing else of the checkpoint is copied.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")
# What the tiny presets' offline processor writes (models/processors.py).
TINY_PROCESSOR_FILES = ("chat_template.jinja", "processor_config.json", "tokenizer.json", "tokenizer_config.json")
MAX_PROCESSOR_FILE_BYTES = 64 * 2**20


def processor_files(source: str) -> tuple[str, ...]:
    """The processor files an export of ``source`` will hold."""
    path = checkpoint_directory(source)
    if path is None:
        return TINY_PROCESSOR_FILES
    names = tuple(n for n in PROCESSOR_FILES if path.is_dir() and (path / n).is_file() and not (path / n).is_symlink())
    # save_pretrained writes a generation config for every model: alone it is no processor
    # (the sidecar has its EOS ids already), and listing it would make generate try to load one.
    return () if set(names) <= {"generation_config.json"} else names


def _write_processor(loaded: LoadedModel, staging: Path, names: tuple[str, ...]) -> None:
    """The tiny preset's offline processor, or the checkpoint's processor files copied."""
    from vskip_compile.core.files import read_bytes

    directory = checkpoint_directory(loaded.source)
    if directory is None:
        from .processors import save_tiny_processor

        written = sorted(p.name for p in save_tiny_processor(loaded.family.model_type, loaded.config, staging))
        if written != sorted(names):
            raise VskipError(f"the tiny processor wrote {', '.join(written)}, not the files vskip expects")
        return
    for name in names:
        (staging / name).write_bytes(read_bytes(directory / name, "processor file", MAX_PROCESSOR_FILE_BYTES))


def has_vision(family, config) -> bool:
    """Whether vskip can export ``family``'s vision encoder yet."""
    try:
        family.vision_inputs(config)
    except NotImplementedError:
        return False
    return True


def _write_embedding(loaded: LoadedModel, path: Path, dtype: str) -> None:
    """The text model's input embeddings of every token id, block by block."""
    module = loaded.text_model.get_input_embeddings()
    rows = loaded.text_config.vocab_size

    def block(start: int, stop: int):
        with torch.no_grad():
            out = module(torch.arange(start, stop).unsqueeze(0))[0]
        return out.float().numpy()  # exact: the table is written back in the model's own type

    write_table(path, rows, loaded.text_config.hidden_size, dtype, table_chunks(block, rows))


def _trace_prompt(loaded: LoadedModel) -> Prompt:
    return synthetic_prompt(loaded.family, loaded.config, [3, "image", 2], batch=_TRACE_BATCH, seed=1)


def _prefill_dynamic_shapes(loaded: LoadedModel) -> dict:
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {"inputs_embeds": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    shapes["position_ids"] = {0: batch, 1: seq} if loaded.family.position_rank == 1 else {1: batch, 2: seq}
    axes = {"batch": batch, "seq": seq, "visual": torch.export.Dim("visual_rows")}
    extras = {e.name: {axis: axes[kind] for axis, kind in e.dynamic.items()} for e in loaded.family.extra_inputs}
    return {**shapes, "extras": tuple(extras.values())} if extras else shapes


@contextlib.contextmanager
def _without_quadratic_rewrites():
    """Leave out onnxscript's ``SlicesSplit`` rewrite while the exporter optimizes.

    The rule has two output nodes, and onnxscript matches such patterns by walking the
    whole graph for every candidate node: quadratic in depth. On a 36-layer tiny Qwen3-VL
    it took half of the prefill export (69.5 s with it, 37.5 s without). On vskip's exports
    of every family it rewrites nothing: the graphs serialized to the same bytes with and
    without it (measured once, docs/benchmarks.md), and tests/models/test_export_speed.py
    checks that the rule finds nothing to rewrite in them. Where onnxscript has no such
    rule the export runs as it would anyway: only its speed depends on this.
    """
    try:
        import onnxscript.rewriter as rewriter
    except ImportError:
        yield
        return
    saved = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if saved is None:
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in saved if getattr(r, "name", None) not in SLOW_REWRITES)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = saved


SLOW_REWRITES = ("SlicesSplit",)


def _export_one(module, args, path: Path, input_names, output_names_, dynamic_shapes, opset, external):
    """Trace and save one graph. The exporter's own chatter (stage banners on stdout,
    warnings about optional torchvision ops) is held back and shown only if it fails."""
    chatter = io.StringIO()
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), _without_quadratic_rewrites():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=input_names, output_names=output_names_,
                dynamic_shapes=dynamic_shapes, opset_version=opset, verbose=False,
            )
    except Exception:
        sys.stderr.write(chatter.getvalue())
        raise
    finally:
        torch_onnx_log.setLevel(level)
    program.save(str(path), external_data=external)
    _finish_graph(path)


def _finish_graph(path: Path) -> None:
    """The saved graph's last touches; a graph needing none is left as saved.

    - the fp32 islands of a typed graph (:mod:`vskip_compile.core.islands`);
    - ScatterND's ``reduction="none"`` (M-RoPE position updates) dropped: it is the
      default, and TensorRT before 10.9 refuses the attribute whatever its value.
    """
    model = onnx.load(str(path), load_external_data=False)
    if restore_norm_casts(model) + softmax_islands(model) + _drop_default_reductions(model):
        onnx.save_model(model, str(path))  # the graph only: external weights stay where they are


def _drop_default_reductions(model: onnx.ModelProto) -> int:
    dropped = 0
    for node in model.graph.node:
        if node.op_type in ("ScatterND", "ScatterElements"):
            for attribute in list(node.attribute):
                if attribute.name == "reduction" and attribute.s == b"none":
                    node.attribute.remove(attribute)
                    dropped += 1
    return dropped


def export_model(source: str, out_dir: str | Path, opset: int = 20, all_logits: bool = False,
                 force: bool = False, seed: int = 0, progress: Callable[[str], None] | None = print,
                 decode: bool = True, dtype: str = "float32", vision: bool = True) -> Sidecar:
    """Export SOURCE's decoder to OUT_DIR; returns its sidecar.

    ``decode=False`` writes only the prefill graph (all that compiling needs).
    ``vision`` (where vskip has the family's vision graph) adds what the runtime needs:
    ``vision.onnx``, the embedding table and the model's ``config.json``. ``dtype``
    (float32, float16, bfloat16) is the type the model is loaded and traced in, so the
    graph holds the model's own fp32 upcasts (norm statistics, rotary tables) and the
    PyTorch model in that type is its reference.
    """
    if opset not in SUPPORTED_OPSETS:
        raise VskipError(f"--opset {opset} is not supported: choose 20 (decomposed attention) or 23 (Attention op)")
    if dtype not in DTYPES:
        raise VskipError(f"--dtype {str(dtype)[:40]} is not supported: choose {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    outputs = Outputs(_checkpoint_files(source), force=force)
    names = _check_export_directory(out_dir, outputs, decode, vision, processor_files(source) if vision else ())

    with timed(progress, f"load {source}"):
        loaded = load_model(source, seed=seed, dtype=dtype)
    layers = loaded.text_config.num_hidden_layers
    external = sum(p.numel() * p.element_size() for p in loaded.model.parameters()) > EXTERNAL_DATA_BYTES
    vision = vision and has_vision(loaded.family, loaded.config)
    sidecar = describe(loaded, opset, all_logits, decode, dtype, vision)

    with outputs:
        staging = outputs.staging_directory(out_dir)
        try:
            inputs = prepare_decoder_inputs(loaded.family, loaded.model, _trace_prompt(loaded))
        except (RuntimeError, ValueError, IndexError) as exc:
            # An inconsistent checkpoint config (e.g. mrope_section not summing to head_dim/2)
            # fails here, inside transformers: the user's input, not a vskip bug.
            raise VskipError(f"{source}: the model fails on a sample prompt: {one_line(exc)}") from None
        prefill_args = tuple(inputs.feeds[name] for name in list(sidecar.prefill.inputs))

        def trace_prefill():
            _export_one(PrefillDecoder(loaded.family, loaded.model, all_logits), prefill_args,
                        staging / "prefill.onnx", list(sidecar.prefill.inputs), list(sidecar.prefill.outputs),
                        _prefill_dynamic_shapes(loaded), opset, external)

        def trace_decode():
            decode_args, decode_shapes = _decode_sample(loaded, inputs)
            _export_one(DecodeStep(loaded.family, loaded.model), decode_args, staging / "decode.onnx",
                        list(sidecar.decode.inputs), list(sidecar.decode.outputs), decode_shapes, opset, external)

        def trace_vision():
            export_vision(loaded.family, loaded.model, staging / VISION_GRAPH, opset, external, _export_one)

        def trace_rest():  # the decode graph, then the vision graph: about the prefill's time
            trace_decode()
            if vision:
                trace_vision()

        with torch.no_grad(), loaded.family.export_patches(loaded.model):
            if decode and usable_cores() >= 2:
                rest = " and vision" if vision else ""
                with timed(progress, f"trace prefill, and decode{rest} (two processes)"):
                    _in_parallel(trace_prefill, trace_rest)
            else:
                with timed(progress, "trace prefill"):
                    trace_prefill()
                if decode:
                    with timed(progress, "trace decode"):
                        trace_decode()
                if vision:
                    with timed(progress, "trace vision"):
                        trace_vision()
        if vision:
            with timed(progress, "write the embedding table"):
                _write_embedding(loaded, staging / EMBEDDING_FILE, dtype)
            (staging / CONFIG_FILE).write_text(json.dumps(config_dict(loaded.model), indent=2) + "\n")
            if sidecar.processor:
                _write_processor(loaded, staging, sidecar.processor)
        (staging / SIDECAR).write_text(sidecar.to_json())
        unexpected = sorted(p.name for p in staging.iterdir() if p.name not in names)
        if unexpected:
            raise VskipError(f"the exporter wrote files vskip does not know ({', '.join(unexpected)}); "
                             "nothing was published")
        with timed(progress, f"save {out_dir}"):
            outputs.publish_directory(staging, out_dir)
    if progress:
        progress(f"exported {loaded.family.model_type}: {layers} layers, opset {opset}, {dtype} -> {out_dir}")
    return sidecar


def _in_parallel(first: Callable[[], None], second: Callable[[], None]) -> None:
    """Run ``second`` in a forked child while this process runs ``first``; wait for both.

    Tracing is single-threaded Python (torch.export, its decompositions, the ONNX
    translation), so the prefill and decode graphs trace side by side on two cores: the
    36-layer tiny Qwen3-VL export went from 88.1 s to 54.4 s (docs/benchmarks.md). The
    child shares the loaded model copy-on-write (tracing never writes the weights), runs
    with one intra-op thread (no OpenMP team is inherited across fork), leaves by
    ``os._exit`` so none of the parent's exit handlers (the output transaction's cleanup)
    run in it, and sends back its error in one line; its file is written into the
    staging directory like the parent's.
    """
    import multiprocessing
    import signal
    import traceback

    receive, send = multiprocessing.Pipe(duplex=False)
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            receive.close()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            torch.set_num_threads(1)
            second()
            send.send(None)
        except BaseException as exc:  # everything goes back to the parent
            code = 1
            with contextlib.suppress(Exception):
                send.send((f"{type(exc).__name__}: {one_line(exc)}", traceback.format_exc()))
        finally:
            os._exit(code)
    send.close()
    try:
        first()
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        raise
    try:
        result = receive.recv()
    except EOFError:
        result = ("the tracing process ended without a word", "")
    _, status = os.waitpid(pid, 0)
    if result is not None or status != 0:
        message, details = result if result is not None else (f"the tracing process exited with status {status}", "")
        sys.stderr.write(details)
        raise RuntimeError(f"tracing the decode graph failed: {message}")


def export_files(decode: bool, vision: bool = False, processor: tuple[str, ...] = ()) -> list[str]:
    """The files an export writes (weights beside each graph once they pass EXTERNAL_DATA_BYTES)."""
    graphs = ["prefill.onnx"] + (["decode.onnx"] if decode else []) + ([VISION_GRAPH] if vision else [])
    runtime = [EMBEDDING_FILE, CONFIG_FILE, *processor] if vision else []
    return [*graphs, *(f"{g}.data" for g in graphs), SIDECAR, *runtime]


def _check_export_directory(out_dir: Path, outputs: Outputs, decode: bool, vision: bool,
                            processor: tuple[str, ...]) -> set[str]:
    """Refuse, before the slow load, an OUT_DIR the export could not or must not write."""
    if out_dir.is_symlink() and out_dir.exists():
        raise VskipError(f"{out_dir}: is a symbolic link; name a real directory for the export")
    exists = output_directory(out_dir, "the export")
    check_directory(out_dir.parent if str(out_dir.parent) else Path("."))  # the staging directory goes there
    names = export_files(decode, vision, processor)
    if exists:
        for name in names:  # each file is claimed: never an input, never replaced without --force
            if os.path.lexists(out_dir / name):
                outputs.claim(out_dir / name, "export file")
    return set(names)


def _checkpoint_files(source: str) -> list[Path]:
    """A checkpoint directory's own files: an export must never be written over them."""
    path = checkpoint_directory(source)
    if path is None or not path.is_dir():
        return []
    return [item for item in path.iterdir() if item.is_file()]


def _decode_sample(loaded: LoadedModel, inputs) -> tuple[tuple, dict]:
    """Sample decode inputs: a past of _TRACE_PAST rows and a query of _TRACE_QUERY tokens."""
    family, layers = loaded.family, loaded.text_config.num_hidden_layers
    tc = loaded.text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    generator = torch.Generator().manual_seed(2)
    dtype = next(loaded.model.parameters()).dtype
    past = [torch.randn(_TRACE_BATCH, tc.num_key_value_heads, _TRACE_PAST, head_dim, generator=generator)
            .to(dtype) for _ in range(2 * layers)]
    embeds = torch.randn(_TRACE_BATCH, _TRACE_QUERY, tc.hidden_size, generator=generator).to(dtype)
    mask = torch.ones(_TRACE_BATCH, _TRACE_PAST + _TRACE_QUERY, dtype=torch.long)
    step = torch.arange(_TRACE_QUERY).expand(_TRACE_BATCH, -1)
    prior = torch.arange(_TRACE_PAST).expand(_TRACE_BATCH, -1)
    if family.position_rank > 1:
        prior = prior.unsqueeze(0).expand(family.position_rank, -1, -1)
    positions = family.decode_position_ids(prior, step)
    auto = torch.export.Dim.AUTO
    shapes = {"inputs_embeds": {0: auto, 1: auto}, "attention_mask": {0: auto, 1: auto},
              "position_ids": {0: auto, 1: auto} if family.position_rank == 1 else {1: auto, 2: auto},
              "past": tuple({0: auto, 2: auto} for _ in past)}
    return (embeds, mask, positions, *past), shapes
