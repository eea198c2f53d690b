//! Fuzz target: the ciphertext envelope parser must never panic, and whatever it accepts must
//! re-encode to exactly the input (the format has one encoding per envelope).
//!
//! The pure parser files are compiled in directly (not through the `keybroker-broker` crate),
//! so a fuzz build does not compile the whole broker (tonic, sqlx, Cedar…) in release with
//! sanitizers: that took most of CI's time.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The broker's `keys` module, rebuilt at this crate's root: the files refer to their siblings
// as `super::…`, which is the crate root here.
#[allow(dead_code, reason = "only the parser is exercised here")]
#[path = "../../broker/src/keys/context.rs"]
mod context;
#[allow(dead_code, reason = "only the parser is exercised here")]
#[path = "../../broker/src/keys/envelope.rs"]
mod envelope;
#[path = "../../broker/src/keys/input.rs"]
mod input;
#[allow(dead_code, reason = "only the parser is exercised here")]
#[path = "../../broker/src/keys/name.rs"]
mod name;

use input::KeyInputError;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = envelope::Envelope::parse(data) {
        assert_eq!(envelope.encode(), data, "parse/encode is not a round trip");
    }
});
