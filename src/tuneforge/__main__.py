import sys

from tuneforge.cli.main import main

sys.exit(main())
