//! The mesh control plane.

pub mod model;
pub mod registry;
pub mod source;
pub mod store;
pub mod translate;
