"""The trained testbed: a tiny LLaVA that learned :mod:`.tasks`' visual question answering.

Random tiny weights prove that a compiled graph equals its reference, not that a plan keeps
accuracy; this checkpoint is the model whose accuracy a plan can be measured against
("retention"). It ships inside the package, addressable as ``testbed:vqa`` wherever a
checkpoint directory is accepted; ``tools/train_testbed.py`` reproduces it and
docs/testbed.md gives its design and measured accuracy.

Importing this package is cheap (no torch): the checkpoint is a directory, read by the
loaders that read any checkpoint directory.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import VskipError

PREFIX = "testbed:"
#: Packaged checkpoints by name: ``testbed:<name>`` is the directory here.
CHECKPOINTS = {"vqa": Path(__file__).resolve().parent / "vqa"}
VQA = f"{PREFIX}vqa"


def resolve(source: str) -> str:
    """A source as a loader reads it: ``testbed:<name>`` becomes its packaged checkpoint
    directory, anything else is returned unchanged."""
    if not source.startswith(PREFIX):
        return source
    name = source[len(PREFIX):]
    if name not in CHECKPOINTS:
        raise VskipError(f"unknown testbed {name!r}: the package has {', '.join(PREFIX + n for n in CHECKPOINTS)}")
    directory = CHECKPOINTS[name]
    if not (directory / "config.json").is_file():
        raise VskipError(f"{source}: its checkpoint is missing from {directory} (reinstall vskip, or rebuild it with "
                         "tools/train_testbed.py)")
    return str(directory)
