"""`python -m onefold.consent` runs the consent service."""

from onefold.consent.bootstrap import main

raise SystemExit(main())
