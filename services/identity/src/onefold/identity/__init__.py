"""The identity service: OneID: resolves every identifier a person uses to one profile; merge, unmerge, profile 360."""
