//! The incremental ("delta") ADS protocol for one stream, without I/O. Follows the
//! "Incremental xDS" part of Envoy's protocol doc:
//!
//! - the server tracks which version of each resource the client has (seeded from
//!   `initial_resource_versions` on the first request of a type) and sends only resources
//!   whose version differs, plus `removed_resources` for ones that went away;
//! - subscription changes are honoured even with a stale nonce; the nonce only pairs an
//!   ACK/NACK (`error_detail`) with a response;
//! - newly subscribed names are sent even if the client seems to have them, and a name that
//!   does not exist is answered in `removed_resources` so the client need not wait for a
//!   timeout;
//! - unsubscribing a name while also subscribed to the wildcard is answered with the resource
//!   (if the wildcard covers it) or its removal.
//!
//! The client's view is updated when a response is sent, not when it is ACKed: after a
//! NACK the server does not resend the rejected resource until it changes again, which is
//! the same rule the SotW side follows.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};

use super::resources::{ProxyResources, TypeResources, Versioned};
use super::sotw::Handled;
use super::status::{Now, SyncStatus};
use super::subscription::Subscription;
use super::types::{TypeSet, XdsType};
use super::wire::Outgoing;
use super::{AckKind, CONTROL_PLANE_ID};

#[derive(Debug)]
struct TypeState {
    sub: Subscription,
    /// What the client has: name -> version. Names share the interned resource's `Arc`:
    /// an unscoped proxy knows thousands, and a `String` each cost more than the rest of
    /// its stream state.
    known: HashMap<Arc<str>, Arc<str>>,
    last_nonce: Option<String>,
    /// The set `known` was last brought in line with (for every selected name), so that a
    /// push only needs to look at what differs between it and the new set; `None` after a
    /// request changed the subscription or what the client has.
    base: Option<Arc<TypeResources>>,
}

/// The delta protocol state of one stream.
#[derive(Debug, Default)]
pub struct DeltaStream {
    types: BTreeMap<XdsType, TypeState>,
    unknown: BTreeSet<String>,
    nonce: u64,
}

/// Resources to send and names to remove, before they become a response.
#[derive(Default)]
struct Pending {
    send: BTreeSet<String>,
    remove: BTreeSet<String>,
}

impl DeltaStream {
    pub fn new() -> DeltaStream {
        DeltaStream::default()
    }

    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        res: &ProxyResources,
        status: &mut SyncStatus,
        now: Now,
    ) -> Handled<Outgoing<DeltaDiscoveryResponse>> {
        let Some(ty) = XdsType::from_type_url(&req.type_url) else {
            return self.on_unknown(req);
        };
        let first = !self.types.contains_key(&ty);
        let state = self.types.entry(ty).or_insert_with(|| TypeState {
            sub: Subscription::initial(),
            known: HashMap::new(),
            last_nonce: None,
            base: None,
        });

        let ack = if req.response_nonce.is_empty() {
            if first {
                AckKind::Initial
            } else {
                AckKind::Spontaneous
            }
        } else if state.last_nonce.as_deref() != Some(req.response_nonce.as_str()) {
            AckKind::Stale
        } else {
            let t = status.get_mut(ty);
            let version = t
                .sent
                .as_ref()
                .map(|s| s.stamp.version.clone())
                .unwrap_or_default();
            match &req.error_detail {
                Some(err) => {
                    t.record_nack(
                        version,
                        req.response_nonce.clone(),
                        err.message.clone(),
                        now,
                    );
                    AckKind::Nack(err.message.clone())
                }
                None => {
                    t.record_ack(version, req.response_nonce.clone(), now);
                    AckKind::Ack
                }
            }
        };

        if first {
            for (name, version) in &req.initial_resource_versions {
                let name = res.get(ty).intern(name);
                state.known.insert(name, version.as_str().into());
            }
        }
        let change = state.sub.apply_delta(
            ty,
            first,
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
            &|name| res.get(ty).intern(name),
        );
        status.get_mut(ty).subscription = state.sub.describe();
        if first || change.is_some() {
            state.base = None;
        }

        let typed = res.get(ty);
        let mut pending = Pending::default();
        if first {
            // Everything selected that the client lacks or has in another version, and
            // everything it has that no longer exists or that it named but does not exist.
            diff(state, typed, &mut pending);
            for name in &req.resource_names_subscribe {
                if name != super::subscription::WILDCARD && typed.get(name).is_none() {
                    pending.remove.insert(name.clone());
                }
            }
        } else if let Some(change) = change {
            for name in &change.added {
                // Sent even if the client seems to have it: it may have forgotten it.
                if typed.get(name).is_some() {
                    pending.send.insert(name.clone());
                } else {
                    pending.remove.insert(name.clone());
                }
            }
            for name in &change.removed {
                if state.sub.is_wildcard() {
                    // Still covered or not by the wildcard: the client cannot tell, so say.
                    if typed.get(name).is_some() {
                        pending.send.insert(name.clone());
                    } else {
                        pending.remove.insert(name.clone());
                    }
                } else {
                    state.known.remove(name.as_str());
                }
            }
            if change.lost_wildcard {
                let sub = &state.sub;
                state.known.retain(|name, _| sub.selects(name));
            }
            if change.became_wildcard {
                diff(state, typed, &mut pending);
                state.base = Some(res.get_arc(ty).clone());
            }
        }
        if first {
            // In line with the whole set once this answer is sent: the next push diffs
            // against it in one walk, instead of looking up every name the client knows
            // (the first push after a connect storm did that for every proxy at once).
            state.base = Some(res.get_arc(ty).clone());
        }

        // The first request of a type is always answered, even with nothing, so that a
        // client waiting for the type during initialization can proceed.
        let response = (first || !pending.send.is_empty() || !pending.remove.is_empty())
            .then(|| self.respond(ty, res, pending, status, now));
        Handled {
            ty: Some(ty),
            ack,
            response,
        }
    }

    /// Sends what changed after a push, type by type in push order.
    pub fn on_push(
        &mut self,
        res: &ProxyResources,
        types: TypeSet,
        status: &mut SyncStatus,
        now: Now,
    ) -> Vec<(XdsType, Outgoing<DeltaDiscoveryResponse>)> {
        let mut out = Vec::new();
        for ty in XdsType::PUSH_ORDER {
            if !types.contains(ty) {
                continue;
            }
            let Some(state) = self.types.get_mut(&ty) else {
                continue;
            };
            let new = res.get_arc(ty);
            let mut pending = Pending::default();
            match &state.base {
                Some(base) if Arc::ptr_eq(base, new) => continue,
                Some(base) => diff_sets(state, base, new, &mut pending),
                None => diff(state, new, &mut pending),
            }
            state.base = Some(new.clone());
            if pending.send.is_empty() && pending.remove.is_empty() {
                continue;
            }
            out.push((ty, self.respond(ty, res, pending, status, now)));
        }
        out
    }

    fn respond(
        &mut self,
        ty: XdsType,
        res: &ProxyResources,
        pending: Pending,
        status: &mut SyncStatus,
        now: Now,
    ) -> Outgoing<DeltaDiscoveryResponse> {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let typed = res.get(ty);
        let Some(state) = self.types.get_mut(&ty) else {
            return Outgoing::default();
        };
        let mut resources = Vec::with_capacity(pending.send.len());
        for name in pending.send {
            if let Some(v) = typed.get(&name) {
                state.known.insert(v.name.clone(), v.version.clone());
                resources.push(v.clone());
            }
        }
        let removed: Vec<String> = pending.remove.into_iter().collect();
        for name in &removed {
            state.known.remove(name.as_str());
        }
        state.last_nonce = Some(nonce.clone());
        // Informational in delta: the version of the type's whole set (cheap, and it changes
        // whenever anything the client could have changes).
        let version = typed.version().to_string();
        status.get_mut(ty).record_sent(
            version.clone(),
            nonce.clone(),
            resources.len(),
            removed.len(),
            now,
        );
        Outgoing {
            head: DeltaDiscoveryResponse {
                system_version_info: version,
                type_url: ty.type_url().to_string(),
                removed_resources: removed,
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

    fn on_unknown(
        &mut self,
        req: &DeltaDiscoveryRequest,
    ) -> Handled<Outgoing<DeltaDiscoveryResponse>> {
        if !req.response_nonce.is_empty() || !self.unknown.insert(req.type_url.clone()) {
            return Handled {
                ty: None,
                ack: AckKind::Ignored,
                response: None,
            };
        }
        self.nonce += 1;
        Handled {
            ty: None,
            ack: AckKind::Ignored,
            response: Some(Outgoing::new(DeltaDiscoveryResponse {
                type_url: req.type_url.clone(),
                nonce: self.nonce.to_string(),
                ..Default::default()
            })),
        }
    }

    /// What the server believes the client has of `ty` (name -> version).
    pub fn known(&self, ty: XdsType) -> Option<&HashMap<Arc<str>, Arc<str>>> {
        self.types.get(&ty).map(|s| &s.known)
    }
}

/// Selected resources whose version the client lacks, and known names that are gone.
fn diff(state: &TypeState, typed: &TypeResources, pending: &mut Pending) {
    for (name, v) in typed.selected(&state.sub) {
        if state.known.get(&**name) != Some(&v.version) {
            pending.send.insert(name.to_string());
        }
    }
    for name in state.known.keys() {
        if typed.get(name).is_none() && state.sub.selects(name) {
            pending.remove.insert(name.to_string());
        }
    }
}

/// [`diff`] for a client in line with `base`: only names whose resource differs between
/// `base` and `new` can need sending or removing. Both sets are sorted by name: one walk.
fn diff_sets(state: &TypeState, base: &TypeResources, new: &TypeResources, pending: &mut Pending) {
    let lacks = |name: &Arc<str>, v: &Versioned| {
        state.sub.selects(name) && state.known.get(&**name) != Some(&v.version)
    };
    let gone = |name: &Arc<str>| state.sub.selects(name) && state.known.contains_key(&**name);
    let (mut a, mut b) = (base.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((na, _)), Some((nb, _))) if Arc::ptr_eq(na, nb) => Ordering::Equal,
            (Some((na, _)), Some((nb, _))) => na.cmp(nb),
        };
        match order {
            Ordering::Equal => {
                if let (Some((_, va)), Some((nb, vb))) = (a.next(), b.next())
                    && !Arc::ptr_eq(va, vb)
                    && va.version != vb.version
                    && lacks(nb, vb)
                {
                    pending.send.insert(nb.to_string());
                }
            }
            Ordering::Less => {
                if let Some((na, _)) = a.next()
                    && gone(na)
                {
                    pending.remove.insert(na.to_string());
                }
            }
            Ordering::Greater => {
                if let Some((nb, vb)) = b.next()
                    && lacks(nb, vb)
                {
                    pending.send.insert(nb.to_string());
                }
            }
        }
    }
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

    fn clusters(items: &[(&str, &str)]) -> ProxyResources {
        let g = Generated {
            clusters: items
                .iter()
                .map(|(n, b)| named(XdsType::Cluster, n, b))
                .collect(),
            endpoints: items
                .iter()
                .map(|(n, b)| named(XdsType::Endpoint, n, b))
                .collect(),
            ..Default::default()
        };
        ProxyResources::from_generated(g).0
    }

    fn req(ty: XdsType, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: ty.type_url().to_string(),
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    fn names(r: &Outgoing<DeltaDiscoveryResponse>) -> Vec<&str> {
        r.resources.iter().map(|r| &*r.name).collect()
    }

    #[test]
    fn wildcard_sends_only_changes() {
        let mut d = DeltaStream::new();
        let mut st = SyncStatus::default();
        let now = Now::read();
        let res = clusters(&[("a", "1"), ("b", "1")]);
        let r = d
            .on_request(&req(XdsType::Cluster, &[], &[], ""), &res, &mut st, now)
            .response
            .unwrap();
        assert_eq!(names(&r), ["a", "b"]);
        // The client is in line with the whole set: the next push walks two sets.
        let base = d.types[&XdsType::Cluster].base.as_ref().unwrap();
        assert!(Arc::ptr_eq(base, res.get_arc(XdsType::Cluster)));
        let h = d.on_request(
            &req(XdsType::Cluster, &[], &[], &r.head.nonce),
            &res,
            &mut st,
            now,
        );
        assert_eq!(h.ack, AckKind::Ack);
        assert!(h.response.is_none());
        assert_eq!(st.get(XdsType::Cluster).state(), SyncState::Synced);

        let res2 = clusters(&[("a", "2"), ("c", "1")]);
        let out = d.on_push(&res2, TypeSet::ALL, &mut st, now);
        assert_eq!(out.len(), 1);
        let (_, r2) = &out[0];
        assert_eq!(names(r2), ["a", "c"]);
        assert_eq!(r2.head.removed_resources, ["b"]);
        // Nothing changed: nothing sent.
        assert!(d.on_push(&res2, TypeSet::ALL, &mut st, now).is_empty());
    }

    #[test]
    fn reconnect_with_initial_versions_skips_what_client_has() {
        let res = clusters(&[("a", "1"), ("b", "1")]);
        let va = res
            .get(XdsType::Cluster)
            .get("a")
            .unwrap()
            .version
            .to_string();
        let mut r = req(XdsType::Cluster, &["*"], &[], "");
        r.initial_resource_versions.insert("a".into(), va);
        r.initial_resource_versions
            .insert("gone".into(), "x".into());
        let mut d = DeltaStream::new();
        let mut st = SyncStatus::default();
        let resp = d
            .on_request(&r, &res, &mut st, Now::read())
            .response
            .unwrap();
        assert_eq!(names(&resp), ["b"]);
        assert_eq!(resp.head.removed_resources, ["gone"]);
    }

    #[test]
    fn named_subscriptions_and_missing_resources() {
        let res = clusters(&[("a", "1"), ("b", "1")]);
        let mut d = DeltaStream::new();
        let mut st = SyncStatus::default();
        let now = Now::read();
        let r = d
            .on_request(
                &req(XdsType::Endpoint, &["a", "nope"], &[], ""),
                &res,
                &mut st,
                now,
            )
            .response
            .unwrap();
        assert_eq!(names(&r), ["a"]);
        assert_eq!(
            r.head.removed_resources,
            ["nope"],
            "a missing name is reported removed"
        );
        // Re-subscribing to a, which the client has: sent anyway. With a stale nonce too.
        let r2 = d
            .on_request(
                &req(XdsType::Endpoint, &["b"], &[], "999"),
                &res,
                &mut st,
                now,
            )
            .response
            .unwrap();
        assert_eq!(names(&r2), ["b"]);
        // Unsubscribe: no response; a later change of b is not sent.
        let h = d.on_request(
            &req(XdsType::Endpoint, &[], &["b"], &r2.head.nonce),
            &res,
            &mut st,
            now,
        );
        assert!(h.response.is_none());
        let res2 = clusters(&[("a", "1"), ("b", "2")]);
        assert!(d.on_push(&res2, TypeSet::ALL, &mut st, now).is_empty());
        // "nope" appears later: sent, since the client still subscribes to it.
        let res3 = clusters(&[("a", "1"), ("b", "2"), ("nope", "1")]);
        let out = d.on_push(&res3, TypeSet::ENDPOINTS, &mut st, now);
        assert_eq!(names(&out[0].1), ["nope"]);
    }

    #[test]
    fn unsubscribing_a_name_under_wildcard_is_answered() {
        let res = clusters(&[("a", "1")]);
        let mut d = DeltaStream::new();
        let mut st = SyncStatus::default();
        let now = Now::read();
        d.on_request(
            &req(XdsType::Cluster, &["*", "a", "x"], &[], ""),
            &res,
            &mut st,
            now,
        );
        let r = d
            .on_request(
                &req(XdsType::Cluster, &[], &["a", "x"], ""),
                &res,
                &mut st,
                now,
            )
            .response
            .unwrap();
        assert_eq!(names(&r), ["a"]);
        assert_eq!(r.head.removed_resources, ["x"]);
    }

    #[test]
    fn nack_is_recorded_and_not_resent() {
        let res = clusters(&[("a", "1")]);
        let mut d = DeltaStream::new();
        let mut st = SyncStatus::default();
        let now = Now::read();
        let r = d
            .on_request(&req(XdsType::Cluster, &[], &[], ""), &res, &mut st, now)
            .response
            .unwrap();
        let mut nack = req(XdsType::Cluster, &[], &[], &r.head.nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "no".into(),
            details: vec![],
        });
        let h = d.on_request(&nack, &res, &mut st, now);
        assert_eq!(h.ack, AckKind::Nack("no".into()));
        assert_eq!(st.get(XdsType::Cluster).state(), SyncState::Stale);
        assert!(d.on_push(&res, TypeSet::ALL, &mut st, now).is_empty());
    }
}
