"""`python -m onefold.ingest` runs the ingest service."""

from onefold.ingest.bootstrap import main

raise SystemExit(main())
