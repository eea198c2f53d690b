//! Fixtures for the end-to-end tests: SoftHSM2 tokens in temp dirs, brokers on 127.0.0.1:0.
