//! End-to-end support: the test workload ([`testapp`]), the [`cluster::Cluster`] trait
//! scenarios are written against, and the local backend ([`local`]).

pub mod cluster;
pub mod local;
pub mod testapp;
