"""``python -m ppjax.cli``: the ``ppjax`` command."""

import sys

from ppjax.cli import main

sys.exit(main())
