"""vskip: skip work on visual tokens inside multimodal LLM decoders, as a graph compiler.

Importing this package is cheap on purpose: torch and transformers load only when a
model is exported or a reference is run (``vskip_compile.models``), and compiling needs
only onnx and onnx-graphsurgeon (``vskip_compile.passes``).
"""

__version__ = "0.1.0"


def generate(export_dir, inputs, **options):
    """Generate from the model's ``inputs`` (numpy arrays under transformers' names) on an
    export's graphs; see :func:`vskip_compile.runtime.generate.generate`. Returns a
    :class:`~vskip_compile.runtime.generate.Generation` (token ids, timings)."""
    from .runtime.generate import generate as run

    return run(export_dir, inputs, **options)
