//! End-to-end support: the test workload ([`testapp`]), the [`cluster::Cluster`] trait
//! scenarios are written against, the local backend ([`local`]), the convergence checks
//! ([`sync`]) and the scenarios themselves ([`scenarios`]).

pub mod cluster;
pub mod local;
pub mod scenarios;
pub mod sync;
pub mod testapp;
