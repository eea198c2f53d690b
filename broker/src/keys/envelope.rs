//! Ciphertext envelope v1: a self-describing, versioned binary format with a strict parser.
