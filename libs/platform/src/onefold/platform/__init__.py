"""onefold.platform: what every Onefold service shares.

Configuration, authentication, errors, telemetry, the gRPC server bootstrap, NATS connections and
the embedded nats-server. Written once here so the seven services stay thin and alike.
"""

__version__ = "0.1.0"
