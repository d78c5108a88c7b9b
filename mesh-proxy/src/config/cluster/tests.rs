use serde_json::json;

use super::*;

fn cluster(v: serde_json::Value) -> Result<Cluster> {
    let pb: cpb::Cluster = mesh_api::envoy_json::message_from_json(&v).expect("valid Envoy JSON");
    Cluster::try_from(&pb)
}

#[test]
fn istio_outbound_eds_cluster() {
    let c = cluster(json!({
        "name": "outbound|80||reviews.default.svc.cluster.local",
        "type": "EDS",
        "edsClusterConfig": {"edsConfig": {"ads": {}, "resourceApiVersion": "V3"},
                             "serviceName": "outbound|80||reviews.default.svc.cluster.local"},
        "connectTimeout": "10s",
        "lbPolicy": "LEAST_REQUEST",
        "circuitBreakers": {"thresholds": [{"maxConnections": 4294967295u32, "maxPendingRequests": 4294967295u32,
                                            "maxRequests": 4294967295u32, "maxRetries": 4294967295u32, "trackRemaining": true}]},
        "commonLbConfig": {"localityWeightedLbConfig": {}},
        "typedExtensionProtocolOptions": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "commonHttpProtocolOptions": {"idleTimeout": "3600s"},
                "useDownstreamProtocolConfig": {"httpProtocolOptions": {}, "http2ProtocolOptions": {}}
            }
        },
        "metadata": {"filterMetadata": {"istio": {"services": [{"name": "reviews"}]}}}
    }))
    .unwrap();
    assert_eq!(
        c.eds_service_name(),
        Some("outbound|80||reviews.default.svc.cluster.local")
    );
    assert_eq!(c.connect_timeout, Duration::from_secs(10));
    assert_eq!(
        c.lb,
        LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0
        }
    );
    assert!(c.locality_weighted);
    assert_eq!(c.circuit_breakers.default.max_connections, u32::MAX);
    assert_eq!(c.circuit_breakers.high, Thresholds::default());
    assert_eq!(c.http.protocol, UpstreamProtocol::UseDownstream);
    assert_eq!(c.http.idle_timeout, Some(Duration::from_secs(3600)));
}

#[test]
fn eds_service_name_defaults_to_cluster_name() {
    let c = cluster(
        json!({"name": "c1", "type": "EDS", "edsClusterConfig": {"edsConfig": {"ads": {}}}}),
    )
    .unwrap();
    assert_eq!(c.eds_service_name(), Some("c1"));
}

#[test]
fn static_cluster_with_ring_hash() {
    let c = cluster(json!({
        "name": "s", "type": "STATIC", "lbPolicy": "RING_HASH",
        "ringHashLbConfig": {"minimumRingSize": "64", "maximumRingSize": "128"},
        "loadAssignment": {"clusterName": "s", "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 8080}}}}]}]}
    }))
    .unwrap();
    assert_eq!(
        c.lb,
        LbPolicy::RingHash {
            min_ring_size: 64,
            max_ring_size: 128,
            use_hostname: false
        }
    );
    assert_eq!(c.load_assignment.unwrap().localities[0].endpoints.len(), 1);
}

#[test]
fn static_cluster_rejects_dns_names() {
    let e = cluster(json!({
        "name": "s", "type": "STATIC",
        "loadAssignment": {"clusterName": "s", "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": {"socketAddress": {"address": "example.com", "portValue": 80}}}}]}]}
    }))
    .unwrap_err();
    assert_eq!(e.resource, "s");
    assert_eq!(
        e.field,
        "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address"
    );
}

#[test]
fn strict_dns_accepts_names() {
    let c = cluster(json!({
        "name": "d", "type": "STRICT_DNS", "dnsRefreshRate": "2s", "dnsLookupFamily": "V4_ONLY",
        "loadAssignment": {"clusterName": "d", "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": {"socketAddress": {"address": "localhost", "portValue": 80}}}}]}]}
    }))
    .unwrap();
    assert_eq!(
        c.discovery,
        Discovery::StrictDns {
            refresh_rate: Duration::from_secs(2),
            respect_dns_ttl: false,
            family: DnsFamily::V4Only
        }
    );
}

#[test]
fn original_dst_needs_cluster_provided() {
    let c = cluster(json!({"name": "PassthroughCluster", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED"})).unwrap();
    assert!(matches!(
        c.discovery,
        Discovery::OriginalDst {
            use_http_header: false,
            ..
        }
    ));
    let e = cluster(json!({"name": "p", "type": "ORIGINAL_DST"})).unwrap_err();
    assert_eq!(e.field, "lb_policy");
}

#[test]
fn unsupported_fields_are_named() {
    let e = cluster(json!({"name": "o", "type": "EDS", "outlierDetection": {"monitors": [
        {"name": "m", "typedConfig": {"@type": "type.googleapis.com/google.protobuf.Empty", "value": {}}}]}}))
    .unwrap_err();
    assert_eq!(
        (e.resource.as_str(), e.field.as_str()),
        ("o", "outlier_detection.monitors")
    );
    let e = cluster(json!({"name": "b", "type": "EDS", "upstreamBindConfig": {
        "sourceAddress": {"address": "127.0.0.6", "portValue": 0},
        "socketOptions": [{"level": "1", "name": "2", "intValue": "1"}]}}))
    .unwrap_err();
    assert_eq!(e.field, "upstream_bind_config.socket_options");
    let e = cluster(
        json!({"name": "k", "type": "EDS", "upstreamConnectionOptions": {
        "happyEyeballsConfig": {}}}),
    )
    .unwrap_err();
    assert_eq!(e.field, "upstream_connection_options.happy_eyeballs_config");
    let e = cluster(
        json!({"name": "h", "type": "EDS", "healthChecks": [{"timeout": "1s", "interval": "1s",
        "unhealthyThreshold": 1, "healthyThreshold": 1, "tcpHealthCheck": {}}]}),
    )
    .unwrap_err();
    assert_eq!(e.field, "health_checks");
    let e = cluster(json!({"name": "t", "type": "EDS", "transportSocket": {"name": "envoy.transport_sockets.tls",
        "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}}))
    .unwrap_err();
    assert_eq!(e.field, "transport_socket");
    let e =
        cluster(json!({"name": "z", "type": "EDS", "commonLbConfig": {"zoneAwareLbConfig": {}}}))
            .unwrap_err();
    assert_eq!(e.field, "common_lb_config.zone_aware_lb_config");
}

#[test]
fn maglev_table_must_be_prime() {
    let e = cluster(json!({"name": "m", "type": "EDS", "lbPolicy": "MAGLEV", "maglevLbConfig": {"tableSize": "1000"}}))
        .unwrap_err();
    assert_eq!(e.field, "maglev_lb_config.table_size");
    let c = cluster(json!({"name": "m", "type": "EDS", "lbPolicy": "MAGLEV", "maglevLbConfig": {"tableSize": "251"}})).unwrap();
    assert_eq!(
        c.lb,
        LbPolicy::Maglev {
            table_size: 251,
            use_hostname: false
        }
    );
}

#[test]
fn typed_load_balancing_policy_takes_first_supported() {
    let c = cluster(json!({
        "name": "t", "type": "EDS",
        "loadBalancingPolicy": {"policies": [
            {"typedExtensionConfig": {"name": "x", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin"}}},
            {"typedExtensionConfig": {"name": "y", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
                "choiceCount": 3, "localityLbConfig": {"localityWeightedLbConfig": {}}}}}
        ]}
    }))
    .unwrap();
    assert_eq!(
        c.lb,
        LbPolicy::LeastRequest {
            choice_count: 3,
            active_request_bias: 1.0
        }
    );
    assert!(c.locality_weighted);
}

#[test]
fn istio_inbound_cluster_binds_127_0_0_6() {
    let c = cluster(json!({
        "name": "inbound|8080||", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED",
        "connectTimeout": "10s",
        "upstreamBindConfig": {"sourceAddress": {"address": "127.0.0.6", "portValue": 0}},
        "upstreamConnectionOptions": {"tcpKeepalive": {"keepaliveProbes": 9, "keepaliveTime": 7200, "keepaliveInterval": 75}}
    }))
    .unwrap();
    let bind = c.upstream_bind.unwrap();
    assert_eq!(bind.sources, vec!["127.0.0.6:0".parse().unwrap()]);
    assert!(!bind.freebind);
    assert_eq!(
        c.tcp_keepalive,
        Some(TcpKeepalive {
            probes: Some(9),
            time: Some(Duration::from_secs(7200)),
            interval: Some(Duration::from_secs(75)),
        })
    );
    let c = cluster(json!({
        "name": "dual", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED",
        "upstreamBindConfig": {"sourceAddress": {"address": "127.0.0.6", "portValue": 0},
            "freebind": true,
            "extraSourceAddresses": [{"address": {"address": "::6", "portValue": 0}}]}
    }))
    .unwrap();
    let bind = c.upstream_bind.unwrap();
    assert_eq!(bind.sources.len(), 2);
    assert!(bind.freebind);
    let e = cluster(
        json!({"name": "x", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED",
        "upstreamBindConfig": {"sourceAddress": {"address": "not-an-ip", "portValue": 0}}}),
    )
    .unwrap_err();
    assert_eq!(e.field, "upstream_bind_config.source_address.address");
    let e = cluster(
        json!({"name": "x", "type": "ORIGINAL_DST", "lbPolicy": "CLUSTER_PROVIDED",
        "upstreamBindConfig": {"sourceAddress": {"address": "127.0.0.6", "portValue": 0},
            "extraSourceAddresses": [{"address": {"address": "127.0.0.7", "portValue": 0}}]}}),
    )
    .unwrap_err();
    assert_eq!(e.field, "upstream_bind_config.extra_source_addresses");
}

#[test]
fn istio_outlier_detection_with_envoy_defaults() {
    // What mesh-control emits for consecutive5xxErrors 3, interval 1s, baseEjectionTime 30s.
    let c = cluster(json!({
        "name": "o", "type": "EDS",
        "outlierDetection": {"consecutive5xx": 3, "enforcingConsecutive5xx": 100,
            "enforcingSuccessRate": 0, "interval": "1s", "baseEjectionTime": "30s",
            "maxEjectionPercent": 100},
        "commonLbConfig": {"healthyPanicThreshold": {"value": 0}}
    }))
    .unwrap();
    let o = c.outlier_detection.unwrap();
    assert_eq!(o.consecutive_5xx, 3);
    assert_eq!(o.interval, Duration::from_secs(1));
    assert_eq!(o.base_ejection_time, Duration::from_secs(30));
    assert_eq!(o.max_ejection_time, Duration::from_secs(300));
    assert_eq!(o.max_ejection_percent, 100);
    assert_eq!(o.enforcing.success_rate, 0);
    // Unset fields take Envoy's defaults, not the proto's zeros.
    assert_eq!(o.consecutive_gateway_failure, 5);
    assert_eq!(o.enforcing.consecutive_gateway_failure, 0);
    assert_eq!(o.enforcing.consecutive_local_origin_failure, 100);
    assert_eq!(o.success_rate_stdev_factor, 1900);
    assert_eq!(c.healthy_panic_threshold, 0.0);
    // max_ejection_time defaults to the base time when that is larger.
    let c = cluster(
        json!({"name": "o", "type": "EDS", "outlierDetection": {"baseEjectionTime": "600s"}}),
    )
    .unwrap();
    assert_eq!(
        c.outlier_detection.unwrap().max_ejection_time,
        Duration::from_secs(600)
    );
    let e = cluster(json!({"name": "o", "type": "EDS", "outlierDetection": {
        "baseEjectionTime": "60s", "maxEjectionTime": "30s"}}))
    .unwrap_err();
    assert_eq!(e.field, "outlier_detection.max_ejection_time");
    let e = cluster(
        json!({"name": "o", "type": "EDS", "outlierDetection": {"enforcingConsecutive5xx": 101}}),
    )
    .unwrap_err();
    assert_eq!(e.field, "outlier_detection.enforcing_consecutive_5xx");
}

#[test]
fn slow_start_on_round_robin_and_least_request() {
    let c = cluster(json!({
        "name": "w", "type": "EDS", "lbPolicy": "ROUND_ROBIN",
        "roundRobinLbConfig": {"slowStartConfig": {"slowStartWindow": "30s"}}
    }))
    .unwrap();
    assert_eq!(
        c.slow_start,
        Some(SlowStart {
            window: Duration::from_secs(30),
            aggression: 1.0,
            min_weight: 0.1
        })
    );
    let c = cluster(json!({
        "name": "w", "type": "EDS",
        "loadBalancingPolicy": {"policies": [{"typedExtensionConfig": {"name": "lr", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
            "slowStartConfig": {"slowStartWindow": "10s", "aggression": {"defaultValue": 2.0, "runtimeKey": "a"},
                                "minWeightPercent": {"value": 25}}}}}]}
    }))
    .unwrap();
    assert_eq!(
        c.slow_start,
        Some(SlowStart {
            window: Duration::from_secs(10),
            aggression: 2.0,
            min_weight: 0.25
        })
    );
    let e = cluster(json!({
        "name": "w", "type": "EDS", "lbPolicy": "LEAST_REQUEST",
        "leastRequestLbConfig": {"slowStartConfig": {"slowStartWindow": "10s",
            "aggression": {"defaultValue": 0.0, "runtimeKey": "a"}}}
    }))
    .unwrap_err();
    assert_eq!(
        e.field,
        "least_request_lb_config.slow_start_config.aggression"
    );
}

#[test]
fn retry_budget_and_high_priority_thresholds() {
    let c = cluster(json!({
        "name": "r", "type": "EDS",
        "circuitBreakers": {"thresholds": [
            {"maxRetries": 2, "retryBudget": {"budgetPercent": {"value": 25}, "minRetryConcurrency": 4}},
            {"priority": "HIGH", "maxConnections": 7}
        ]}
    }))
    .unwrap();
    assert_eq!(
        c.circuit_breakers.default.retry_budget,
        Some(RetryBudget {
            budget_percent: 25.0,
            min_retry_concurrency: 4
        })
    );
    assert_eq!(c.circuit_breakers.high.max_connections, 7);
    let c = cluster(json!({"name": "r", "type": "EDS",
        "circuitBreakers": {"thresholds": [{"retryBudget": {}}]}}))
    .unwrap();
    assert_eq!(
        c.circuit_breakers.default.retry_budget,
        Some(RetryBudget {
            budget_percent: 20.0,
            min_retry_concurrency: 3
        })
    );
}

#[test]
fn deprecated_cluster_http_options() {
    let c = cluster(json!({
        "name": "h2", "type": "EDS",
        "http2ProtocolOptions": {"maxConcurrentStreams": 100},
        "commonHttpProtocolOptions": {"maxRequestsPerConnection": 10, "idleTimeout": "30s"}
    }))
    .unwrap();
    assert_eq!(c.http.protocol, UpstreamProtocol::Http2);
    assert_eq!(c.http.max_concurrent_streams, Some(100));
    assert_eq!(c.http.max_requests_per_connection, Some(10));
    assert_eq!(c.http.idle_timeout, Some(Duration::from_secs(30)));
    let c = cluster(
        json!({"name": "d", "type": "EDS", "protocolSelection": "USE_DOWNSTREAM_PROTOCOL",
        "maxRequestsPerConnection": 5}),
    )
    .unwrap();
    assert_eq!(c.http.protocol, UpstreamProtocol::UseDownstream);
    assert_eq!(c.http.max_requests_per_connection, Some(5));
    let e = cluster(json!({
        "name": "both", "type": "EDS",
        "http2ProtocolOptions": {},
        "typedExtensionProtocolOptions": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicitHttpConfig": {"httpProtocolOptions": {}}}}
    }))
    .unwrap_err();
    assert_eq!(e.field, "typed_extension_protocol_options");
}

#[test]
fn istio_blackhole_cluster_has_no_endpoints() {
    let c = cluster(json!({"name": "BlackHoleCluster", "type": "STATIC", "connectTimeout": "10s"}))
        .unwrap();
    assert!(c.load_assignment.unwrap().localities.is_empty());
}
