//! The proxies compared, each started as a pod's sidecar: as the proxy UID (so the pod's
//! capture rules exclude its own traffic), pinned to the proxy CPUs, with one worker.
//!
//! - mesh-proxy: the harness's command line plus `--concurrency`.
//! - Envoy: the upstream binary with a bootstrap like Istio's (the same node id and
//!   metadata mesh-proxy sends, ADS to our control plane), so both get the same config.
//! - nginx and HAProxy: no xDS; configured as a sidecar pair would be. The client side
//!   listens on the captured outbound port 15001 and forwards to the server pod; the server
//!   side listens on the captured inbound port 15006 and forwards to the app on loopback;
//!   keep-alive (connection reuse) towards the upstream on both. They cannot tell ports
//!   apart behind capture, so each workload gets its own pod pair.

use std::path::Path;

use anyhow::{Context, Result};
use e2e::local::LocalCluster;
use e2e::local::commands::{PodCommand, Readiness};
use e2e::local::manifest::PodSpec;
use serde_json::json;

use crate::topology::Workload;

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;

/// Which proxies carry the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// No proxies and no capture.
    Direct,
    MeshProxy,
    Envoy,
    Nginx,
    Haproxy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Direct,
        Kind::MeshProxy,
        Kind::Envoy,
        Kind::Nginx,
        Kind::Haproxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::MeshProxy => "mesh-proxy",
            Kind::Envoy => "envoy",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    /// One pod pair carries every workload (the xDS proxies tell ports apart).
    pub fn one_pair(self) -> bool {
        matches!(self, Kind::Direct | Kind::MeshProxy | Kind::Envoy)
    }
}

/// Which side of the pair a sidecar is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// What every sidecar command shares.
pub struct Common<'a> {
    pub cluster: &'a LocalCluster,
    /// `taskset -c <cpus>` or nothing.
    pub pin: Vec<String>,
    pub concurrency: usize,
    pub envoy: Option<&'a Path>,
    /// A directory the proxy UID can write (configs, pid files, temp dirs).
    pub work_dir: &'a Path,
}

/// The sidecar command of `kind` for a pod; `upstream` is where nginx/HAProxy forward
/// (`ip:port`), `workload` what they carry.
pub fn sidecar(
    c: &Common<'_>,
    kind: Kind,
    side: Side,
    spec: &PodSpec,
    workload: Option<Workload>,
    upstream: &str,
) -> Result<Option<PodCommand>> {
    let mut argv = c.pin.clone();
    Ok(Some(match kind {
        Kind::Direct => return Ok(None),
        Kind::MeshProxy => {
            argv.extend(c.cluster.mesh_proxy_argv(spec));
            argv.extend(["--concurrency".into(), c.concurrency.to_string()]);
            argv.extend(["--log-level".into(), "warn".into()]);
            PodCommand::new(
                "mesh-proxy",
                argv,
                Readiness::Http {
                    addr: "127.0.0.1:15021".into(),
                    path: "/healthz/ready".into(),
                },
            )
        }
        Kind::Envoy => {
            let bin = c
                .envoy
                .context("no Envoy binary (set MESH_ENVOY or run tools/envoy.sh)")?;
            argv.extend([
                bin.display().to_string(),
                "--config-yaml".into(),
                envoy_bootstrap(spec, &c.cluster.xds_address())?,
                "--concurrency".into(),
                c.concurrency.to_string(),
                "--disable-hot-restart".into(),
                "--log-level".into(),
                "warn".into(),
            ]);
            PodCommand::new(
                "envoy",
                argv,
                Readiness::Http {
                    addr: "127.0.0.1:15000".into(),
                    path: "/ready".into(),
                },
            )
        }
        Kind::Nginx | Kind::Haproxy => {
            let workload = workload.context("nginx/HAProxy pairs carry one workload")?;
            let port = match side {
                Side::Client => OUTBOUND_PORT,
                Side::Server => INBOUND_PORT,
            };
            let dir = c.work_dir.join(&spec.name);
            make_proxy_dir(&dir)?;
            let conf = if kind == Kind::Nginx {
                let conf = dir.join("nginx.conf");
                std::fs::write(&conf, nginx_conf(&dir, workload, side, port, upstream))?;
                argv.extend([
                    "/usr/sbin/nginx".to_string(),
                    "-e".into(),
                    "stderr".into(),
                    "-p".into(),
                    format!("{}/", dir.display()),
                    "-c".into(),
                    conf.display().to_string(),
                ]);
                conf
            } else {
                let conf = dir.join("haproxy.cfg");
                std::fs::write(&conf, haproxy_conf(workload, port, upstream))?;
                argv.extend([
                    "/usr/sbin/haproxy".to_string(),
                    "-db".into(),
                    "-f".into(),
                    conf.display().to_string(),
                ]);
                conf
            };
            let _ = conf;
            PodCommand::new(
                kind.name(),
                argv,
                Readiness::Tcp(format!("127.0.0.1:{port}")),
            )
        }
    }))
}

/// A directory owned by the proxy UID.
fn make_proxy_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let uid = nix::unistd::Uid::from_raw(e2e::local::PROXY_UID);
    let gid = nix::unistd::Gid::from_raw(e2e::local::PROXY_UID);
    nix::unistd::chown(dir, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown {}", dir.display()))
}

/// Envoy's bootstrap as Istio's injector would give it (JSON is YAML): the node identity
/// and metadata mesh-proxy builds from the same pod (`{ip}` is filled in at start), ADS
/// to the control plane, admin on 127.0.0.1:15000.
pub fn envoy_bootstrap(spec: &PodSpec, xds: &str) -> Result<String> {
    let (host, port) = xds
        .rsplit_once(':')
        .with_context(|| format!("xDS address {xds:?} has no port"))?;
    let app = spec.app_label();
    let ns = &spec.namespace;
    let v = json!({
        "node": {
            "id": format!("sidecar~{{ip}}~{}.{ns}~{ns}.svc.cluster.local", spec.name),
            "cluster": format!("{app}.{ns}"),
            "metadata": {
                "NAME": spec.name,
                "NAMESPACE": ns,
                "INSTANCE_IPS": "{ip}",
                "LABELS": spec.labels,
                "SERVICE_ACCOUNT": spec.service_account,
                "WORKLOAD_NAME": app,
                "CLUSTER_ID": "Kubernetes",
                "MESH_ID": "cluster.local",
                "INTERCEPTION_MODE": "REDIRECT",
                "PROXY_TYPE": "sidecar",
            }
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                "set_node_on_first_message_only": true
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}
        },
        "static_resources": {
            "clusters": [{
                "name": "xds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {
                    "cluster_name": "xds-grpc",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                        "address": host, "port_value": port.parse::<u16>().context("xDS port")?
                    }}}}]}]
                }
            }]
        }
    });
    Ok(v.to_string())
}

const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx as one side of a sidecar pair. nginx proxies HTTP/2 only as gRPC: the h2c
/// workload arrives as HTTP/2 and leaves the client side as HTTP/1.1 (keep-alive).
pub fn nginx_conf(dir: &Path, w: Workload, side: Side, port: u16, upstream: &str) -> String {
    let d = dir.display();
    let head = format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr warn;\nevents {{ worker_connections 4096; }}\n"
    );
    if w == Workload::Tcp {
        // Debian builds the stream module as a dynamic module (libnginx-mod-stream).
        let load = if Path::new(STREAM_MODULE).is_file() {
            format!("load_module {STREAM_MODULE};\n")
        } else {
            String::new()
        };
        return format!(
            "{load}{head}stream {{\n  upstream up {{ server {upstream}; }}\n  server {{ listen {port}; proxy_pass up; }}\n}}\n"
        );
    }
    // The server side of the h2c pair receives HTTP/1.1 from the client side.
    let listen_h2 = w == Workload::Grpc || (w == Workload::H2c && side == Side::Client);
    let location = if w == Workload::Grpc {
        "grpc_pass grpc://up;".to_string()
    } else {
        "proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host;".to_string()
    };
    format!(
        "{head}http {{
  access_log off;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  upstream up {{
    server {upstream};
    keepalive 128;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen {port}{h2};
    location / {{ {location} }}
  }}
}}
",
        h2 = if listen_h2 { " http2" } else { "" },
    )
}

/// HAProxy as one side of a sidecar pair: HTTP mode (h2 end to end for h2c and gRPC, idle
/// upstream connections shared) or TCP mode.
pub fn haproxy_conf(w: Workload, port: u16, upstream: &str) -> String {
    let (mode, bind, server) = match w {
        Workload::Http1 => ("http", "", ""),
        Workload::H2c | Workload::Grpc => ("http", " proto h2", " proto h2"),
        Workload::Tcp => ("tcp", "", ""),
    };
    let reuse = if mode == "http" {
        "  http-reuse always\n"
    } else {
        ""
    };
    format!(
        "global
  nbthread 1
defaults
  mode {mode}
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
{reuse}frontend sidecar
  bind :{port}{bind}
  default_backend upstream
backend upstream
  server app {upstream}{server}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_bootstrap_carries_the_sidecar_identity() {
        let spec = PodSpec::app("envoy-server", "bench", "envoy-server", "v1", &[8080]);
        let b = envoy_bootstrap(&spec, "10.250.0.1:15010").unwrap();
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            v["node"]["id"],
            "sidecar~{ip}~envoy-server.bench~bench.svc.cluster.local"
        );
        assert_eq!(v["node"]["metadata"]["LABELS"]["app"], "envoy-server");
        assert_eq!(
            v["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"]
                [0]["endpoint"]["address"]["socket_address"]["port_value"],
            15010
        );
    }

    #[test]
    fn nginx_speaks_h2_where_it_can() {
        let d = Path::new("/tmp/x");
        let c = nginx_conf(d, Workload::H2c, Side::Client, 15001, "10.250.0.5:8081");
        assert!(c.contains("listen 15001 http2;") && c.contains("proxy_pass http://up;"));
        let s = nginx_conf(d, Workload::H2c, Side::Server, 15006, "127.0.0.1:8081");
        assert!(s.contains("listen 15006;"));
        let g = nginx_conf(d, Workload::Grpc, Side::Server, 15006, "127.0.0.1:8082");
        assert!(g.contains("listen 15006 http2;") && g.contains("grpc_pass grpc://up;"));
        let t = nginx_conf(d, Workload::Tcp, Side::Client, 15001, "10.250.0.5:9000");
        assert!(t.contains("stream {") && !t.contains("http {"));
    }

    #[test]
    fn haproxy_modes() {
        assert!(haproxy_conf(Workload::Grpc, 15001, "a:1").contains("server app a:1 proto h2"));
        assert!(haproxy_conf(Workload::Tcp, 15006, "a:1").contains("mode tcp"));
        assert!(!haproxy_conf(Workload::Tcp, 15006, "a:1").contains("http-reuse"));
    }
}
