//! Traffic capture for the mesh.
