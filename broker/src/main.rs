//! `keybrokerd`: flags, config, tracing; everything else is in the library.
fn main() {}
