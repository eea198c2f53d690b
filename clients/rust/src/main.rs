//! The `keybroker` command line (work in progress).

fn main() {}
