//! Request mirroring (Envoy's shadowing): a copy of the request goes to another cluster,
//! fire and forget.
//!
//! The policies of the most specific level that has any (route action, else virtual
//! host, else route configuration) apply; each is sampled by its `runtime_fraction`
//! (all requests when unset). The copy carries the request as it goes upstream (after
//! header mutations and rewrites) with `-shadow` appended to the host (unless
//! `disable_shadow_host_suffix_append`), shares the body with the primary without ever
//! holding it back ([`super::request_body`]), uses the route timeout, is never retried,
//! and its response is read and dropped. Copies run as their own tasks; at most
//! [`MAX_IN_FLIGHT`] at a time per process and within the mirror cluster's
//! `max_requests` circuit breaker: past either, the copy is not made. Faults never
//! apply: the fault filter runs before the router makes copies.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{HeaderMap, Version, request::Parts};
use http_body_util::BodyExt;

use super::{
    body::UpstreamBody,
    forward::{
        ClusterConnector, build_upstream_request, connect_settings, pool_for, upstream_protocol,
    },
    pool::Protocol,
    request_body::BufferedBody,
    router::set_host,
};
use crate::{config::route_action::MirrorPolicy, runtime::Runtime, upstream::LbContext};

/// Mirrored requests in flight in this process, at most.
pub const MAX_IN_FLIGHT: usize = 1024;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Copies not made because of the in-flight bound or a circuit breaker.
pub static DROPPED: AtomicUsize = AtomicUsize::new(0);
/// Copies sent (a response or an error came back).
pub static COMPLETED: AtomicUsize = AtomicUsize::new(0);

/// Mirrored requests in flight now.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

struct InFlight;

impl InFlight {
    fn acquire() -> Option<InFlight> {
        IN_FLIGHT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A copy to make: the cluster and whether the host keeps its name.
#[derive(Debug, Clone)]
pub struct Selected {
    pub cluster: Arc<str>,
    pub disable_suffix: bool,
}

/// The copies to make for a request (sampled now).
pub fn select(
    route: &[MirrorPolicy],
    vhost: &[MirrorPolicy],
    rc: &[MirrorPolicy],
    headers: &HeaderMap,
) -> Vec<Selected> {
    let policies = [route, vhost, rc]
        .into_iter()
        .find(|p| !p.is_empty())
        .unwrap_or(&[]);
    let mut out = Vec::new();
    for p in policies {
        if p.fraction.is_some_and(|f| !f.enabled(rand::random())) {
            continue;
        }
        let cluster = match (&p.cluster, &p.cluster_header) {
            (Some(c), _) => c.clone(),
            (None, Some(h)) => match headers.get(h).and_then(|v| v.to_str().ok()) {
                Some(c) if !c.is_empty() => Arc::from(c),
                _ => continue,
            },
            (None, None) => continue,
        };
        out.push(Selected {
            cluster,
            disable_suffix: p.disable_shadow_host_suffix_append,
        });
    }
    out
}

/// Envoy's `shadowAppendedHost`: `-shadow` before the port.
pub fn shadow_host(host: &str) -> String {
    let port_start = if host.starts_with('[') {
        host.rfind("]:").map(|i| i + 1)
    } else {
        host.rfind(':')
    };
    match port_start {
        Some(i) => format!("{}-shadow{}", &host[..i], &host[i..]),
        None => format!("{host}-shadow"),
    }
}

/// Starts the copies of a request whose upstream form is `parts`.
pub(super) fn spawn_all(
    rt: &Runtime,
    mirrors: &[Selected],
    parts: &Parts,
    body: Option<&Arc<BufferedBody>>,
    timeout: Option<Duration>,
    hash: Option<u64>,
    original_dst: Option<SocketAddr>,
) {
    for m in mirrors {
        let Some(permit) = InFlight::acquire() else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cluster = %m.cluster, "mirror dropped: too many in flight");
            continue;
        };
        let mut copy = Parts::clone_from_request(parts);
        if !m.disable_suffix
            && let Some(h) = super::format::authority(&copy.uri, &copy.headers).map(shadow_host)
        {
            set_host(&mut copy, &h);
        }
        let reader = body.map(|b| b.reader(false));
        tokio::spawn(run(
            rt.clone(),
            m.cluster.clone(),
            copy,
            reader,
            timeout,
            hash,
            original_dst,
            permit,
        ));
    }
}

/// `Parts` has no `Clone`; this copies what an upstream request needs.
trait CloneParts {
    fn clone_from_request(p: &Parts) -> Parts;
}

impl CloneParts for Parts {
    fn clone_from_request(p: &Parts) -> Parts {
        let (mut out, ()) = http::Request::new(()).into_parts();
        out.method = p.method.clone();
        out.uri = p.uri.clone();
        out.version = p.version;
        out.headers = p.headers.clone();
        out
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    rt: Runtime,
    cluster_name: Arc<str>,
    parts: Parts,
    body: Option<super::request_body::BodyReader>,
    timeout: Option<Duration>,
    hash: Option<u64>,
    original_dst: Option<SocketAddr>,
    _permit: InFlight,
) {
    let Some(cluster) = rt.clusters.get(&cluster_name) else {
        tracing::debug!(cluster = %cluster_name, "mirror cluster not found");
        return;
    };
    let stats = cluster.stats();
    let Some(_rq) = cluster.circuit_breakers().try_acquire_request() else {
        stats.upstream_rq_overflow.inc();
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(host) = cluster.pick(&LbContext {
        hash,
        avoid: &[],
        original_dst,
    }) else {
        stats.upstream_cx_none_healthy.inc();
        return;
    };
    stats.upstream_rq_total.inc();
    let _host_guard = host.request_guard();
    let protocol = upstream_protocol(&cluster, parts.version);
    let version = match protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
    };
    let mut req = build_upstream_request(&parts, version, &host, false, 1, false);
    *req.body_mut() = match body {
        Some(b) => UpstreamBody::Replay { body: b },
        None => UpstreamBody::empty(),
    };
    let settings = connect_settings(&cluster);
    let pool = pool_for(&host, protocol);
    let exchange = async {
        let connector = ClusterConnector {
            cluster: &cluster,
            host: &host,
        };
        match pool.send(req, &connector, &settings).await {
            // Read the response to its end so the connection can be reused.
            Ok(r) => {
                let _ = r.response.into_body().collect().await;
            }
            Err(e) => tracing::debug!(cluster = %cluster_name, error = %e, "mirror failed"),
        }
    };
    match timeout {
        Some(t) => {
            if tokio::time::timeout(t, exchange).await.is_err() {
                tracing::debug!(cluster = %cluster_name, "mirror timed out");
            }
        }
        None => exchange.await,
    }
    COMPLETED.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::route_match::Fraction;

    fn policy(cluster: &str, numerator: u64) -> MirrorPolicy {
        MirrorPolicy {
            cluster: Some(Arc::from(cluster)),
            cluster_header: None,
            fraction: Some(Fraction {
                numerator,
                denominator: 100,
            }),
            disable_shadow_host_suffix_append: false,
        }
    }

    #[test]
    fn shadow_host_keeps_the_port() {
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
    }

    #[test]
    fn most_specific_level_and_sampling() {
        let h = HeaderMap::new();
        let route = [policy("r", 100), policy("never", 0)];
        let vhost = [policy("v", 100)];
        let picked: Vec<_> = select(&route, &vhost, &[], &h)
            .into_iter()
            .map(|s| s.cluster.to_string())
            .collect();
        assert_eq!(picked, ["r"], "route policies replace the virtual host's");
        let picked: Vec<_> = select(&[], &vhost, &[], &h)
            .into_iter()
            .map(|s| s.cluster.to_string())
            .collect();
        assert_eq!(picked, ["v"]);
    }
}
