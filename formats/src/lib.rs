//! What the keybroker broker and its clients must agree on, in one place: the transparency
//! log's hashing, tiles and checkpoint notes ([`tlog`]), the Cedar schema and its check
//! ([`policy`]) with the one list of operations ([`ops`]), the sealed-key format of attested
//! release ([`release`]), the signature formats and bundles of SIGN keys ([`signing`]), and
//! the dev issuer's tokens ([`dev_token`]).
//!
//! Pure: no file or network I/O (randomness only where a format needs a fresh value: HPKE
//! encapsulation, a token id). The broker writes with these functions and the clients verify
//! with the same ones, so the two cannot drift; the broker never depends on a client.

pub mod dev_token;
pub mod ops;
pub mod policy;
pub mod release;
pub mod signing;
pub mod tlog;
