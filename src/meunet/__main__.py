import sys

from meunet.cli.main import main

sys.exit(main())
