"""The fixed-size vision towers' host feeds (``vskip_compile.host.vision_fixed``: Gemma3,
InternVL, SmolVLM) and graphs, against transformers.

What the host computes for SmolVLM (flattening [batch, images], dropping the all-zero
padding images, the pixel-to-patch mask) is held to what ``get_image_features`` hands its
vision tower, captured with a hook. SmolVLM's patch position ids are made in the graph by
a restated bucketize: checked against the model's embeddings on every grid side up to 48,
and through ONNX Runtime on a 19-patch grid, where coordinates fall on torch's rounded
bucket boundaries, with partial and odd masks and a real SmolVLM image processor's frames
(tiles, global frames, padding images). The tiny preset's unsplit layout is checked against
that processor, Gemma3's graph in fp16, LLaVA's in bf16, and every host refusal is one line.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
from transformers.models.smolvlm.modeling_smolvlm import SmolVLMVisionEmbeddings
from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

from conftest import tiny_model
from helpers import assert_close
from vskip_compile.core.errors import VskipError
from vskip_compile.host import vision_feeds
from vskip_compile.models.export import _export_one
from vskip_compile.models.families.smolvlm import _SmolVLMEmbeddings, image_seq_len
from vskip_compile.models.family import get_family
from vskip_compile.models.inputs import synthetic_prompt
from vskip_compile.models.loading import load_model
from vskip_compile.models.vision import config_dict, decoder_image_rows, export_vision, host_feeds

# A SmolVLM tower on a 19 x 19 patch grid (38 px in 2 px patches, no pixel shuffle): 1/19
# is inexact in float32, so coordinates of a full grid sit on rounded bucket boundaries
# (with this torch build, the model's own full-grid positions are not even arange(361)).
GRID_SIDE, GRID_PATCH = 19, 2

# Ops whose output shape depends on tensor values, or that hide control flow.
DATA_DEPENDENT = {"NonZero", "Compress", "Unique", "Loop", "If", "Scan"}


def _export(family, model, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_vision(family, model, path, 20, False, _export_one)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The SmolVLM tiny preset on the 19-patch grid, and its vision graph."""
    family = get_family("smolvlm")
    config = family.tiny_config()
    config.vision_config.image_size, config.vision_config.patch_size = GRID_SIDE * GRID_PATCH, GRID_PATCH
    config.scale_factor = 1
    torch.manual_seed(0)
    model = family.model_class()._from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():  # unit-scale rows: a wrong position id shows far above the tolerance
        model.model.vision_model.embeddings.position_embedding.weight.normal_()
    path = tmp_path_factory.mktemp("vision-smolvlm-grid") / "vision.onnx"
    return SimpleNamespace(family=family, model=model, path=path, session=_export(family, model, path))


def _model_features(model, pixels: torch.Tensor, mask: torch.Tensor | None) -> np.ndarray:
    """What SmolVLM's ``get_image_features`` hands on, all images concatenated."""
    with torch.no_grad():
        return torch.cat(list(model.model.get_image_features(pixels, mask).pooler_output)).numpy()


def _tower_inputs(model, pixels: torch.Tensor, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The kwargs ``get_image_features`` passes the vision tower (its padding-free pixels
    and patch mask)."""
    seen = {}
    hook = model.model.vision_model.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    try:
        _model_features(model, pixels, mask)
    finally:
        hook.remove()
    return seen


def _masks(size: int) -> torch.Tensor:
    """[2, 3, size, size] pixel masks: full, a top-left region (how padding to the batch's
    largest image leaves it), a one-pixel-high strip, and a region touching neither the
    first row nor the first column (its extents, counted along those, are zero: its
    coordinates are nan and inf, as in the model); then two padding slots."""
    mask = torch.zeros(2, 3, size, size, dtype=torch.long)
    mask[0, 0] = 1
    mask[0, 1, :size * 4 // 5, :size * 11 // 20] = 1
    mask[0, 2, :1, :] = 1
    mask[1, 0, size // 4: size * 3 // 4, size // 6: size // 2] = 1
    return mask


def _padded_pixels(size: int, seed: int) -> torch.Tensor:
    pixels = torch.randn(2, 3, 3, size, size, generator=torch.Generator().manual_seed(seed))
    pixels[1, 1:] = 0  # row 1 holds one image, padded like the processor pads
    return pixels


# --- SmolVLM host feeds against get_image_features ----------------------------------------

@pytest.mark.parametrize("case", ["padded-rows", "int-mask", "no-mask", "all-padding"])
def test_smolvlm_host_matches_what_the_model_hands_its_tower(case):
    loaded = tiny_model("smolvlm")
    size = loaded.config.vision_config.image_size
    pixels, mask = _padded_pixels(size, seed=1), _masks(size)
    if case == "padded-rows":
        mask = mask.bool()
    elif case == "no-mask":
        mask = None
    elif case == "all-padding":
        pixels, mask = torch.zeros_like(pixels), torch.zeros_like(mask)
    inputs = {"pixel_values": pixels} if mask is None else {"pixel_values": pixels, "pixel_attention_mask": mask}
    feeds = host_feeds(loaded.family, loaded.model, inputs)
    seen = _tower_inputs(loaded.model, pixels, mask)
    np.testing.assert_array_equal(feeds["pixel_values"], seen["pixel_values"].numpy())
    np.testing.assert_array_equal(feeds["patch_attention_mask"], seen["patch_attention_mask"].numpy())
    assert len(feeds["pixel_values"]) == {"all-padding": 1}.get(case, 4)


def test_smolvlm_position_ids_match_the_model_embeddings():
    """The graph's restated bucketize against the model's embeddings, exactly, on every
    grid side up to 48: masks of every valid height with random widths, full, and one
    off the top-left corner (nan coordinates)."""
    for side in range(2, 49):
        config = SmolVLMVisionConfig(hidden_size=4, image_size=side, patch_size=1, num_channels=1)
        torch.manual_seed(side)
        model = SmolVLMVisionEmbeddings(config).eval()
        ours = _SmolVLMEmbeddings(model)
        rng = np.random.default_rng(side)
        mask = torch.zeros(side + 2, side, side, dtype=torch.bool)
        for height in range(1, side + 1):
            mask[height - 1, :height, :int(rng.integers(1, side + 1))] = True
        mask[side] = True
        mask[side + 1, side // 2:, side // 3:] = True
        pixels = torch.randn(len(mask), 1, side, side)
        with torch.no_grad():
            assert torch.equal(ours(pixels, mask), model(pixels, mask)), f"grid side {side}"


# --- SmolVLM graph through ONNX Runtime -----------------------------------------------------

def test_smolvlm_graph_with_partial_masks_on_a_rounded_grid(grid):
    family, model = grid.family, grid.model
    size = GRID_SIDE * GRID_PATCH
    pixels, mask = _padded_pixels(size, seed=2), _masks(size)
    outputs = grid.session.run(None, host_feeds(family, model, {"pixel_values": pixels, "pixel_attention_mask": mask}))
    assert_close(outputs[0], _model_features(model, pixels, mask), what="smolvlm 19-grid, partial masks")


def _processor(size: int, split: bool) -> SmolVLMImageProcessorPil:
    """transformers' own SmolVLM image processor (PIL backend) at a tower of ``size`` px:
    frames squared to ``size``, split into tiles when ``split`` (the processor's default)."""
    return SmolVLMImageProcessorPil(do_image_splitting=split, size={"longest_edge": 2 * size},
                                    max_image_size={"longest_edge": size})


def _pictures(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    shapes = [(40, 56, 3), (30, 30, 3), (20, 70, 3), (64, 24, 3)]
    return [Image.fromarray(rng.integers(0, 255, shapes[i % len(shapes)], dtype=np.uint8)) for i in range(count)]


@pytest.mark.parametrize("rows", [[2, 1], [1]], ids=["two-rows-padded", "one-image"])
def test_smolvlm_graph_on_a_real_processors_frames(grid, rows):
    family, model = grid.family, grid.model
    pictures = iter(_pictures(sum(rows), seed=len(rows)))
    batch = _processor(GRID_SIDE * GRID_PATCH, split=len(rows) > 1)(
        images=[[next(pictures) for _ in range(n)] for n in rows], return_tensors="pt")
    pixels, mask = batch["pixel_values"], batch["pixel_attention_mask"]
    feeds = host_feeds(family, model, {"pixel_values": pixels, "pixel_attention_mask": mask})
    if len(rows) > 1:  # the rows' frame counts differ, so padding frames were dropped
        assert len(feeds["pixel_values"]) < pixels.shape[0] * pixels.shape[1]
    outputs = grid.session.run(None, feeds)
    assert_close(outputs[0], _model_features(model, pixels, mask), what=f"smolvlm processor frames {rows}")


def test_tiny_smolvlm_prompt_is_what_the_processor_sends_unsplit():
    """The tiny preset's image (tokens, one frame, all-ones mask) is a real SmolVLM
    processor's output for an image with ``do_image_splitting=False``."""
    loaded = tiny_model("smolvlm")
    config = loaded.config
    size = config.vision_config.image_size
    batch = _processor(size, split=False)(images=[_pictures(2, seed=0)], return_tensors="np",
                                          return_row_col_info=True)
    ours = loaded.family.image_prompt(config, torch.Generator().manual_seed(0))
    assert batch["pixel_values"].shape[2:] == tuple(ours.pixels["pixel_values"].shape[1:])
    assert batch["pixel_attention_mask"].all() and ours.pixels["pixel_attention_mask"].all()
    assert image_seq_len(config) == loaded.model.model.image_seq_len
    names = {"<fake>": config.fake_image_token_id, "<global>": config.global_image_token_id,
             "<image>": config.image_token_id}
    for rows, cols in zip(batch["rows"][0], batch["cols"][0]):
        text = get_image_prompt_string(rows, cols, image_seq_len(config), "<fake>", "<image>", "<global>")
        assert [names[t] for t in text.replace(">", "> ").split()] == ours.token_ids


# --- Gemma3 in fp16 --------------------------------------------------------------------------

def test_gemma3_vision_graph_in_float16(tmp_path):
    """The fp16 graph against the fp16 model's own image rows.

    ONNX Runtime CPU computes most fp16 op chains in fp32 through inserted casts, while
    PyTorch rounds after each op, so the two differ by rounding, as much as the fp16 model
    differs from the fp32 one. Tolerance: twice the fp16 model's own error against fp32,
    and at least one fp16 ulp at the rows' magnitude.
    """
    loaded = load_model("tiny:gemma3", dtype="float16")
    session = _export(loaded.family, loaded.model, tmp_path / "vision.onnx")
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 2, "image", 1], batch=2, seed=5)
    half = decoder_image_rows(loaded.family, loaded.model, prompt)["image_features"].float().numpy()
    full = decoder_image_rows(loaded.family, tiny_model("gemma3").model, prompt)["image_features"].numpy()
    (output,) = session.run(None, host_feeds(loaded.family, loaded.model, prompt.pixels, dtype="float16"))
    assert output.dtype == np.float16 and np.isfinite(output).all()
    ulp = float(np.spacing(np.float16(np.abs(full).max())))
    assert_close(output, half, atol=max(2 * float(np.abs(half - full).max()), ulp), what="gemma3 fp16 graph")
    _check_static_structure(tmp_path / "vision.onnx", loaded.family, loaded.config)


def test_llava_vision_graph_in_bfloat16(tmp_path):
    """The bf16 graph on onnx's reference evaluator (every op in bf16, rounded as a strictly
    typed engine stores it; ONNX Runtime CPU has no bf16 arithmetic) against the bf16
    model's own image rows.

    Both round after each op with different summation orders. Tolerance: twice the bf16
    model's own error against fp32, and at least two bf16 ulps at the rows' magnitude.
    """
    from vskip_compile.backends.onnx_reference import ReferenceBackend

    loaded = load_model("tiny:llava", dtype="bfloat16")
    path = tmp_path / "vision.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_vision(loaded.family, loaded.model, path, 20, False, _export_one)
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 2, "image", 1], batch=2, seed=5)
    half = decoder_image_rows(loaded.family, loaded.model, prompt)["image_features"].float().numpy()
    full = decoder_image_rows(loaded.family, tiny_model("llava").model, prompt)["image_features"].numpy()
    session = ReferenceBackend().load(path)
    output = session.infer(host_feeds(loaded.family, loaded.model, prompt.pixels, dtype="bfloat16"))["image_features"]
    assert output.dtype.name == "bfloat16"
    output = output.astype(np.float32)
    assert np.isfinite(output).all()
    ulp = 2.0 ** (np.floor(np.log2(np.abs(full).max())) - 7)  # bf16 keeps 8 significant bits
    assert_close(output, half, atol=max(2 * float(np.abs(half - full).max()), 2 * ulp), what="llava bf16 graph")
    _check_static_structure(path, loaded.family, loaded.config)


def test_smolvlm_graph_structure(grid):
    _check_static_structure(grid.path, grid.family, grid.model.config)


def _check_static_structure(path, family, config) -> None:
    """Inputs as the family lists them, the image axis symbolic, no data-dependent op."""
    graph = onnx.load(str(path), load_external_data=False).graph
    specs = family.vision_inputs(config)
    assert [i.name for i in graph.input] == [s.name for s in specs]
    for info in graph.input:
        assert info.type.tensor_type.shape.dim[0].dim_param, f"{info.name}: image axis is fixed"
    assert not {n.op_type for n in graph.node} & DATA_DEPENDENT


# --- refusals --------------------------------------------------------------------------------

def _zeros(*shape):
    return np.zeros(shape, dtype=np.float32)


REFUSALS = [
    ("gemma3", {"pixel_values": _zeros(2, 3, 30, 30)}, "shape (2, 3, 30, 30)"),
    ("gemma3", {"pixel_values": _zeros(1, 2, 3, 32, 32)}, "[images, 3, 32, 32]"),
    ("internvl", {"pixel_values": _zeros(2, 1, 24, 24)}, "[images, 3, 24, 24]"),
    ("internvl", {}, "no pixel_values"),
    ("smolvlm", {"pixel_values": _zeros(2, 3, 32, 32)}, "[batch, images, 3, 32, 32]"),
    ("smolvlm", {"pixel_values": _zeros(1, 2, 3, 32, 28)}, "shape (1, 2, 3, 32, 28)"),
    ("smolvlm", {"pixel_values": _zeros(1, 0, 3, 32, 32)}, "holds no images"),
    ("smolvlm", {"pixel_values": _zeros(1, 2, 3, 32, 32), "pixel_attention_mask": np.ones((1, 2, 32, 30), bool)},
     "pixel_attention_mask has shape (1, 2, 32, 30)"),
]


@pytest.mark.parametrize("family, inputs, says", REFUSALS, ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSALS)])
def test_host_refuses_pixels_the_graph_cannot_take(family, inputs, says):
    config = config_dict(tiny_model(family).model)
    with pytest.raises(VskipError) as caught:
        vision_feeds(family, config, inputs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{family}: ") and says in message, message


@pytest.mark.parametrize("family", ["gemma3", "internvl"])
def test_fixed_size_pixels_pass_through(family):
    loaded = tiny_model(family)
    size = loaded.config.vision_config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    pixels = np.random.default_rng(0).standard_normal((3, 3, height, width)).astype(np.float32)
    feeds = vision_feeds(family, config_dict(loaded.model), {"pixel_values": pixels, "num_crops": np.zeros(3)})
    assert list(feeds) == ["pixel_values"] and feeds["pixel_values"] is pixels
