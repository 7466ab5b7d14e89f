"""The consent service: the PIPL/GDPR consent ledger, CheckConsent, data-subject requests and audit replay."""
