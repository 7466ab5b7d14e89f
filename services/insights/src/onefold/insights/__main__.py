"""`python -m onefold.insights` runs the insights service."""

from onefold.insights.bootstrap import main

raise SystemExit(main())
