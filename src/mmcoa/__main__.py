"""``python -m mmcoa`` (and ``torchrun ... -m mmcoa train``): the command line."""

import sys

from mmcoa.cli import main

sys.exit(main())
