//! The mesh data plane.
