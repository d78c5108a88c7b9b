//! The listener manager (in progress).

/// Runs the accept loops of the active listeners.
#[derive(Debug, Default)]
pub struct Manager;
