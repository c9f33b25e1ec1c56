import sys

from microturn.cli import main

sys.exit(main())
