//! The end-to-end scenarios: each deploys the test app with sidecars, applies Istio's own
//! YAML as a user would, waits for the mesh to converge, sends real traffic from a pod
//! through both sidecars, and asserts on what the test app (and, where an operator would
//! look, a proxy's access log) reports. They are written against the [`Cluster`] trait
//! only, so the same code runs on every backend; [`runner`] runs them on the local one,
//! each on a fresh cluster.
//!
//! Random splits are asserted with exact binomial intervals ([`binomial`]); timing
//! assertions are functional checks with generous slack, never benchmarks.
//!
//! [`Cluster`]: crate::cluster::Cluster

pub mod access_log;
pub mod binomial;
pub mod env;
pub mod runner;

mod blue_green;
mod canary;
mod circuit_breaker;
mod consistent_hash;
mod fault;
mod grpc;
mod header_routing;
mod ingress;
mod locality_failover;
mod mirror;
mod mirror_slow;
mod no_loss_on_change;
mod outlier_detection;
mod rate_limit;
mod retries;
mod sidecar_scope;
mod tcp;
mod timeout;
mod websocket;

use anyhow::Result;

pub use env::Env;

/// One scenario.
#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    /// The issue whose "Tests" list it comes from.
    pub issue: u32,
    pub about: &'static str,
    pub run: fn(&Env<'_>) -> Result<()>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Every scenario, in the order they run.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "blue-green",
        issue: 5,
        about: "all traffic to one subset, switched and switched back",
        run: blue_green::run,
    },
    Scenario {
        name: "canary",
        issue: 5,
        about: "90/10 over 1,000 requests, within the binomial 99.9% interval",
        run: canary::run,
    },
    Scenario {
        name: "header-routing",
        issue: 5,
        about: "end-user: jason -> reviews v2, everyone else -> v3",
        run: header_routing::run,
    },
    Scenario {
        name: "mirror",
        issue: 5,
        about: "the mirror target sees every request, the caller only the primary",
        run: mirror::run,
    },
    Scenario {
        name: "ingress",
        issue: 5,
        about: "gateway from outside: ordered prefix routes, rewrite, %REQ(:PATH)% header",
        run: ingress::run,
    },
    Scenario {
        name: "sidecar-scope",
        issue: 5,
        about: "hosts outside a Sidecar's egress: REGISTRY_ONLY blocks, ALLOW_ANY passes through",
        run: sidecar_scope::run,
    },
    Scenario {
        name: "tcp",
        issue: 5,
        about: "TCP service through both sidecars, tcp route to one subset",
        run: tcp::run,
    },
    Scenario {
        name: "grpc",
        issue: 5,
        about: "gRPC calls split per call over one HTTP/2 connection, status propagated",
        run: grpc::run,
    },
    Scenario {
        name: "websocket",
        issue: 5,
        about: "WebSocket upgrade routed and echoed through both sidecars",
        run: websocket::run,
    },
    Scenario {
        name: "no-loss-on-change",
        issue: 5,
        about: "weight flips under steady load lose no request",
        run: no_loss_on_change::run,
    },
    Scenario {
        name: "timeout",
        issue: 6,
        about: "0.5 s route timeout vs a 2 s backend: 504 UT after ~0.5 s",
        run: timeout::run,
    },
    Scenario {
        name: "retries",
        issue: 6,
        about: "2 retries x 300 ms on 5xx,gateway-error: attempts+1 tries, 4xx not retried",
        run: retries::run,
    },
    Scenario {
        name: "circuit-breaker",
        issue: 6,
        about: "maxConnections 1, 1 pending: overflow of 20 concurrent gets 503 UO at once",
        run: circuit_breaker::run,
    },
    Scenario {
        name: "outlier-detection",
        issue: 6,
        about: "a failing endpoint is ejected (share 0) and returns after baseEjectionTime",
        run: outlier_detection::run,
    },
    Scenario {
        name: "fault",
        issue: 6,
        about: "abort 50% (binomial interval, FI) and delay 100% 1 s (DI)",
        run: fault::run,
    },
    Scenario {
        name: "consistent-hash",
        issue: 6,
        about: "header hash sticks to one pod; ring hash moves few keys when a pod is added",
        run: consistent_hash::run,
    },
    Scenario {
        name: "locality-failover",
        issue: 6,
        about: "local locality only while healthy, failover to the other once ejected",
        run: locality_failover::run,
    },
    Scenario {
        name: "mirror-slow",
        issue: 6,
        about: "a slow mirror target does not slow the primary",
        run: mirror_slow::run,
    },
    Scenario {
        name: "rate-limit",
        issue: 6,
        about: "EnvoyFilter local_ratelimit, 10 tokens/s: 429 RL for the excess",
        run: rate_limit::run,
    },
];

/// The scenarios named (all when `names` is empty), or the unknown name.
pub fn select(names: &[String]) -> Result<Vec<Scenario>, String> {
    if names.is_empty() {
        return Ok(ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            ALL.iter()
                .find(|s| s.name == n)
                .copied()
                .ok_or_else(|| n.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_selectable() {
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
        assert_eq!(select(&[]).unwrap().len(), ALL.len());
        let one = select(&["canary".to_string()]).unwrap();
        assert_eq!(one[0].name, "canary");
        assert_eq!(select(&["nope".to_string()]).unwrap_err(), "nope");
    }
}
