"""Use cases of the identity service, one module each: resolving accepted events into profiles
(`resolution`), reading profiles (`profiles`), changes by hand (`changes`), the rules (`rules`) and
the data-subject duties (`data_subjects`), over the shared state in `state`.

Use cases are async: writes run on the service's writer thread (`IdentityState.write`), reads in
worker threads on connections of their own. The ingest subscriber's handler (`handle_accepted`) is
given its batch's open transaction on the writer thread.
"""

from __future__ import annotations

from onefold.identity.application.changes import ProfileChanges
from onefold.identity.application.data_subjects import DataSubjects
from onefold.identity.application.resolution import Resolution
from onefold.identity.application.rules import RulesUseCases


class IdentityApplication(Resolution, DataSubjects, ProfileChanges, RulesUseCases):
    """The identity service's use cases, built on its ServiceLog and read model."""


__all__ = ["IdentityApplication"]
