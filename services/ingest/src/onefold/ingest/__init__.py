"""The ingest service: collects events: gRPC and the Segment-compatible HTTP tracking API, tracking plans, quarantine, bulk import."""
