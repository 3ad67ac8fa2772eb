import sys

from nemo_subnet.cli import main

sys.exit(main())
