//! Locality load balancing, as Istio's `loadbalancer.ApplyLocalityLoadBalancer`: the
//! endpoints of a cluster are weighted (`distribute`) or put into priorities relative to
//! the proxy's locality (`failover`, `failoverPriority`), so each proxy gets its own view.
//!
//! Failover needs outlier detection on the cluster (without it Envoy never finds a priority
//! unhealthy and never fails over), so priorities are only assigned when the cluster's
//! policy has `outlierDetection`, as in Istio. Locality LB is on by default (the mesh
//! config's `localityLbSetting: {enabled: true}`); a DestinationRule's setting replaces
//! the mesh's, and `enabled: false` on either turns it off.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Locality;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use mesh_api::mesh_config::MeshConfig;
use mesh_api::networking::{LocalityDistribute, LocalityFailover, LocalityLbSetting};

use super::util::u32v;
use crate::model::{split_locality, topology};
use crate::registry::Endpoint;

/// The locality setting in force for a cluster: the DestinationRule's (unless it disables
/// locality LB), else the mesh's (unless disabled), as Istio's `GetLocalityLbSetting`.
pub fn setting<'a>(
    mesh: &'a MeshConfig,
    rule: Option<&'a LocalityLbSetting>,
) -> Option<&'a LocalityLbSetting> {
    if let Some(r) = rule {
        return (r.enabled != Some(false)).then_some(r);
    }
    mesh.locality_lb_setting
        .as_ref()
        .filter(|m| m.enabled != Some(false))
}

/// What locality load balancing needs to know about the proxy and the cluster.
#[derive(Debug, Clone, Copy)]
pub struct LocalityCtx<'a> {
    /// The proxy's `region/zone/subzone` (empty when unknown).
    pub proxy_locality: &'a str,
    /// The proxy's labels, topology labels included.
    pub proxy_labels: &'a BTreeMap<String, String>,
    pub setting: &'a LocalityLbSetting,
    /// Whether the cluster has outlier detection (failover needs it).
    pub enable_failover: bool,
}

impl LocalityCtx<'_> {
    /// Whether the cluster needs Envoy's locality-weighted load balancing (Istio sets
    /// `common_lb_config.locality_weighted_lb_config` exactly then).
    pub fn weighted_cluster(&self) -> bool {
        !self.setting.distribute.is_empty()
            || (self.enable_failover
                && (!self.setting.failover.is_empty()
                    || !self.setting.failover_priority.is_empty()))
    }

    /// Applies the setting to a load assignment whose groups were built from `groups`
    /// (the registry endpoints of each `LocalityLbEndpoints`, same order), or `None` when
    /// the endpoints are not at hand (DNS clusters: `failoverPriority` is then not applied,
    /// as in Istio).
    pub fn apply(&self, cla: &mut ClusterLoadAssignment, groups: Option<&[Vec<&Endpoint>]>) {
        if !self.setting.distribute.is_empty() {
            apply_weights(self.proxy_locality, cla, &self.setting.distribute);
        } else if self.enable_failover {
            if !self.setting.failover_priority.is_empty() {
                if let Some(groups) = groups {
                    apply_failover_priorities(
                        cla,
                        groups,
                        self.proxy_labels,
                        &self.setting.failover_priority,
                    );
                }
                if !self.setting.failover.is_empty() {
                    apply_failover(self.proxy_locality, cla, &self.setting.failover);
                }
            } else {
                apply_failover(self.proxy_locality, cla, &self.setting.failover);
            }
        }
    }
}

fn parts(l: Option<&Locality>) -> (&str, &str, &str) {
    match l {
        Some(l) => (&l.region, &l.zone, &l.sub_zone),
        None => ("", "", ""),
    }
}

/// Whether a locality matches a rule (`region/zone/subzone`, `*` or a missing part matching
/// anything below the region), as Istio's `LocalityMatch`.
fn locality_match(locality: (&str, &str, &str), rule: &str) -> bool {
    let (r, z, s) = split_locality(rule);
    (r == "*" || locality.0 == r)
        && (z == "*" || z.is_empty() || locality.1 == z)
        && (s == "*" || s.is_empty() || locality.2 == s)
}

/// 0 when region, zone and subzone equal the proxy's, 1 for region and zone, 2 for the
/// region, else 3 (Istio's `LbPriority`).
fn lb_priority(proxy: (&str, &str, &str), ep: (&str, &str, &str)) -> u32 {
    if proxy.0 != ep.0 {
        3
    } else if proxy.1 != ep.1 {
        2
    } else if proxy.2 != ep.2 {
        1
    } else {
        0
    }
}

/// `distribute`: the first rule whose `from` matches the proxy sets each group's weight to
/// its share of the rule's weight for the groups it matches; groups no rule matches keep
/// no endpoints.
fn apply_weights(proxy: &str, cla: &mut ClusterLoadAssignment, distribute: &[LocalityDistribute]) {
    let proxy = split_locality(proxy);
    let Some(rule) = distribute
        .iter()
        .find(|d| locality_match(proxy, d.from.as_deref().unwrap_or("")))
    else {
        return;
    };
    let mut unmatched: BTreeSet<usize> = (0..cla.endpoints.len()).collect();
    for (to, weight) in &rule.to {
        let mut originals: Vec<(usize, u32)> = Vec::new();
        let mut total: u32 = 0;
        for (i, group) in cla.endpoints.iter().enumerate() {
            if unmatched.contains(&i) && locality_match(parts(group.locality.as_ref()), to) {
                unmatched.remove(&i);
                let w = group.load_balancing_weight.as_ref().map_or(1, |w| w.value);
                originals.push((i, w));
                total = total.saturating_add(w);
            }
        }
        for (i, original) in originals {
            let share = f64::from(original.saturating_mul(*weight)) / f64::from(total.max(1));
            if share > 0.0 {
                cla.endpoints[i].load_balancing_weight = Some(u32v(share.ceil() as u32));
            }
        }
    }
    for i in unmatched {
        cla.endpoints[i].lb_endpoints.clear();
    }
}

/// `failover`: priorities by how much of the locality the group shares with the proxy;
/// for other regions, the region a `failover` rule names for the proxy's region before
/// the rest. Existing priorities (from `failoverPriority`) stay the major order.
fn apply_failover(proxy: &str, cla: &mut ClusterLoadAssignment, failover: &[LocalityFailover]) {
    let proxy = split_locality(proxy);
    let mut assigned: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, group) in cla.endpoints.iter_mut().enumerate() {
        let ep = parts(group.locality.as_ref());
        let mut priority = lb_priority(proxy, ep);
        if priority == 3
            && let Some(rule) = failover
                .iter()
                .find(|f| f.from.as_deref().unwrap_or("") == proxy.0)
            && (group.locality.is_none() || Some(ep.0) != rule.to.as_deref())
        {
            priority = 4;
        }
        let p = group.priority * 5 + priority;
        group.priority = p;
        assigned.entry(p).or_default().push(i);
    }
    renumber(cla.endpoints.as_mut_slice(), &assigned);
}

/// Makes priorities run 0..N without gaps, keeping their order.
fn renumber(groups: &mut [LocalityLbEndpoints], assigned: &BTreeMap<u32, Vec<usize>>) {
    for (n, indexes) in assigned.values().enumerate() {
        for i in indexes {
            groups[*i].priority = n as u32;
        }
    }
}

/// An endpoint's label, with Istio's topology labels derived from its locality.
fn endpoint_label<'a>(ep: &'a Endpoint, key: &str) -> &'a str {
    if let Some(v) = ep.labels.get(key) {
        return v;
    }
    let (region, zone, subzone) = split_locality(ep.locality.as_deref().unwrap_or(""));
    match key {
        topology::REGION => region,
        topology::ZONE => zone,
        topology::SUBZONE => subzone,
        // Every endpoint of this registry is in the one cluster.
        topology::CLUSTER => "Kubernetes",
        _ => "",
    }
}

/// `failoverPriority`: each group is split by how many of the listed labels (in order)
/// the endpoint shares with the proxy; a `label=value` entry compares with that value
/// instead of the proxy's.
fn apply_failover_priorities(
    cla: &mut ClusterLoadAssignment,
    groups: &[Vec<&Endpoint>],
    proxy_labels: &BTreeMap<String, String>,
    priorities: &[String],
) {
    if proxy_labels.is_empty() || groups.is_empty() || groups.len() != cla.endpoints.len() {
        return;
    }
    let rules: Vec<(&str, Option<&str>)> = priorities
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p.as_str(), None),
        })
        .collect();
    let lowest = rules.len() as u32;
    let mut out: Vec<LocalityLbEndpoints> = Vec::new();
    for (group, eps) in cla.endpoints.iter().zip(groups) {
        let mut by_priority: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, ep) in eps.iter().enumerate() {
            let mut priority = 0;
            for (j, (key, value)) in rules.iter().enumerate() {
                let want = value
                    .unwrap_or_else(|| proxy_labels.get(*key).map(String::as_str).unwrap_or(""));
                if want != endpoint_label(ep, key) {
                    priority = lowest - j as u32;
                    break;
                }
            }
            by_priority.entry(priority).or_default().push(i);
        }
        for (priority, indexes) in by_priority {
            let lb_endpoints: Vec<_> = indexes
                .iter()
                .filter_map(|i| group.lb_endpoints.get(*i).cloned())
                .collect();
            let weight = lb_endpoints
                .iter()
                .map(|e| e.load_balancing_weight.as_ref().map_or(0, |w| w.value))
                .fold(0u32, u32::saturating_add);
            out.push(LocalityLbEndpoints {
                locality: group.locality.clone(),
                lb_endpoints,
                load_balancing_weight: Some(u32v(weight)),
                priority,
                ..Default::default()
            });
        }
    }
    let mut assigned: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, g) in out.iter().enumerate() {
        assigned.entry(g.priority).or_default().push(i);
    }
    renumber(&mut out, &assigned);
    cla.endpoints = out;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint;

    use super::*;

    fn ep(addr: &str, locality: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            address: addr.to_string(),
            port: 80,
            labels: Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            service_account: None,
            locality: Some(locality.to_string()),
            weight: 1,
            workload: None,
        }
    }

    fn cla(groups: &[Vec<&Endpoint>]) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: "c".into(),
            endpoints: groups
                .iter()
                .map(|eps| {
                    let (r, z, s) = split_locality(eps[0].locality.as_deref().unwrap_or(""));
                    LocalityLbEndpoints {
                        locality: Some(Locality {
                            region: r.into(),
                            zone: z.into(),
                            sub_zone: s.into(),
                        }),
                        lb_endpoints: eps
                            .iter()
                            .map(|_| LbEndpoint {
                                load_balancing_weight: Some(u32v(1)),
                                ..Default::default()
                            })
                            .collect(),
                        load_balancing_weight: Some(u32v(eps.len() as u32)),
                        ..Default::default()
                    }
                })
                .collect(),
            ..Default::default()
        }
    }

    fn priorities(c: &ClusterLoadAssignment) -> Vec<(String, u32, usize)> {
        c.endpoints
            .iter()
            .map(|g| {
                let l = g.locality.clone().unwrap_or_default();
                (
                    format!("{}/{}/{}", l.region, l.zone, l.sub_zone),
                    g.priority,
                    g.lb_endpoints.len(),
                )
            })
            .collect()
    }

    #[test]
    fn default_failover_orders_by_shared_locality_without_gaps() {
        let a = ep("1", "r1/z1/s1", &[]);
        let b = ep("2", "r1/z1/s2", &[]);
        let c = ep("3", "r1/z2/s1", &[]);
        let d = ep("4", "r2/z1/s1", &[]);
        let groups = vec![vec![&a], vec![&b], vec![&c], vec![&d]];
        let mut out = cla(&groups);
        let setting = LocalityLbSetting::default();
        let labels = BTreeMap::new();
        let ctx = LocalityCtx {
            proxy_locality: "r1/z1/s1",
            proxy_labels: &labels,
            setting: &setting,
            enable_failover: true,
        };
        ctx.apply(&mut out, Some(&groups));
        let p: Vec<u32> = priorities(&out).iter().map(|x| x.1).collect();
        assert_eq!(p, vec![0, 1, 2, 3]);

        // Same region for the proxy elsewhere: r1 groups tie at "region only".
        let mut out = cla(&groups);
        LocalityCtx {
            proxy_locality: "r1/z9/s9",
            ..ctx
        }
        .apply(&mut out, Some(&groups));
        let p: Vec<u32> = priorities(&out).iter().map(|x| x.1).collect();
        assert_eq!(p, vec![0, 0, 0, 1]);

        // No outlier detection: untouched.
        let mut out = cla(&groups);
        LocalityCtx {
            enable_failover: false,
            ..ctx
        }
        .apply(&mut out, Some(&groups));
        assert!(out.endpoints.iter().all(|g| g.priority == 0));
    }

    #[test]
    fn failover_rule_prefers_the_named_region() {
        let a = ep("1", "us-east/z/s", &[]);
        let b = ep("2", "eu-west/z/s", &[]);
        let c = ep("3", "us-west/z/s", &[]);
        let groups = vec![vec![&a], vec![&b], vec![&c]];
        let mut out = cla(&groups);
        let setting = LocalityLbSetting {
            failover: vec![LocalityFailover {
                from: Some("us-east".into()),
                to: Some("us-west".into()),
            }],
            ..Default::default()
        };
        let labels = BTreeMap::new();
        LocalityCtx {
            proxy_locality: "us-east/z/s",
            proxy_labels: &labels,
            setting: &setting,
            enable_failover: true,
        }
        .apply(&mut out, Some(&groups));
        let p: Vec<u32> = priorities(&out).iter().map(|x| x.1).collect();
        // us-east local, us-west the failover target, eu-west last.
        assert_eq!(p, vec![0, 2, 1]);
    }

    #[test]
    fn distribute_weights_matched_groups_and_empties_the_rest() {
        let a = ep("1", "r1/z1/s1", &[]);
        let b = ep("2", "r1/z2/s1", &[]);
        let b2 = ep("3", "r1/z2/s1", &[]);
        let c = ep("4", "r2/z1/s1", &[]);
        let groups = vec![vec![&a], vec![&b, &b2], vec![&c]];
        let mut out = cla(&groups);
        let setting = LocalityLbSetting {
            distribute: vec![LocalityDistribute {
                from: Some("r1/z1/*".into()),
                to: [("r1/z1/*".to_string(), 80), ("r1/z2/*".to_string(), 20)].into(),
            }],
            ..Default::default()
        };
        let labels = BTreeMap::new();
        let ctx = LocalityCtx {
            proxy_locality: "r1/z1/s1",
            proxy_labels: &labels,
            setting: &setting,
            enable_failover: false,
        };
        assert!(ctx.weighted_cluster());
        ctx.apply(&mut out, Some(&groups));
        let weights: Vec<u32> = out
            .endpoints
            .iter()
            .map(|g| g.load_balancing_weight.as_ref().map_or(0, |w| w.value))
            .collect();
        assert_eq!(weights, vec![80, 20, 1]);
        assert_eq!(out.endpoints[2].lb_endpoints.len(), 0);
        // A proxy no rule is for keeps the plain assignment.
        let mut other = cla(&groups);
        LocalityCtx {
            proxy_locality: "r2/z1/s1",
            ..ctx
        }
        .apply(&mut other, Some(&groups));
        assert_eq!(other, cla(&groups));
    }

    #[test]
    fn failover_priority_splits_groups_by_matching_labels() {
        let a = ep("1", "r1/z1/s1", &[("tier", "gold")]);
        let b = ep("2", "r1/z1/s1", &[("tier", "silver")]);
        let c = ep("3", "r1/z2/s1", &[("tier", "gold")]);
        let groups = vec![vec![&a, &b], vec![&c]];
        let mut out = cla(&groups);
        let setting = LocalityLbSetting {
            failover_priority: vec![topology::ZONE.to_string(), "tier=gold".to_string()],
            ..Default::default()
        };
        let labels: BTreeMap<String, String> =
            [(topology::ZONE.to_string(), "z1".to_string())].into();
        let ctx = LocalityCtx {
            proxy_locality: "r1/z1/s1",
            proxy_labels: &labels,
            setting: &setting,
            enable_failover: true,
        };
        assert!(ctx.weighted_cluster());
        ctx.apply(&mut out, Some(&groups));
        // z1+gold first, z1+silver next, z2 last.
        assert_eq!(
            priorities(&out),
            vec![
                ("r1/z1/s1".to_string(), 0, 1),
                ("r1/z1/s1".to_string(), 1, 1),
                ("r1/z2/s1".to_string(), 2, 1),
            ]
        );
    }

    #[test]
    fn settings_precedence_and_disabling() {
        let mesh = MeshConfig::default();
        assert!(
            setting(&mesh, None).is_some(),
            "Istio enables locality LB by default"
        );
        let off = LocalityLbSetting {
            enabled: Some(false),
            ..Default::default()
        };
        assert!(setting(&mesh, Some(&off)).is_none());
        let mesh_off = MeshConfig {
            locality_lb_setting: Some(off.clone()),
            ..Default::default()
        };
        assert!(setting(&mesh_off, None).is_none());
        let rule = LocalityLbSetting::default();
        assert!(std::ptr::eq(
            setting(&mesh_off, Some(&rule)).expect("rule"),
            &rule
        ));
    }
}
