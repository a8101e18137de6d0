import sys

from benches.relay.cli import main

sys.exit(main())
