//! HSM inventory: which PKCS#11 modules and tokens keybroker may use, where they are, and how to log in.
//!
//! The inventory is a TOML file of `[[hsm]]` tables. [`Inventory::load`] reads and validates it;
//! [`Inventory::parse`] does the same on text already in memory (pure, for tests and tools).
//! Every error names the file, the field (`hsm[1].slot`, 0-based index) and the problem.
//! PINs are never part of the file: an entry says where the PIN comes from ([`PinSource`]) and
//! [`PinSource::read`] fetches it when the broker logs in.

mod error;
mod model;
mod parse;
mod pin;

pub use error::InventoryError;
pub use model::{
    DEFAULT_POOL_SIZE, HsmEntry, Inventory, MAX_POOL_SIZE, MAX_TOKEN_LABEL_LEN, PinSource,
    TokenSelector, is_valid_jurisdiction,
};

#[cfg(test)]
mod tests;
