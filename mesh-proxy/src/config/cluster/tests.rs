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
    let e = cluster(json!({"name": "o", "type": "EDS", "outlierDetection": {"consecutive5xx": 3}}))
        .unwrap_err();
    assert_eq!(
        (e.resource.as_str(), e.field.as_str()),
        ("o", "outlier_detection")
    );
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
