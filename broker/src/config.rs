//! Broker configuration (TOML): listener, TLS, store, identity, residency, key defaults.
