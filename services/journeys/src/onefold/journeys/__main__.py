"""`python -m onefold.journeys` runs the journeys service."""

from onefold.journeys.bootstrap import main

raise SystemExit(main())
