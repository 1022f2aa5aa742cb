import sys

from tunebudget.cli import main

sys.exit(main())
