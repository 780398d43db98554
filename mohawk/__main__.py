import sys

from mohawk.cli import main

sys.exit(main())
