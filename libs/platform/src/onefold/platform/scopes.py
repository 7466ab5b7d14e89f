"""The scopes a credential may carry, apart from the credential store so that a command listing them
(`onefold credentials create --help`) does not load SQLAlchemy."""

INSTALLATION_ADMIN = "installation:admin"
SCOPES = frozenset(
    {
        "admin",
        INSTALLATION_ADMIN,
        "service",
        "ingest:write",
        "profiles:read",
        "profiles:write",
        "consent:read",
        "consent:write",
        "segments:read",
        "segments:write",
        "journeys:read",
        "journeys:write",
        "destinations:read",
        "destinations:write",
        "insights:read",
        "insights:write",
        "audit:read",
        "dsr:write",
    }
)
