"""Exporters, host-side input preparation and the PyTorch skip reference.

One family module per MLLM architecture under ``families/``, all sharing the core in
``export.py``, ``inputs.py`` and ``reference.py``. This package never imports
``vskip_compile.passes``.
"""
