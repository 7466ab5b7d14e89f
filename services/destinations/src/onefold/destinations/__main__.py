"""`python -m onefold.destinations` runs the destinations service."""

from onefold.destinations.bootstrap import main

raise SystemExit(main())
