import sys

from hidra_core.cli import main

sys.exit(main())
