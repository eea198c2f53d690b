//! PKCS#11 access: a bounded session pool per HSM, every call off the async workers, error triage.
