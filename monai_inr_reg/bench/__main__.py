"""``python -m monai_inr_reg.bench SUITE ...``: see :func:`monai_inr_reg.bench.main`."""

import sys

from . import main

sys.exit(main())
