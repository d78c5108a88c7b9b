//! The state-of-the-world ADS protocol for one stream, without I/O: requests and pushes in,
//! responses out. Follows Envoy's "xDS REST and gRPC protocol":
//!
//! - a request with an empty `response_nonce` opens (or, after a reconnect, reopens) a type:
//!   it is always answered;
//! - a request whose nonce is not the last one sent for its type is stale and ignored (the
//!   client will answer the newer response too);
//! - `error_detail` marks a NACK, its absence an ACK; neither is answered unless the request
//!   also adds resource names, which must then be sent even if unchanged;
//! - a push resends a type only if the `version_info` of what the client selects changed.
//!   Listener and cluster responses carry everything the subscription selects (the protocol
//!   requires it); a pushed route or endpoint response carries only the resources that
//!   changed since the last response on the stream, as the protocol allows for those types
//!   and as istiod does for incremental EDS (one changed service is one load assignment,
//!   not the thousands a proxy holds). Answers to requests carry everything selected.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

use super::resources::{ProxyResources, TypeResources, Versioned};
use super::status::{Now, SyncStatus};
use super::subscription::Subscription;
use super::types::{TypeSet, XdsType};
use super::wire::{Outgoing, SotwRequest};
use super::{AckKind, CONTROL_PLANE_ID};

/// One type's protocol state on the stream.
#[derive(Debug)]
struct TypeState {
    sub: Subscription,
    last_nonce: Option<String>,
    /// The set the last response was built from: a push sends only if what the client
    /// selects differs from it (and, for routes and endpoints, only what differs).
    sent_set: Option<Arc<TypeResources>>,
    /// Counts subscription changes: part of `version_info`, so that a response to a new
    /// selection never repeats the version of the previous one.
    sub_epoch: u64,
}

/// What a request did.
#[derive(Debug)]
pub struct Handled<R> {
    pub ty: Option<XdsType>,
    pub ack: AckKind,
    pub response: Option<R>,
}

/// The SotW protocol state of one stream.
#[derive(Debug, Default)]
pub struct SotwStream {
    types: BTreeMap<XdsType, TypeState>,
    /// Type URLs we do not serve that the client asked for, answered once with nothing.
    unknown: BTreeMap<String, u64>,
    nonce: u64,
}

impl SotwStream {
    pub fn new() -> SotwStream {
        SotwStream::default()
    }

    fn next_nonce(&mut self) -> String {
        self.nonce += 1;
        self.nonce.to_string()
    }

    /// Handles one request against the proxy's current resources.
    pub fn on_request(
        &mut self,
        req: &SotwRequest,
        res: &ProxyResources,
        status: &mut SyncStatus,
        now: Now,
    ) -> Handled<Outgoing<DiscoveryResponse>> {
        let Some(ty) = XdsType::from_type_url(&req.type_url) else {
            return self.on_unknown(req);
        };
        let state = self.types.entry(ty).or_insert_with(|| TypeState {
            sub: Subscription::initial(),
            last_nonce: None,
            sent_set: None,
            sub_epoch: 0,
        });

        let (ack, respond) = if req.response_nonce.is_empty() {
            // Opening (or reopening after a reconnect) the type: always answer.
            state
                .sub
                .apply_sotw(ty, &req.resource_names, &|name| res.get(ty).intern(name));
            state.sub_epoch += 1;
            (
                AckKind::Initial,
                !state.sub.is_empty() || ty.supports_wildcard(),
            )
        } else if state.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            return Handled {
                ty: Some(ty),
                ack: AckKind::Stale,
                response: None,
            };
        } else {
            let ack = match &req.error_detail {
                Some(err) => {
                    status.get_mut(ty).record_nack(
                        req.version_info.clone(),
                        req.response_nonce.clone(),
                        err.message.clone(),
                        now,
                    );
                    AckKind::Nack(err.message.clone())
                }
                None => {
                    status.get_mut(ty).record_ack(
                        req.version_info.clone(),
                        req.response_nonce.clone(),
                        now,
                    );
                    AckKind::Ack
                }
            };
            let change = state
                .sub
                .apply_sotw(ty, &req.resource_names, &|name| res.get(ty).intern(name));
            if change.is_some() {
                state.sub_epoch += 1;
            }
            let respond = change.is_some_and(|c| c.became_wildcard || !c.added.is_empty());
            (ack, respond)
        };
        status.get_mut(ty).subscription = state.sub.describe();

        let response = respond.then(|| self.respond(ty, res, status, now, None));
        Handled {
            ty: Some(ty),
            ack,
            response,
        }
    }

    /// Sends what changed after a push: each type in `types` the client has opened, in push
    /// order, if the version of what it selects is not the one last sent.
    pub fn on_push(
        &mut self,
        res: &ProxyResources,
        types: TypeSet,
        status: &mut SyncStatus,
        now: Now,
    ) -> Vec<(XdsType, Outgoing<DiscoveryResponse>)> {
        let mut out = Vec::new();
        for ty in XdsType::PUSH_ORDER {
            if !types.contains(ty) {
                continue;
            }
            let Some(state) = self.types.get(&ty) else {
                continue;
            };
            if state.sub.is_empty() {
                continue;
            }
            let new = res.get_arc(ty);
            let changed = match &state.sent_set {
                Some(sent) if Arc::ptr_eq(sent, new) => continue,
                Some(sent) => changed_selected(&state.sub, sent, new),
                None => None,
            };
            let partial = match changed {
                // Nothing the client selects changed.
                Some(changed) if changed.is_empty() => {
                    if let Some(state) = self.types.get_mut(&ty) {
                        state.sent_set = Some(new.clone());
                    }
                    continue;
                }
                Some(changed) if !ty.supports_wildcard() => {
                    let resources: Vec<Arc<Versioned>> = changed
                        .iter()
                        .filter_map(|name| new.get(name))
                        .cloned()
                        .collect();
                    if resources.is_empty() {
                        // Only removals, which SotW cannot express for these types (the client
                        // drops them when their cluster or listener goes): nothing to send.
                        if let Some(state) = self.types.get_mut(&ty) {
                            state.sent_set = Some(new.clone());
                        }
                        continue;
                    }
                    Some(resources)
                }
                _ => None,
            };
            out.push((ty, self.respond(ty, res, status, now, partial)));
        }
        out
    }

    /// A response with everything `ty`'s subscription selects, or only `partial`.
    fn respond(
        &mut self,
        ty: XdsType,
        res: &ProxyResources,
        status: &mut SyncStatus,
        now: Now,
        partial: Option<Vec<Arc<Versioned>>>,
    ) -> Outgoing<DiscoveryResponse> {
        let nonce = self.next_nonce();
        let typed = res.get(ty);
        let Some(state) = self.types.get_mut(&ty) else {
            // Unreachable: callers respond only for opened types.
            return Outgoing::default();
        };
        // The version of the type's whole set and of the selection: it changes whenever
        // anything the client selects changes, and costs nothing to compute.
        let version = format!("{}-{}", typed.version(), state.sub_epoch);
        let resources: Vec<_> =
            partial.unwrap_or_else(|| typed.selected(&state.sub).map(|(_, v)| v.clone()).collect());
        state.last_nonce = Some(nonce.clone());
        state.sent_set = Some(res.get_arc(ty).clone());
        status
            .get_mut(ty)
            .record_sent(version.clone(), nonce.clone(), resources.len(), 0, now);
        Outgoing {
            head: DiscoveryResponse {
                version_info: version,
                type_url: ty.type_url().to_string(),
                nonce,
                control_plane: Some(ControlPlane {
                    identifier: CONTROL_PLANE_ID.to_string(),
                }),
                ..Default::default()
            },
            resources,
            hold: None,
        }
    }

    /// A type we do not serve: answered once with an empty response so that a client
    /// waiting for it during initialization is not stuck; ACKs of it are ignored.
    fn on_unknown(&mut self, req: &SotwRequest) -> Handled<Outgoing<DiscoveryResponse>> {
        if !req.response_nonce.is_empty() || self.unknown.contains_key(&req.type_url) {
            return Handled {
                ty: None,
                ack: AckKind::Ignored,
                response: None,
            };
        }
        let nonce = self.next_nonce();
        self.unknown.insert(req.type_url.clone(), self.nonce);
        Handled {
            ty: None,
            ack: AckKind::Ignored,
            response: Some(Outgoing::new(DiscoveryResponse {
                type_url: req.type_url.clone(),
                nonce,
                ..Default::default()
            })),
        }
    }

    /// The current subscription of `ty`, if the client opened it.
    pub fn subscription(&self, ty: XdsType) -> Option<&Subscription> {
        self.types.get(&ty).map(|s| &s.sub)
    }
}

/// The names `sub` selects whose resource differs between `sent` and `new` (changed, added
/// or removed). Both sets are sorted by name: one walk.
fn changed_selected(
    sub: &Subscription,
    sent: &TypeResources,
    new: &TypeResources,
) -> Option<Vec<Arc<str>>> {
    let mut out = Vec::new();
    let (mut a, mut b) = (sent.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((na, _)), Some((nb, _))) if Arc::ptr_eq(na, nb) => Ordering::Equal,
            (Some((na, _)), Some((nb, _))) => na.cmp(nb),
        };
        let differs = match order {
            Ordering::Equal => match (a.next(), b.next()) {
                (Some((_, va)), Some((nb, vb))) => {
                    (!Arc::ptr_eq(va, vb) && va.version != vb.version).then_some(nb)
                }
                _ => None,
            },
            Ordering::Less => a.next().map(|(n, _)| n),
            Ordering::Greater => b.next().map(|(n, _)| n),
        };
        if let Some(name) = differs
            && sub.selects(name)
        {
            out.push(name.clone());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    use super::*;
    use crate::translate::{Generated, Named};
    use crate::xds::status::SyncState;

    fn named(ty: XdsType, name: &str, body: &str) -> Named {
        Named {
            name: name.to_string(),
            resource: envoy_types::pb::google::protobuf::Any {
                type_url: ty.type_url().to_string(),
                value: body.as_bytes().to_vec(),
            },
        }
    }

    fn resources(clusters: &[(&str, &str)], endpoints: &[(&str, &str)]) -> ProxyResources {
        let g = Generated {
            clusters: clusters
                .iter()
                .map(|(n, b)| named(XdsType::Cluster, n, b))
                .collect(),
            endpoints: endpoints
                .iter()
                .map(|(n, b)| named(XdsType::Endpoint, n, b))
                .collect(),
            ..Default::default()
        };
        ProxyResources::from_generated(g).0
    }

    fn req(ty: XdsType, names: &[&str], version: &str, nonce: &str) -> SotwRequest {
        SotwRequest {
            type_url: ty.type_url().to_string(),
            resource_names: names
                .iter()
                .map(|s| prost::bytes::Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
            version_info: version.to_string(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn initial_ack_nack_and_stale() {
        let res = resources(&[("a", "1"), ("b", "1")], &[]);
        let mut s = SotwStream::new();
        let mut st = SyncStatus::default();
        let now = Now::read();

        let h = s.on_request(&req(XdsType::Cluster, &[], "", ""), &res, &mut st, now);
        assert_eq!(h.ack, AckKind::Initial);
        let r = h.response.expect("initial request is answered");
        assert_eq!(r.resources.len(), 2);
        assert_eq!(st.get(XdsType::Cluster).state(), SyncState::Stale);

        // ACK: no response, SYNCED.
        let h = s.on_request(
            &req(XdsType::Cluster, &[], &r.head.version_info, &r.head.nonce),
            &res,
            &mut st,
            now,
        );
        assert_eq!(h.ack, AckKind::Ack);
        assert!(h.response.is_none());
        assert_eq!(st.get(XdsType::Cluster).state(), SyncState::Synced);

        // A push with the same resources sends nothing.
        assert!(s.on_push(&res, TypeSet::ALL, &mut st, now).is_empty());

        // A change is pushed; the client NACKs it with the old version.
        let res2 = resources(&[("a", "2"), ("b", "1")], &[]);
        let pushed = s.on_push(&res2, TypeSet::ALL, &mut st, now);
        assert_eq!(pushed.len(), 1);
        let (_, r2) = &pushed[0];
        assert_ne!(r2.head.version_info, r.head.version_info);
        let mut nack = req(XdsType::Cluster, &[], &r.head.version_info, &r2.head.nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "cluster a: bad lb_policy".into(),
            details: vec![],
        });
        let h = s.on_request(&nack, &res2, &mut st, now);
        assert_eq!(h.ack, AckKind::Nack("cluster a: bad lb_policy".into()));
        assert!(
            h.response.is_none(),
            "a NACK is not answered with the same config"
        );
        let t = st.get(XdsType::Cluster);
        assert_eq!(t.state(), SyncState::Stale);
        assert_eq!(t.nack.as_ref().unwrap().message, "cluster a: bad lb_policy");
        // The rejected config is not resent by an unrelated push.
        assert!(s.on_push(&res2, TypeSet::ALL, &mut st, now).is_empty());

        // An old nonce is stale and ignored.
        let h = s.on_request(
            &req(XdsType::Cluster, &[], &r.head.version_info, &r.head.nonce),
            &res2,
            &mut st,
            now,
        );
        assert_eq!(h.ack, AckKind::Stale);
        assert!(h.response.is_none());
    }

    #[test]
    fn named_subscriptions_send_new_names() {
        let res = resources(&[], &[("a", "1"), ("b", "1"), ("c", "1")]);
        let mut s = SotwStream::new();
        let mut st = SyncStatus::default();
        let now = Now::read();

        let r = s
            .on_request(&req(XdsType::Endpoint, &["a"], "", ""), &res, &mut st, now)
            .response
            .unwrap();
        assert_eq!(r.resources.len(), 1);
        // ACK that also adds b: must be answered with a and b.
        let h = s.on_request(
            &req(
                XdsType::Endpoint,
                &["a", "b"],
                &r.head.version_info,
                &r.head.nonce,
            ),
            &res,
            &mut st,
            now,
        );
        assert_eq!(h.ack, AckKind::Ack);
        let r2 = h.response.expect("new names are sent");
        assert_eq!(r2.resources.len(), 2);
        // Only a push that changes a selected resource is sent, with only what changed.
        let res2 = resources(&[], &[("a", "1"), ("b", "1"), ("c", "2")]);
        assert!(s.on_push(&res2, TypeSet::ALL, &mut st, now).is_empty());
        let res3 = resources(&[], &[("a", "1"), ("b", "2"), ("c", "2")]);
        let pushed = s.on_push(&res3, TypeSet::ALL, &mut st, now);
        assert_eq!(pushed.len(), 1);
        let (_, r3) = &pushed[0];
        assert_eq!(
            r3.resources
                .iter()
                .map(|a| a.resource.value.as_slice())
                .collect::<Vec<_>>(),
            [b"2".as_slice()],
            "only b changed"
        );
        assert_ne!(r3.head.version_info, r2.head.version_info);
        // Its version is that of everything selected: the same as a full answer's.
        let full = s
            .on_request(
                &req(
                    XdsType::Endpoint,
                    &["a", "b", "c"],
                    &r3.head.version_info,
                    &r3.head.nonce,
                ),
                &res3,
                &mut st,
                now,
            )
            .response
            .expect("c is new");
        assert_eq!(full.resources.len(), 3);
        // A selected resource that disappears: nothing SotW could say.
        let res4 = resources(&[], &[("a", "1"), ("b", "2")]);
        assert!(s.on_push(&res4, TypeSet::ALL, &mut st, now).is_empty());
        // Clusters are always whole.
        let res5 = resources(&[("x", "1"), ("y", "1")], &[("a", "1"), ("b", "2")]);
        s.on_request(&req(XdsType::Cluster, &[], "", ""), &res5, &mut st, now);
        let res6 = resources(&[("x", "1"), ("y", "2")], &[("a", "1"), ("b", "2")]);
        let pushed = s.on_push(&res6, TypeSet::ALL, &mut st, now);
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].1.resources.len(), 2, "CDS carries every cluster");
    }

    #[test]
    fn push_order_and_eds_only() {
        let res = resources(&[("a", "1")], &[("a", "1")]);
        let mut s = SotwStream::new();
        let mut st = SyncStatus::default();
        let now = Now::read();
        s.on_request(&req(XdsType::Endpoint, &["a"], "", ""), &res, &mut st, now);
        s.on_request(&req(XdsType::Cluster, &[], "", ""), &res, &mut st, now);
        let res2 = resources(&[("a", "2")], &[("a", "2")]);
        let eds_only = s.on_push(&res2, TypeSet::ENDPOINTS, &mut st, now);
        assert_eq!(
            eds_only.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [XdsType::Endpoint]
        );
        let res3 = resources(&[("a", "3")], &[("a", "3")]);
        let full = s.on_push(&res3, TypeSet::ALL, &mut st, now);
        assert_eq!(
            full.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            [XdsType::Cluster, XdsType::Endpoint]
        );
    }

    #[test]
    fn unknown_types_are_answered_once() {
        let res = ProxyResources::default();
        let mut s = SotwStream::new();
        let mut st = SyncStatus::default();
        let mut r = req(XdsType::Cluster, &[], "", "");
        r.type_url = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into();
        assert!(
            s.on_request(&r, &res, &mut st, Now::read())
                .response
                .is_some()
        );
        assert!(
            s.on_request(&r, &res, &mut st, Now::read())
                .response
                .is_none()
        );
    }
}
