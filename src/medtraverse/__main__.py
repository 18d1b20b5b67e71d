"""`python -m medtraverse` (used by `accelerate launch -m medtraverse`)."""

import sys

from medtraverse.cli import main

sys.exit(main())
