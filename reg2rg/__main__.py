import sys

from reg2rg.cli import main

sys.exit(main())
