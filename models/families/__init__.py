"""Family modules; importing this package registers each one with ``models.family``."""

from . import qwen2_vl  # noqa: F401
