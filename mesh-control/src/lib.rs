//! The mesh control plane.

pub mod model;
pub mod monitoring;
pub mod push;
pub mod registry;
pub mod source;
pub mod store;
pub mod translate;
pub mod xds;
