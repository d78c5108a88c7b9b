//! Launches the upstream Envoy binary for differential tests: writes a bootstrap that
//! points ADS at a given address, starts Envoy, waits for its admin endpoint, and stops
//! it by PID when dropped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;

/// Where the Envoy binary is: `$MESH_ENVOY`, else `tools/envoy.sh` (which installs it).
pub fn find_envoy() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MESH_ENVOY") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/envoy.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

/// A running Envoy. Killed (by its PID) on drop.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    /// Starts Envoy with ADS at `xds` (`127.0.0.1:port`), delta or SotW.
    pub fn start(
        binary: &Path,
        xds: SocketAddr,
        node_id: &str,
        delta: bool,
    ) -> std::io::Result<Envoy> {
        let dir = tempfile::tempdir()?;
        let bootstrap = json!({
            "node": {"id": node_id, "cluster": "mesh-test"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": if delta { "DELTA_GRPC" } else { "GRPC" },
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": true,
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]
                },
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"}
            },
            "static_resources": {"clusters": [{
                "name": "xds",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}
                }},
                "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                    "socket_address": {"address": xds.ip().to_string(), "port_value": xds.port()}}}}]}]}
            }]}
        });
        let config = dir.path().join("bootstrap.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&bootstrap)?)?;
        let admin_path = dir.path().join("admin.txt");
        let log = std::fs::File::create(dir.path().join("envoy.log"))?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--base-id")
            .arg(
                (std::process::id() as u64 * 1000 + rand::random::<u16>() as u64 % 1000)
                    .to_string(),
            )
            .arg("--concurrency")
            .arg("2")
            .arg("-l")
            .arg("warning")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse().expect("valid"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = std::fs::read_to_string(&admin_path)
                && let Ok(a) = s.trim().parse()
            {
                envoy.admin = a;
                return Ok(envoy);
            }
            if let Ok(Some(status)) = envoy.child.try_wait() {
                let log = std::fs::read_to_string(envoy._dir.path().join("envoy.log"))
                    .unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "envoy exited with {status}: {log}"
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(
                    "envoy did not start its admin endpoint in 20s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GETs an admin path (blocking std socket; tests call it from `spawn_blocking` or
    /// plain threads).
    pub fn admin_get(&self, path: &str) -> std::io::Result<String> {
        http_get(self.admin, path)
    }

    /// The bound address of a listener, from `/listeners?format=json`.
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        let body = self.admin_get("/listeners?format=json").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let l = v["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?;
        let sa = &l["local_address"]["socket_address"];
        format!("{}:{}", sa["address"].as_str()?, sa["port_value"].as_u64()?)
            .parse()
            .ok()
    }

    /// The Envoy process id (RSS measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The recent Envoy log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default()
    }
}

/// A minimal HTTP/1.1 GET over a std socket (admin endpoints of either proxy).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
