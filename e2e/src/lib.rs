//! End-to-end scenarios and the local cluster: the test workload ([`testapp`]).

pub mod testapp;
