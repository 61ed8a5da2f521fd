import sys

from hidra_core.cli.main import main

sys.exit(main())
