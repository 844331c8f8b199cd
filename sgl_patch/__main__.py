"""``python -m sgl_patch demo``: the same as the ``sgl-patch`` command."""

import sys

from .cli import main

sys.exit(main())
