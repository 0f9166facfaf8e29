import sys

from xmatch.cli import main

sys.exit(main())
