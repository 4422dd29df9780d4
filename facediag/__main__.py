import sys

from facediag.cli import main

sys.exit(main())
