import sys

from dcpviz.cli import main

sys.exit(main())
