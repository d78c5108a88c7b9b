//! mesh-proxy binary (in progress).
fn main() {}
