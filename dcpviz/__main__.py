"""`python -m dcpviz`: the command line (see ``dcpviz.cli``)."""

import sys

from dcpviz.cli import main

sys.exit(main())
