//! Outlier detection on a live cluster with tokio's paused clock: consecutive errors eject
//! at once, hosts return on the first sweep after `base x backoff`, the backoff grows
//! and decays, `max_ejection_percent` and enforcement bound ejections, local-origin errors
//! are split out on request, and success-rate / failure-percentage sweeps find outliers.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use super::*;
use crate::{
    config::{
        address::HostPort,
        cluster::{Cluster as ClusterConfig, Enforcing, OutlierDetection},
        endpoint::{ClusterLoadAssignment, Endpoint, HealthStatus, LocalityEndpoints},
    },
    stats::Stats,
    upstream::{LbContext, Outcome},
};

fn cluster_with(n: usize, od: OutlierDetection) -> (Arc<Cluster>, Vec<Arc<Host>>) {
    let la = ClusterLoadAssignment {
        cluster_name: "c".into(),
        localities: vec![LocalityEndpoints {
            locality: Default::default(),
            weight: None,
            priority: 0,
            endpoints: (0..n)
                .map(|i| Endpoint {
                    address: HostPort::Ip(format!("10.250.0.{}:80", i + 1).parse().unwrap()),
                    hostname: String::new(),
                    health: HealthStatus::Healthy,
                    weight: 1,
                    tls_mode: None,
                })
                .collect(),
        }],
        overprovisioning_factor: 140,
        weighted_priority_health: false,
    };
    let config = ClusterConfig {
        name: "c".into(),
        stat_name: "c".into(),
        load_assignment: Some(la),
        outlier_detection: Some(od),
        ..ClusterConfig::default()
    };
    let c = Cluster::new(config, &Stats::new(), None);
    let hosts = c.hosts().hosts.clone();
    (c, hosts)
}

fn od() -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(5),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 50,
        consecutive_5xx: 3,
        ..OutlierDetection::default()
    }
}

fn picks(c: &Cluster, n: usize) -> HashMap<SocketAddr, usize> {
    let mut m = HashMap::new();
    for _ in 0..n {
        *m.entry(c.pick(&LbContext::default()).unwrap().addr)
            .or_insert(0) += 1;
    }
    m
}

/// Lets the sweeper task run at the current (paused) time.
async fn settle() {
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

/// Lets `d` pass in 100 ms steps, so the sweeps run on their 1 s schedule.
async fn run_for(d: Duration) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        let s = step.min(left);
        tokio::time::advance(s).await;
        settle().await;
        left -= s;
    }
}

/// How long `h` stays ejected (in sweep steps of 100 ms), at most `limit`.
async fn ejected_for(h: &Host, limit: Duration) -> Duration {
    let start = Instant::now();
    while h.is_ejected() && start.elapsed() < limit {
        run_for(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_ejects_and_the_host_returns_after_base_ejection_time() {
    let (c, hs) = cluster_with(3, od());
    hs[0].report(Outcome::Status(500));
    hs[0].report(Outcome::Status(503));
    hs[0].report(Outcome::Status(200));
    hs[0].report(Outcome::Status(500));
    hs[0].report(Outcome::Status(500));
    assert!(!hs[0].is_ejected(), "a success resets the run");
    hs[0].report(Outcome::Status(500));
    assert!(hs[0].is_ejected());
    assert!(
        !picks(&c, 300).contains_key(&hs[0].addr),
        "ejected: no traffic"
    );
    let s = c.stats();
    assert_eq!(s.outlier_detection_ejections_active.get(), 1);
    assert_eq!(
        s.outlier_detection_ejections_enforced_consecutive_5xx.get(),
        1
    );
    assert_eq!(
        s.outlier_detection_ejections_detected_consecutive_5xx.get(),
        1
    );
    assert_eq!(s.membership_healthy.get(), 2);

    // Sweeps at 1 s intervals; the host is back on the first one at or after 5 s.
    run_for(Duration::from_millis(4500)).await;
    assert!(hs[0].is_ejected());
    run_for(Duration::from_millis(600)).await;
    assert!(!hs[0].is_ejected(), "returned after base_ejection_time");
    assert_eq!(picks(&c, 300)[&hs[0].addr], 100);
    assert_eq!(s.outlier_detection_ejections_active.get(), 0);

    // Ejected again at once (t = 5.1 s): twice the base time (backoff 2), back on the
    // sweep at 16 s.
    for _ in 0..3 {
        hs[0].report(Outcome::Status(502));
    }
    assert!(hs[0].is_ejected());
    let out = ejected_for(&hs[0], Duration::from_secs(20)).await;
    assert!(
        out > Duration::from_secs(10) && out <= Duration::from_secs(11),
        "{out:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_decays_while_the_host_stays_healthy() {
    let (_c, hs) = cluster_with(2, od());
    let eject = |h: &Host| {
        for _ in 0..3 {
            h.report(Outcome::Status(500));
        }
    };
    eject(&hs[0]);
    run_for(Duration::from_millis(5100)).await;
    assert!(!hs[0].is_ejected());
    assert_eq!(hs[0].outlier.state.lock().backoff, 1);
    // Healthy for a few sweeps: the multiplier goes back to 0, so the next ejection is
    // the base time again (backoff 1), not twice it.
    run_for(Duration::from_secs(3)).await;
    assert_eq!(hs[0].outlier.state.lock().backoff, 0);
    eject(&hs[0]);
    let out = ejected_for(&hs[0], Duration::from_secs(20)).await;
    assert!(out <= Duration::from_secs(6), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn max_ejection_time_caps_the_backoff() {
    let (_c, hs) = cluster_with(
        2,
        OutlierDetection {
            max_ejection_time: Duration::from_secs(7),
            ..od()
        },
    );
    // Ejected again the moment it returns: 5 s, then 10 s capped at 7 s, and so on.
    let mut times = Vec::new();
    for _ in 0..4 {
        for _ in 0..3 {
            hs[0].report(Outcome::Status(500));
        }
        assert!(hs[0].is_ejected());
        times.push(ejected_for(&hs[0], Duration::from_secs(30)).await.as_secs());
    }
    // Each return waits for the next whole-second sweep.
    assert_eq!(times, vec![5, 7, 7, 7]);
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_bounds_ejections() {
    let (c, hs) = cluster_with(4, od());
    for h in &hs {
        for _ in 0..3 {
            h.report(Outcome::Status(500));
        }
    }
    // 50% of 4 hosts: two ejected, the other two detections overflow.
    assert_eq!(hs.iter().filter(|h| h.is_ejected()).count(), 2);
    assert_eq!(c.stats().outlier_detection_ejections_overflow.get(), 2);
    assert_eq!(
        c.stats()
            .outlier_detection_ejections_detected_consecutive_5xx
            .get(),
        4
    );
}

#[tokio::test(start_paused = true)]
async fn gateway_failures_are_not_enforced_by_default() {
    let (c, hs) = cluster_with(
        3,
        OutlierDetection {
            consecutive_5xx: 100,
            consecutive_gateway_failure: 2,
            ..od()
        },
    );
    hs[0].report(Outcome::Status(503));
    hs[0].report(Outcome::Status(504));
    // Envoy's default enforcing_consecutive_gateway_failure is 0: detected, not ejected.
    assert!(!hs[0].is_ejected());
    let s = c.stats();
    assert_eq!(
        s.outlier_detection_ejections_detected_consecutive_gateway_failure
            .get(),
        1
    );
    assert_eq!(s.outlier_detection_ejections_enforced_total.get(), 0);

    let (c, hs) = cluster_with(
        3,
        OutlierDetection {
            consecutive_5xx: 100,
            consecutive_gateway_failure: 2,
            enforcing: Enforcing {
                consecutive_gateway_failure: 100,
                ..od().enforcing
            },
            ..od()
        },
    );
    // A 500 breaks a run of gateway errors.
    hs[0].report(Outcome::Status(503));
    hs[0].report(Outcome::Status(500));
    hs[0].report(Outcome::Status(502));
    assert!(!hs[0].is_ejected());
    // Connect failures count as 503s when origins are not split.
    hs[0].report(Outcome::ConnectFailed);
    assert!(hs[0].is_ejected());
    assert_eq!(
        c.stats()
            .outlier_detection_ejections_enforced_consecutive_gateway_failure
            .get(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn split_local_origin_errors_count_separately() {
    let (c, hs) = cluster_with(
        4,
        OutlierDetection {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: 2,
            ..od()
        },
    );
    // Local failures do not feed the 5xx counter any more.
    hs[0].report(Outcome::ConnectFailed);
    hs[0].report(Outcome::Status(500));
    hs[0].report(Outcome::Status(500));
    assert!(!hs[0].is_ejected());
    // A connect success resets the local run.
    hs[0].report(Outcome::ConnectSuccess);
    hs[0].report(Outcome::Timeout);
    assert!(!hs[0].is_ejected());
    hs[0].report(Outcome::ConnectFailed);
    assert!(hs[0].is_ejected());
    assert_eq!(
        c.stats()
            .outlier_detection_ejections_enforced_consecutive_local_origin_failure
            .get(),
        1
    );
    // And the 5xx run of another host is still counted.
    for _ in 0..3 {
        hs[1].report(Outcome::Status(503));
    }
    assert!(hs[1].is_ejected());
}

#[tokio::test(start_paused = true)]
async fn success_rate_sweep_ejects_the_outlier() {
    let (c, hs) = cluster_with(
        5,
        OutlierDetection {
            consecutive_5xx: 0,
            success_rate_request_volume: 50,
            ..od()
        },
    );
    for (i, h) in hs.iter().enumerate() {
        for n in 0..100 {
            // Host 0 fails 40% of its requests, the others 1%.
            let fail = if i == 0 { n % 5 < 2 } else { n == 0 };
            h.report(Outcome::Status(if fail { 500 } else { 200 }));
        }
    }
    assert!(
        hs.iter().all(|h| !h.is_ejected()),
        "consecutive_5xx 0 disables it"
    );
    run_for(Duration::from_millis(1000)).await;
    assert!(hs[0].is_ejected());
    assert!(hs[1..].iter().all(|h| !h.is_ejected()));
    let [(mean, threshold), _] = c.outlier_detector().unwrap().success_rate_numbers();
    // Rates 60, 99, 99, 99, 99: mean 91.2, stdev 15.6, threshold 91.2 - 1.9 x 15.6.
    assert!((mean - 91.2).abs() < 1e-9, "{mean}");
    assert!((threshold - 61.56).abs() < 0.01, "{threshold}");
    assert_eq!(hs[1].success_rates()[0], 99.0);
    assert_eq!(
        c.stats()
            .outlier_detection_ejections_enforced_success_rate
            .get(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_needs_enforcement() {
    let od = OutlierDetection {
        consecutive_5xx: 0,
        failure_percentage_threshold: 50,
        failure_percentage_minimum_hosts: 3,
        failure_percentage_request_volume: 10,
        ..od()
    };
    let run = |od: OutlierDetection| async move {
        let (c, hs) = cluster_with(3, od);
        for (i, h) in hs.iter().enumerate() {
            for n in 0..20 {
                let fail = i == 0 && n % 10 < 6;
                h.report(Outcome::Status(if fail { 503 } else { 200 }));
            }
        }
        run_for(Duration::from_millis(1000)).await;
        (c, hs)
    };
    let (c, hs) = run(od.clone()).await;
    assert!(
        !hs[0].is_ejected(),
        "enforcing_failure_percentage defaults to 0"
    );
    assert_eq!(
        c.stats()
            .outlier_detection_ejections_detected_failure_percentage
            .get(),
        1
    );
    let (_, hs) = run(OutlierDetection {
        enforcing: Enforcing {
            failure_percentage: 100,
            ..od.enforcing
        },
        ..od
    })
    .await;
    assert!(hs[0].is_ejected());
}

#[tokio::test(start_paused = true)]
async fn endpoint_updates_keep_ejections_and_a_new_cluster_takes_the_hosts_over() {
    let (c, hs) = cluster_with(3, od());
    for _ in 0..3 {
        hs[0].report(Outcome::Status(500));
    }
    assert!(hs[0].is_ejected());
    // A CDS update of the cluster: same hosts, new detector; the ejection stays and the
    // new detector returns the host.
    let stats = Stats::new();
    let c2 = Cluster::new(c.config().clone(), &stats, Some(&c));
    assert!(Arc::ptr_eq(&c2.hosts().hosts[0], &hs[0]));
    assert!(hs[0].is_ejected());
    assert!(!picks(&c2, 100).contains_key(&hs[0].addr));
    run_for(Duration::from_millis(5100)).await;
    assert!(!hs[0].is_ejected());
    // A version without outlier detection clears any ejection.
    for _ in 0..3 {
        hs[1].report(Outcome::Status(500));
    }
    assert!(hs[1].is_ejected());
    let plain = ClusterConfig {
        outlier_detection: None,
        ..c.config().clone()
    };
    let c3 = Cluster::new(plain, &stats, Some(&c2));
    assert!(!hs[1].is_ejected());
    assert_eq!(picks(&c3, 300).len(), 3);
    for _ in 0..10 {
        hs[1].report(Outcome::Status(500));
    }
    assert!(!hs[1].is_ejected(), "no detector, no ejection");
}
