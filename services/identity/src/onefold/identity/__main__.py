"""`python -m onefold.identity` runs the identity service."""

from onefold.identity.bootstrap import main

raise SystemExit(main())
