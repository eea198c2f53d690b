//! Signing with the broker's SIGN keys (issue 19): the formats of what the broker returns
//! (DER and raw signatures, SPKI/PEM public keys, key ids, DSSE envelopes) and the signature
//! bundle with its transparency receipt, verified offline.

pub mod bundle;
pub mod format;
