"""The segments domain: the events it records (`events.py`), the folds of those events into state
(`Handlers` with `@handles` methods) and the decisions taken on that state. No I/O."""
