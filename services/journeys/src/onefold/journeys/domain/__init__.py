"""The journeys domain, pure (no I/O): the events it records (`events.py`, from the proto), journeys
checked and compiled into graphs (`definitions.py`), a journey's versions and lifecycle
(`catalog.py`), one person's run through a journey and the decisions on it (`instance.py`), and a
journey's counters and uplift (`stats.py`)."""
