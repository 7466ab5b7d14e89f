"""`python -m onefold.segments` runs the segments service."""

from onefold.segments.bootstrap import main

raise SystemExit(main())
