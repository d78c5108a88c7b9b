//! One ADS stream: connect, send the initial subscriptions, then apply responses and
//! answer each with an ACK or NACK, adjusting RDS/EDS subscriptions as they change.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use envoy_types::pb::{
    envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        Resource, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
    google::rpc::Status,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info};

use super::{
    TypeUrl, XdsConfig, XdsError,
    state::{Applier, Incoming},
};

/// gRPC status code INVALID_ARGUMENT, which Envoy uses in NACKs.
const INVALID_ARGUMENT: i32 = 3;
/// Large enough for a gateway's full config in one SotW response.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// Decodes the `name` of Listener, Cluster and RouteConfiguration, and the
/// `cluster_name` of ClusterLoadAssignment: all are string field 1.
#[derive(Clone, PartialEq, Message)]
struct NameOnly {
    #[prost(string, tag = "1")]
    name: String,
}

async fn connect(address: &str) -> Result<Channel, XdsError> {
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|e| XdsError::Address {
            address: address.into(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    endpoint
        .connect()
        .await
        .map_err(|source| XdsError::Connect {
            address: address.into(),
            source,
        })
}

/// Runs one stream until it fails. `progressed` is set once a response was applied
/// (so the caller resets its backoff).
pub(super) async fn run(
    cfg: &XdsConfig,
    applier: &mut Applier,
    progressed: &mut bool,
) -> Result<(), XdsError> {
    let channel = connect(&cfg.address).await?;
    let client = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    info!(address = %cfg.address, delta = !cfg.sotw, "connected to the control plane");
    if cfg.sotw {
        sotw(cfg, client, applier, progressed).await
    } else {
        delta(cfg, client, applier, progressed).await
    }
}

fn nack(message: Option<String>) -> Option<Status> {
    message.map(|message| Status {
        code: INVALID_ARGUMENT,
        message,
        details: vec![],
    })
}

/// The order in which types are first requested on a fresh start (Envoy's).
struct Sequencer {
    /// LDS is requested once the initial clusters are warm.
    lds_requested: bool,
}

impl Sequencer {
    fn new(applier: &Applier) -> Self {
        // On a reconnect we already have clusters: request everything at once.
        Sequencer {
            lds_requested: applier.cds_initialized,
        }
    }
}

// === delta ===

async fn delta(
    cfg: &XdsConfig,
    mut client: AggregatedDiscoveryServiceClient<Channel>,
    applier: &mut Applier,
    progressed: &mut bool,
) -> Result<(), XdsError> {
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let mut node = Some(cfg.node.to_proto());
    let mut subscribed: HashMap<TypeUrl, BTreeSet<String>> = HashMap::new();
    let mut seq = Sequencer::new(applier);

    let mut send = |req: DeltaDiscoveryRequest| {
        let mut req = req;
        if let Some(n) = node.take() {
            req.node = Some(n);
        }
        // The channel only fills if the server stops reading; then the stream is dead
        // anyway and the error surfaces on the response side.
        let _ = tx.try_send(req);
    };
    let initial =
        |t: TypeUrl, applier: &Applier, subscribed: &mut HashMap<TypeUrl, BTreeSet<String>>| {
            let names = applier.subscriptions(t).unwrap_or_default();
            subscribed.insert(t, names.clone());
            DeltaDiscoveryRequest {
                type_url: t.as_str().into(),
                // Empty subscribe list = legacy wildcard for CDS/LDS.
                resource_names_subscribe: names.into_iter().collect(),
                initial_resource_versions: applier.dump.versions(t),
                ..Default::default()
            }
        };
    send(initial(TypeUrl::Cluster, applier, &mut subscribed));
    if seq.lds_requested {
        for t in [
            TypeUrl::ClusterLoadAssignment,
            TypeUrl::Listener,
            TypeUrl::RouteConfiguration,
        ] {
            send(initial(t, applier, &mut subscribed));
        }
    }
    let mut inbound = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    applier.stats().server.control_plane_connected.set(1);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let Some(resp) = msg? else { return Err(XdsError::Closed) };
                let reply = handle_delta(applier, resp);
                send(reply);
                *progressed = true;
            }
            _ = ticker.tick() => {
                applier.tick(Instant::now());
            }
        }
        // Follow the references, and move on from CDS to LDS once clusters are warm.
        for t in [TypeUrl::ClusterLoadAssignment, TypeUrl::RouteConfiguration] {
            if !seq.lds_requested && t == TypeUrl::RouteConfiguration {
                continue;
            }
            let want = applier.subscriptions(t).unwrap_or_default();
            let have = subscribed.entry(t).or_default();
            if *have != want {
                let subscribe: Vec<String> = want.difference(have).cloned().collect();
                let unsubscribe: Vec<String> = have.difference(&want).cloned().collect();
                debug!(
                    type_url = t.as_str(),
                    ?subscribe,
                    ?unsubscribe,
                    "updating subscriptions"
                );
                *have = want;
                send(DeltaDiscoveryRequest {
                    type_url: t.as_str().into(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                });
            }
        }
        if !seq.lds_requested && applier.clusters_warm() {
            seq.lds_requested = true;
            send(initial(TypeUrl::Listener, applier, &mut subscribed));
        }
        let (c, l) = applier.warming_names();
        applier.dump.set_warming(c, l);
    }
}

fn handle_delta(applier: &mut Applier, resp: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    let ack = |message: Option<String>| DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        error_detail: nack(message),
        ..Default::default()
    };
    let Some(t) = TypeUrl::parse(&resp.type_url) else {
        return ack(Some(format!(
            "unsupported resource type {:?}",
            resp.type_url
        )));
    };
    let mut errors = Vec::new();
    let mut updates = Vec::with_capacity(resp.resources.len());
    for r in &resp.resources {
        match &r.resource {
            Some(any) if any.type_url == t.as_str() => updates.push(Incoming {
                name: r.name.clone(),
                version: r.version.clone(),
                resource: any.clone(),
            }),
            Some(any) => errors.push(format!(
                "{:?}: resource type {:?} does not match {:?}",
                r.name, any.type_url, resp.type_url
            )),
            None => errors.push(format!("{:?}: resource has no body", r.name)),
        }
    }
    debug!(type_url = t.as_str(), n = updates.len(), removed = resp.removed_resources.len(), nonce = %resp.nonce, "delta response");
    let outcome = applier.apply(
        t,
        &resp.system_version_info,
        updates,
        resp.removed_resources.clone(),
    );
    errors.extend(outcome.errors);
    ack((!errors.is_empty()).then(|| errors.join("; ")))
}

// === state of the world ===

#[derive(Default)]
struct SotwType {
    /// Last accepted version (sent back in NACKs and subscription changes).
    version: String,
    nonce: String,
    names: BTreeSet<String>,
    /// Names in the last full state (CDS/LDS), to compute removals.
    known: BTreeSet<String>,
}

async fn sotw(
    cfg: &XdsConfig,
    mut client: AggregatedDiscoveryServiceClient<Channel>,
    applier: &mut Applier,
    progressed: &mut bool,
) -> Result<(), XdsError> {
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    let mut node = Some(cfg.node.to_proto());
    let mut types: HashMap<TypeUrl, SotwType> = HashMap::new();
    let mut seq = Sequencer::new(applier);
    let mut send = |req: DiscoveryRequest| {
        let mut req = req;
        if let Some(n) = node.take() {
            req.node = Some(n);
        }
        let _ = tx.try_send(req);
    };
    let initial = |t: TypeUrl, applier: &Applier, types: &mut HashMap<TypeUrl, SotwType>| {
        let st = types.entry(t).or_default();
        st.names = applier.subscriptions(t).unwrap_or_default();
        st.known = applier.dump.versions(t).into_keys().collect();
        DiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names: st.names.iter().cloned().collect(),
            ..Default::default()
        }
    };
    send(initial(TypeUrl::Cluster, applier, &mut types));
    if seq.lds_requested {
        for t in [
            TypeUrl::ClusterLoadAssignment,
            TypeUrl::Listener,
            TypeUrl::RouteConfiguration,
        ] {
            send(initial(t, applier, &mut types));
        }
    }
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    applier.stats().server.control_plane_connected.set(1);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let Some(resp) = msg? else { return Err(XdsError::Closed) };
                let reply = handle_sotw(applier, &mut types, resp);
                send(reply);
                *progressed = true;
            }
            _ = ticker.tick() => {
                applier.tick(Instant::now());
            }
        }
        for t in [TypeUrl::ClusterLoadAssignment, TypeUrl::RouteConfiguration] {
            if !seq.lds_requested && t == TypeUrl::RouteConfiguration {
                continue;
            }
            let want = applier.subscriptions(t).unwrap_or_default();
            let st = types.entry(t).or_default();
            if st.names != want {
                debug!(type_url = t.as_str(), names = ?want, "updating subscriptions");
                st.names = want;
                send(DiscoveryRequest {
                    version_info: st.version.clone(),
                    response_nonce: st.nonce.clone(),
                    type_url: t.as_str().into(),
                    resource_names: st.names.iter().cloned().collect(),
                    ..Default::default()
                });
            }
        }
        if !seq.lds_requested && applier.clusters_warm() {
            seq.lds_requested = true;
            send(initial(TypeUrl::Listener, applier, &mut types));
        }
        let (c, l) = applier.warming_names();
        applier.dump.set_warming(c, l);
    }
}

fn handle_sotw(
    applier: &mut Applier,
    types: &mut HashMap<TypeUrl, SotwType>,
    resp: DiscoveryResponse,
) -> DiscoveryRequest {
    let Some(t) = TypeUrl::parse(&resp.type_url) else {
        return DiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: nack(Some(format!(
                "unsupported resource type {:?}",
                resp.type_url
            ))),
            ..Default::default()
        };
    };
    let mut errors = Vec::new();
    let mut updates = Vec::with_capacity(resp.resources.len());
    for (i, any) in resp.resources.iter().enumerate() {
        let any = if any.type_url == RESOURCE_WRAPPER {
            match Resource::decode(any.value.as_slice()) {
                Ok(Resource {
                    resource: Some(inner),
                    ..
                }) => inner,
                _ => {
                    errors.push(format!(
                        "resources[{i}]: cannot decode the Resource wrapper"
                    ));
                    continue;
                }
            }
        } else {
            any.clone()
        };
        if any.type_url != t.as_str() {
            errors.push(format!(
                "resources[{i}]: type {:?} does not match {:?}",
                any.type_url, resp.type_url
            ));
            continue;
        }
        match NameOnly::decode(any.value.as_slice()) {
            Ok(n) if !n.name.is_empty() => updates.push(Incoming {
                name: n.name,
                version: String::new(),
                resource: any,
            }),
            _ => errors.push(format!("resources[{i}]: resource has no name")),
        }
    }
    let st = types.entry(t).or_default();
    let removed: Vec<String> = if t.is_wildcard() {
        let present: BTreeSet<&str> = updates.iter().map(|u| u.name.as_str()).collect();
        st.known
            .iter()
            .filter(|n| !present.contains(n.as_str()))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    debug!(type_url = t.as_str(), version = %resp.version_info, n = updates.len(), removed = removed.len(), "sotw response");
    if t.is_wildcard() {
        st.known = updates.iter().map(|u| u.name.clone()).collect();
    }
    let outcome = applier.apply(t, &resp.version_info, updates, removed);
    errors.extend(outcome.errors);
    st.nonce = resp.nonce.clone();
    if errors.is_empty() {
        st.version = resp.version_info.clone();
    }
    DiscoveryRequest {
        version_info: st.version.clone(),
        resource_names: st.names.iter().cloned().collect(),
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce,
        error_detail: nack((!errors.is_empty()).then(|| errors.join("; "))),
        ..Default::default()
    }
}
