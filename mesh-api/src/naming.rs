//! Names the proxy and the control plane must agree on, as Istio spells them: node ids
//! (`sidecar~10.250.0.5~reviews-v1-abc.default~default.svc.cluster.local`), Envoy cluster
//! names (`outbound|9080|v1|reviews.default.svc.cluster.local`, `inbound|9080||`), SPIFFE
//! ids (`spiffe://cluster.local/ns/default/sa/bookinfo-reviews`), service FQDNs, and the
//! protocol a service port speaks (from its name prefix or `appProtocol`, like Istio's
//! `protocol.Parse` and `kube.ConvertProtocol`).

use std::fmt;
use std::str::FromStr;

/// The Kubernetes DNS domain suffix Istio assumes unless told otherwise.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";
/// The default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Envoy cluster that drops traffic (REGISTRY_ONLY outbound policy).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Envoy cluster that forwards to the original destination (ALLOW_ANY).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Inbound passthrough cluster for IPv4.
pub const INBOUND_PASSTHROUGH_CLUSTER_IPV4: &str = "InboundPassthroughClusterIpv4";

/// A malformed name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamingError {
    #[error(
        "invalid node id {0:?}: expected TYPE~IP~POD.NAMESPACE~DOMAIN, like sidecar~10.250.0.5~reviews-1.default~default.svc.cluster.local"
    )]
    NodeIdShape(String),
    #[error("invalid node id {id:?}: unknown node type {node_type:?} (expected sidecar or router)")]
    NodeType { id: String, node_type: String },
    #[error(
        "invalid cluster name {0:?}: expected DIRECTION|PORT|SUBSET|HOST, like outbound|9080|v1|reviews.default.svc.cluster.local"
    )]
    ClusterShape(String),
    #[error("invalid cluster name {name:?}: direction {direction:?} is not inbound or outbound")]
    ClusterDirection { name: String, direction: String },
    #[error("invalid cluster name {name:?}: port {port:?} is not a number in 0..=65535")]
    ClusterPort { name: String, port: String },
    #[error(
        "invalid SPIFFE id {0:?}: expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"
    )]
    Spiffe(String),
}

// === node id ===

/// The role of a proxy, the first field of its node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeType {
    /// A sidecar next to a workload.
    Sidecar,
    /// A gateway (Istio's `router`).
    Router,
}

impl NodeType {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Sidecar => "sidecar",
            NodeType::Router => "router",
        }
    }
}

/// An Istio node id: `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId {
    pub node_type: NodeType,
    /// The first instance IP (pod IP), as written.
    pub ip: String,
    pub pod_name: String,
    pub namespace: String,
    /// The DNS domain: `NAMESPACE.svc.cluster.local`.
    pub dns_domain: String,
}

// === impl NodeId ===

impl NodeId {
    /// A sidecar node id with the default domain suffix.
    pub fn sidecar(
        ip: impl Into<String>,
        pod_name: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Self {
        let namespace = namespace.into();
        Self {
            node_type: NodeType::Sidecar,
            ip: ip.into(),
            pod_name: pod_name.into(),
            dns_domain: format!("{namespace}.svc.{DEFAULT_DOMAIN_SUFFIX}"),
            namespace,
        }
    }

    /// A gateway (router) node id with the default domain suffix.
    pub fn router(
        ip: impl Into<String>,
        pod_name: impl Into<String>,
        namespace: impl Into<String>,
    ) -> Self {
        Self {
            node_type: NodeType::Router,
            ..Self::sidecar(ip, pod_name, namespace)
        }
    }
}

impl FromStr for NodeId {
    type Err = NamingError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let shape = || NamingError::NodeIdShape(id.to_string());
        let parts: Vec<&str> = id.split('~').collect();
        let [node_type, ip, pod_ns, dns_domain] = parts.as_slice() else {
            return Err(shape());
        };
        let node_type = match *node_type {
            "sidecar" => NodeType::Sidecar,
            "router" => NodeType::Router,
            other => {
                return Err(NamingError::NodeType {
                    id: id.to_string(),
                    node_type: other.to_string(),
                });
            }
        };
        // Pod names contain no dots (they are DNS labels), so the first dot splits.
        let (pod_name, namespace) = pod_ns.split_once('.').ok_or_else(shape)?;
        if ip.is_empty() || pod_name.is_empty() || namespace.is_empty() {
            return Err(shape());
        }
        Ok(NodeId {
            node_type,
            ip: ip.to_string(),
            pod_name: pod_name.to_string(),
            namespace: namespace.to_string(),
            dns_domain: dns_domain.to_string(),
        })
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}~{}~{}.{}~{}",
            self.node_type.as_str(),
            self.ip,
            self.pod_name,
            self.namespace,
            self.dns_domain
        )
    }
}

// === cluster names ===

/// Traffic direction of an Envoy cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// An Istio cluster name: `outbound|9080|v1|reviews.default.svc.cluster.local`, or
/// `inbound|9080||` for a sidecar's inbound port (empty subset and host).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterName {
    pub direction: Direction,
    pub port: u16,
    /// Empty when the cluster is not for a DestinationRule subset.
    pub subset: String,
    /// Empty for inbound clusters.
    pub host: String,
}

// === impl ClusterName ===

impl ClusterName {
    /// `outbound|PORT|SUBSET|HOST`.
    pub fn outbound(port: u16, subset: impl Into<String>, host: impl Into<String>) -> Self {
        Self {
            direction: Direction::Outbound,
            port,
            subset: subset.into(),
            host: host.into(),
        }
    }

    /// `inbound|PORT||`.
    pub fn inbound(port: u16) -> Self {
        Self {
            direction: Direction::Inbound,
            port,
            subset: String::new(),
            host: String::new(),
        }
    }
}

impl FromStr for ClusterName {
    type Err = NamingError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = name.split('|').collect();
        let [direction, port, subset, host] = parts.as_slice() else {
            return Err(NamingError::ClusterShape(name.to_string()));
        };
        let direction = match *direction {
            "inbound" => Direction::Inbound,
            "outbound" => Direction::Outbound,
            other => {
                return Err(NamingError::ClusterDirection {
                    name: name.to_string(),
                    direction: other.to_string(),
                });
            }
        };
        let port = port.parse().map_err(|_| NamingError::ClusterPort {
            name: name.to_string(),
            port: port.to_string(),
        })?;
        Ok(ClusterName {
            direction,
            port,
            subset: subset.to_string(),
            host: host.to_string(),
        })
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}|{}|{}|{}",
            self.direction.as_str(),
            self.port,
            self.subset,
            self.host
        )
    }
}

// === SPIFFE ===

/// A workload identity: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The principal as AuthorizationPolicy writes it: the id without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = NamingError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let err = || NamingError::Spiffe(id.to_string());
        let rest = id.strip_prefix("spiffe://").ok_or_else(err)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(SpiffeId::new(*td, *ns, *sa))
            }
            _ => Err(err()),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

// === service host names ===

/// `NAME.NAMESPACE.svc.DOMAIN_SUFFIX`.
pub fn service_fqdn(name: &str, namespace: &str, domain_suffix: &str) -> String {
    format!("{name}.{namespace}.svc.{domain_suffix}")
}

/// Expands a host as written in a resource in `namespace`, like Istio's
/// `ResolveShortnameToFQDN`: a name without dots (`reviews`) means the service in the
/// resource's namespace; names with dots and wildcards (`*`, `*.example.com`) stay as
/// they are.
pub fn resolve_short_name(host: &str, namespace: &str, domain_suffix: &str) -> String {
    if host.contains('.') || host.contains('*') || host.is_empty() {
        host.to_string()
    } else {
        service_fqdn(host, namespace, domain_suffix)
    }
}

/// Splits `NAME.NAMESPACE.svc.DOMAIN_SUFFIX` into name and namespace.
pub fn parse_service_fqdn<'a>(host: &'a str, domain_suffix: &str) -> Option<(&'a str, &'a str)> {
    let rest = host.strip_suffix(domain_suffix)?.strip_suffix(".svc.")?;
    let (name, namespace) = rest.split_once('.')?;
    (!name.is_empty() && !namespace.is_empty() && !namespace.contains('.'))
        .then_some((name, namespace))
}

// === protocols ===

/// The protocol of a service port, Istio's `protocol.Instance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Grpc,
    GrpcWeb,
    Http,
    HttpProxy,
    Http2,
    Https,
    Tls,
    Mongo,
    Redis,
    Mysql,
    /// Not declared: the proxy detects HTTP or falls back to TCP.
    Unsupported,
}

// === impl Protocol ===

impl Protocol {
    /// Parses a protocol name case-insensitively (Istio's `protocol.Parse`); unknown names
    /// are [`Protocol::Unsupported`].
    pub fn parse(s: &str) -> Protocol {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "grpc" => Protocol::Grpc,
            "grpc-web" => Protocol::GrpcWeb,
            "http" => Protocol::Http,
            "http_proxy" => Protocol::HttpProxy,
            "http2" => Protocol::Http2,
            "https" => Protocol::Https,
            "tls" => Protocol::Tls,
            "mongo" => Protocol::Mongo,
            "redis" => Protocol::Redis,
            "mysql" => Protocol::Mysql,
            _ => Protocol::Unsupported,
        }
    }

    /// The protocol of a Kubernetes service port (Istio's `kube.ConvertProtocol`): UDP
    /// from the port's protocol, then `appProtocol`, then the name prefix before the
    /// first `-` (`http-web`, `grpc-web-x`, `tcp`, `mongo-db`).
    pub fn from_service_port(
        name: &str,
        port_protocol: Option<&str>,
        app_protocol: Option<&str>,
    ) -> Protocol {
        if port_protocol.is_some_and(|p| p.eq_ignore_ascii_case("UDP")) {
            return Protocol::Udp;
        }
        if let Some(app) = app_protocol {
            let from_app = match app {
                "kubernetes.io/h2c" => Protocol::Http2,
                "kubernetes.io/ws" | "kubernetes.io/wss" => Protocol::Http,
                other => Protocol::parse(other),
            };
            if from_app != Protocol::Unsupported {
                return from_app;
            }
        }
        Protocol::from_port_name(name)
    }

    /// The protocol named by a port name's prefix (`http2-foo` is HTTP2, `grpc-web` and
    /// `grpc-web-foo` are gRPC-Web, `foo` is Unsupported).
    pub fn from_port_name(name: &str) -> Protocol {
        const GRPC_WEB: &str = "grpc-web";
        // Checked first: the general rule would cut it at its own hyphen.
        if name.len() >= GRPC_WEB.len() && name[..GRPC_WEB.len()].eq_ignore_ascii_case(GRPC_WEB) {
            return Protocol::GrpcWeb;
        }
        let prefix = name.split_once('-').map_or(name, |(p, _)| p);
        Protocol::parse(prefix)
    }

    /// Istio's spelling (`HTTP`, `GRPC-Web`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Grpc => "GRPC",
            Protocol::GrpcWeb => "GRPC-Web",
            Protocol::Http => "HTTP",
            Protocol::HttpProxy => "HTTP_PROXY",
            Protocol::Http2 => "HTTP2",
            Protocol::Https => "HTTPS",
            Protocol::Tls => "TLS",
            Protocol::Mongo => "Mongo",
            Protocol::Redis => "Redis",
            Protocol::Mysql => "MySQL",
            Protocol::Unsupported => "UnsupportedProtocol",
        }
    }

    /// Terminated as HTTP by the proxy (routes, retries, L7 metrics).
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http
                | Protocol::Http2
                | Protocol::Grpc
                | Protocol::GrpcWeb
                | Protocol::HttpProxy
        )
    }

    /// Needs HTTP/2 upstream.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    pub fn is_grpc(self) -> bool {
        matches!(self, Protocol::Grpc | Protocol::GrpcWeb)
    }

    /// TLS the proxy does not terminate (SNI routing).
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Tls)
    }

    /// Proxied as opaque TCP.
    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Protocol::Tcp
                | Protocol::Https
                | Protocol::Tls
                | Protocol::Mongo
                | Protocol::Redis
                | Protocol::Mysql
        )
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_round_trip() {
        let s = "sidecar~10.250.0.5~reviews-v1-abc.default~default.svc.cluster.local";
        let id: NodeId = s.parse().expect("valid");
        assert_eq!(
            id,
            NodeId::sidecar("10.250.0.5", "reviews-v1-abc", "default")
        );
        assert_eq!(id.to_string(), s);
        let gw: NodeId = "router~10.250.0.9~ingress-1.istio-system~istio-system.svc.cluster.local"
            .parse()
            .expect("valid");
        assert_eq!(gw.node_type, NodeType::Router);
        assert_eq!(gw.namespace, "istio-system");
    }

    #[test]
    fn node_id_errors() {
        assert!(matches!(
            "sidecar~1.2.3.4~pod".parse::<NodeId>(),
            Err(NamingError::NodeIdShape(_))
        ));
        assert!(matches!(
            "waypoint~1.2.3.4~p.ns~ns.svc.cluster.local".parse::<NodeId>(),
            Err(NamingError::NodeType { .. })
        ));
        assert!(matches!(
            "sidecar~1.2.3.4~podnons~d".parse::<NodeId>(),
            Err(NamingError::NodeIdShape(_))
        ));
    }

    #[test]
    fn cluster_names() {
        let c: ClusterName = "outbound|9080|v1|reviews.default.svc.cluster.local"
            .parse()
            .expect("valid");
        assert_eq!(
            c,
            ClusterName::outbound(9080, "v1", "reviews.default.svc.cluster.local")
        );
        assert_eq!(
            c.to_string(),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(ClusterName::inbound(9080).to_string(), "inbound|9080||");
        assert_eq!(
            "inbound|9080||".parse::<ClusterName>(),
            Ok(ClusterName::inbound(9080))
        );
        assert!(matches!(
            "outbound|x||h".parse::<ClusterName>(),
            Err(NamingError::ClusterPort { .. })
        ));
        assert!(matches!(
            "sideways|1||h".parse::<ClusterName>(),
            Err(NamingError::ClusterDirection { .. })
        ));
        assert!(matches!(
            "outbound|1|h".parse::<ClusterName>(),
            Err(NamingError::ClusterShape(_))
        ));
    }

    #[test]
    fn spiffe_ids() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo"
            .parse()
            .expect("valid");
        assert_eq!(id, SpiffeId::new("cluster.local", "default", "bookinfo"));
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/bookinfo");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo"
        );
        assert!("spiffe://td/ns/x".parse::<SpiffeId>().is_err());
        assert!("http://td/ns/a/sa/b".parse::<SpiffeId>().is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(
            resolve_short_name("reviews", "default", "cluster.local"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            resolve_short_name("reviews.prod", "default", "cluster.local"),
            "reviews.prod"
        );
        assert_eq!(resolve_short_name("*", "default", "cluster.local"), "*");
        assert_eq!(
            parse_service_fqdn("reviews.default.svc.cluster.local", "cluster.local"),
            Some(("reviews", "default"))
        );
        assert_eq!(parse_service_fqdn("example.com", "cluster.local"), None);
    }

    #[test]
    fn protocols_like_istio() {
        assert_eq!(Protocol::from_port_name("http"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("http-web"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("HTTP2-x"), Protocol::Http2);
        assert_eq!(Protocol::from_port_name("grpc-api"), Protocol::Grpc);
        assert_eq!(Protocol::from_port_name("grpc-web"), Protocol::GrpcWeb);
        assert_eq!(Protocol::from_port_name("grpc-web-x"), Protocol::GrpcWeb);
        assert_eq!(Protocol::from_port_name("tcp-db"), Protocol::Tcp);
        assert_eq!(Protocol::from_port_name("tls-x"), Protocol::Tls);
        assert_eq!(Protocol::from_port_name("https"), Protocol::Https);
        assert_eq!(Protocol::from_port_name("mongo-1"), Protocol::Mongo);
        assert_eq!(Protocol::from_port_name("redis"), Protocol::Redis);
        assert_eq!(Protocol::from_port_name("mysql-main"), Protocol::Mysql);
        assert_eq!(Protocol::from_port_name("web"), Protocol::Unsupported);
        assert_eq!(Protocol::from_port_name("httpx"), Protocol::Unsupported);
        assert_eq!(
            Protocol::from_service_port("web", Some("TCP"), Some("http")),
            Protocol::Http
        );
        assert_eq!(
            Protocol::from_service_port("web", None, Some("kubernetes.io/h2c")),
            Protocol::Http2
        );
        assert_eq!(
            Protocol::from_service_port("http", Some("UDP"), None),
            Protocol::Udp
        );
        assert_eq!(
            Protocol::from_service_port("grpc", None, Some("weird")),
            Protocol::Grpc
        );
        assert!(Protocol::Grpc.is_http() && Protocol::Grpc.is_http2());
        assert!(Protocol::Mongo.is_tcp() && !Protocol::Mongo.is_http());
    }
}
