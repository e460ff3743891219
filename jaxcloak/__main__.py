"""`python -m jaxcloak ...`: the same as the `jaxcloak` command."""

import sys

from jaxcloak.cli import main

sys.exit(main())
