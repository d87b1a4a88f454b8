import sys

from headkit.cli.main import main

sys.exit(main())
