"""Family modules; importing this package registers each one with ``models.family``."""

from . import qwen2_vl  # noqa: F401
from . import qwen2_5_vl  # noqa: F401
from . import qwen3_vl  # noqa: F401
from . import llava  # noqa: F401
from . import internvl  # noqa: F401
from . import smolvlm  # noqa: F401
from . import gemma3  # noqa: F401
