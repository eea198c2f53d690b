//! Client library for keybroker.
