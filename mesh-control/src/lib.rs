//! The mesh control plane.
