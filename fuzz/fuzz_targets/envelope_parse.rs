//! Fuzz target: the ciphertext envelope parser must never panic, and whatever it accepts must
//! re-encode to exactly the input (the format has one encoding per envelope).
#![no_main]

use keybroker_broker::keys::envelope::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::parse(data) {
        assert_eq!(envelope.encode(), data, "parse/encode is not a round trip");
    }
});
