import sys

from headkit.cli import main

sys.exit(main())
