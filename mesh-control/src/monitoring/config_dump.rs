//! `/debug/config_dump?proxyID=<id>`: what the control plane would send a connected proxy
//! now, as Envoy's `ConfigDump` JSON (the shape of Envoy's own `/config_dump`, so the same
//! tools and habits apply). Secrets are listed by name and version only: private keys never
//! leave the control plane through a debug port.

use std::time::SystemTime;

use envoy_types::pb::envoy::admin::v3::{
    ClustersConfigDump, ConfigDump, EndpointsConfigDump, ListenersConfigDump, RoutesConfigDump,
    SecretsConfigDump,
    clusters_config_dump::DynamicCluster,
    endpoints_config_dump::DynamicEndpointConfig,
    listeners_config_dump::{DynamicListener, DynamicListenerState},
    routes_config_dump::DynamicRouteConfig,
    secrets_config_dump::DynamicSecret,
};
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use mesh_api::envoy_json::{EnvoyJsonError, FieldNames, message_to_json_with, to_any};

use crate::xds::XdsType;
use crate::xds::resources::ProxyResources;
use crate::xds::subscription::Subscription;

fn timestamp(at: SystemTime) -> Timestamp {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Builds the `ConfigDump` message for `res`.
pub fn config_dump(res: &ProxyResources, generated_at: SystemTime) -> ConfigDump {
    let all = Subscription::wildcard();
    let at = Some(timestamp(generated_at));
    let version = |ty: XdsType| res.get(ty).version_for(&all);

    let clusters = ClustersConfigDump {
        version_info: version(XdsType::Cluster),
        dynamic_active_clusters: res
            .get(XdsType::Cluster)
            .iter()
            .map(|(_, v)| DynamicCluster {
                version_info: v.version.to_string(),
                cluster: Some(v.resource.clone()),
                last_updated: at,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let listeners = ListenersConfigDump {
        version_info: version(XdsType::Listener),
        dynamic_listeners: res
            .get(XdsType::Listener)
            .iter()
            .map(|(name, v)| DynamicListener {
                name: name.to_string(),
                active_state: Some(DynamicListenerState {
                    version_info: v.version.to_string(),
                    listener: Some(v.resource.clone()),
                    last_updated: at,
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let routes = RoutesConfigDump {
        dynamic_route_configs: res
            .get(XdsType::Route)
            .iter()
            .map(|(_, v)| DynamicRouteConfig {
                version_info: v.version.to_string(),
                route_config: Some(v.resource.clone()),
                last_updated: at,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let secrets = SecretsConfigDump {
        dynamic_active_secrets: res
            .get(XdsType::Secret)
            .iter()
            .map(|(name, v)| DynamicSecret {
                name: name.to_string(),
                version_info: v.version.to_string(),
                last_updated: at,
                secret: None,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let endpoints = EndpointsConfigDump {
        dynamic_endpoint_configs: res
            .get(XdsType::Endpoint)
            .iter()
            .map(|(_, v)| DynamicEndpointConfig {
                version_info: v.version.to_string(),
                endpoint_config: Some(v.resource.clone()),
                last_updated: at,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    // Envoy's order: clusters, listeners, routes, secrets; endpoints last (as with
    // Envoy's `?include_eds`).
    let configs: Vec<Any> = vec![
        to_any(&clusters),
        to_any(&listeners),
        to_any(&routes),
        to_any(&secrets),
        to_any(&endpoints),
    ];
    ConfigDump { configs }
}

/// The dump as JSON with the proto field names, exactly as Envoy's admin prints its own
/// `/config_dump`, so a proxy's dump and the control plane's can be compared key for key.
pub fn config_dump_json(
    res: &ProxyResources,
    generated_at: SystemTime,
) -> Result<serde_json::Value, EnvoyJsonError> {
    message_to_json_with(&config_dump(res, generated_at), FieldNames::Proto)
}
