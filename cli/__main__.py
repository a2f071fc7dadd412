import sys

from topdeck.cli.main import main

sys.exit(main())
