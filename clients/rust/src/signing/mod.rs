//! Signing with the broker's SIGN keys (issue 19): the `Signing` calls and fetching a
//! signature's transparency receipt. The formats of what they return and the offline
//! verification of a signature and its receipt are `keybroker_formats::signing`'s, re-exported
//! here as [`format`](mod@format) and [`bundle`].

mod calls;
mod receipt;

pub use calls::{PublicKeyInfo, SignedDigest, SignedStatement};
pub use keybroker_formats::signing::{bundle, format};
