"""vskip: skip work on visual tokens inside multimodal LLM decoders, as a graph compiler.

Importing this package is cheap on purpose: torch and transformers load only when a
model is exported or a reference is run (``vskip_compile.models``), and compiling needs
only onnx and onnx-graphsurgeon (``vskip_compile.passes``).
"""

__version__ = "0.1.0"
