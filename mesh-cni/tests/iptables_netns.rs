//! The capture rules applied by `mesh-cni iptables` in real network namespaces, checked
//! with real connections: what is redirected where, what the proxy UID bypasses, and that
//! re-applying is idempotent and clean-up removes everything. Needs root.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Netns, pair, root_or_skip};
use mesh_cni::netns::run_in;
use nix::sys::socket::sockopt::OriginalDst;

fn listen(ns: &Netns, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    let l = run_in(&ns.path(), move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn connect(ns: &Netns, addr: &str) -> TcpStream {
    let addr: SocketAddr = addr.parse().unwrap();
    run_in(&ns.path(), move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("connect {addr} from {}: {e}", ns.name))
}

/// The connection `l` received, with its original destination when it was redirected.
fn accepted(l: &TcpListener) -> Option<(TcpStream, Option<SocketAddr>)> {
    accepted_within(l, Duration::from_secs(2))
}

/// For negative checks: the connection was already established somewhere else, so had it
/// been routed here it would be in this backlog by now.
fn nothing(l: &TcpListener) -> bool {
    accepted_within(l, Duration::from_millis(200)).is_none()
}

fn accepted_within(l: &TcpListener, wait: Duration) -> Option<(TcpStream, Option<SocketAddr>)> {
    let deadline = Instant::now() + wait;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                let orig = nix::sys::socket::getsockopt(&s, OriginalDst)
                    .ok()
                    .map(|sin| {
                        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                        SocketAddr::from((ip, u16::from_be(sin.sin_port)))
                    });
                return Some((s, orig));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn mesh_cni(ns: &Netns, backend: &str, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-cni"))
        .args(["iptables", "--iptables", backend, "--netns"])
        .arg(ns.path())
        .args(extra)
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "mesh-cni failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn save(ns: &Netns, backend: &str) -> String {
    ns.exec(&[&format!("iptables-{backend}-save"), "-t", "nat"])
        .lines()
        // Rules and our chain declarations only: packet counters differ between runs.
        .filter(|l| l.starts_with("-A") || l.starts_with(":ISTIO"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Connects as the proxy (UID/GID 1337) from inside `ns`.
fn connect_as_proxy(ns: &Netns, ip: &str, port: u16) {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    ns.exec(&[
        "setpriv",
        "--reuid",
        "1337",
        "--regid",
        "1337",
        "--clear-groups",
        "bash",
        "-c",
        &script,
    ]);
}

fn capture_redirects_real_connections(backend: &str) {
    let (peer, pod) = pair();
    let outbound = listen(&pod, "0.0.0.0:15001");
    let inbound = listen(&pod, "0.0.0.0:15006");
    let health = listen(&pod, "0.0.0.0:15021");
    let app = listen(&pod, "0.0.0.0:8080");
    let remote = listen(&peer, "0.0.0.0:9999");

    ok(mesh_cni(&pod, backend, &[]));
    ok(mesh_cni(&pod, backend, &["--check"]));

    // Outbound from the app is redirected to 15001 with the original destination kept.
    let _c = connect(&pod, "10.250.0.1:9999");
    let (_, orig) = accepted(&outbound).expect("outbound capture");
    assert_eq!(orig, Some("10.250.0.1:9999".parse().unwrap()));
    assert!(nothing(&remote), "app traffic leaked past the proxy");

    // The proxy itself is not captured.
    connect_as_proxy(&pod, "10.250.0.1", 9999);
    assert!(
        accepted(&remote).is_some(),
        "proxy traffic must go out directly"
    );
    assert!(nothing(&outbound));

    // The proxy calling its own pod IP (app -> VIP -> proxy -> self) goes to inbound.
    connect_as_proxy(&pod, "10.250.0.2", 8080);
    let (_, orig) = accepted(&inbound).expect("proxy to own pod IP goes to inbound");
    assert_eq!(orig, Some("10.250.0.2:8080".parse().unwrap()));

    // Inbound to an app port goes to 15006; to an excluded proxy port it does not.
    let _c = connect(&peer, "10.250.0.2:8080");
    let (_, orig) = accepted(&inbound).expect("inbound capture");
    assert_eq!(orig, Some("10.250.0.2:8080".parse().unwrap()));
    assert!(nothing(&app));
    let _c = connect(&peer, "10.250.0.2:15021");
    assert!(accepted(&health).is_some(), "15021 must not be captured");

    // localhost is never captured.
    let _c = connect(&pod, "127.0.0.1:8080");
    assert!(accepted(&app).is_some());

    // Re-applying changes nothing (no duplicated jumps).
    let before = save(&pod, backend);
    ok(mesh_cni(&pod, backend, &[]));
    assert_eq!(before, save(&pod, backend));
    assert_eq!(before.matches("-j ISTIO_OUTPUT").count(), 1);

    // Clean-up removes every rule and chain; traffic flows directly again.
    ok(mesh_cni(&pod, backend, &["--clean"]));
    let after = save(&pod, backend);
    assert!(!after.contains("ISTIO"), "left behind:\n{after}");
    let _c = connect(&pod, "10.250.0.1:9999");
    assert!(accepted(&remote).is_some());
    // Cleaning twice is fine.
    ok(mesh_cni(&pod, backend, &["--clean"]));
    // Check now fails: the rules are gone.
    assert!(!mesh_cni(&pod, backend, &["--check"]).status.success());
}

#[test]
fn capture_with_iptables_nft() {
    if root_or_skip("capture_with_iptables_nft") {
        capture_redirects_real_connections("nft");
    }
}

#[test]
fn capture_with_iptables_legacy() {
    if root_or_skip("capture_with_iptables_legacy") {
        capture_redirects_real_connections("legacy");
    }
}

#[test]
fn annotations_change_what_is_captured() {
    if !root_or_skip("annotations_change_what_is_captured") {
        return;
    }
    let (peer, pod) = pair();
    let outbound = listen(&pod, "0.0.0.0:15001");
    let inbound = listen(&pod, "0.0.0.0:15006");
    let app = listen(&pod, "0.0.0.0:8080");
    let app2 = listen(&pod, "0.0.0.0:8081");
    let remote = listen(&peer, "0.0.0.0:9999");
    let remote2 = listen(&peer, "0.0.0.0:9998");
    ok(mesh_cni(
        &pod,
        "auto",
        &[
            "--annotation",
            "traffic.sidecar.istio.io/excludeOutboundPorts=9999",
            "--annotation",
            "traffic.sidecar.istio.io/includeInboundPorts=8081",
        ],
    ));
    let _c = connect(&pod, "10.250.0.1:9999");
    assert!(
        accepted(&remote).is_some(),
        "excluded outbound port was captured"
    );
    let _c = connect(&pod, "10.250.0.1:9998");
    assert!(accepted(&outbound).is_some());
    assert!(nothing(&remote2));
    let _c = connect(&peer, "10.250.0.2:8080");
    assert!(
        accepted(&app).is_some(),
        "port not in includeInboundPorts was captured"
    );
    let _c = connect(&peer, "10.250.0.2:8081");
    assert!(accepted(&inbound).is_some());
    assert!(nothing(&app2));

    // Switching to "no outbound capture" in place: one atomic re-apply.
    ok(mesh_cni(
        &pod,
        "auto",
        &[
            "--annotation",
            "traffic.sidecar.istio.io/includeOutboundIPRanges=",
        ],
    ));
    let _c = connect(&pod, "10.250.0.1:9998");
    assert!(accepted(&remote2).is_some());
}

#[test]
fn dry_run_prints_without_root_and_rejects_bad_annotations() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-cni"))
        .args([
            "iptables",
            "--dry-run",
            "--annotation",
            "traffic.sidecar.istio.io/includeInboundPorts=80",
        ])
        .output()
        .unwrap();
    let text = ok(out);
    assert!(text.starts_with("*nat\n"));
    assert!(text.contains("-A ISTIO_INBOUND -p tcp -m tcp --dport 80 -j ISTIO_IN_REDIRECT"));
    assert!(text.ends_with("COMMIT\n"));

    let out = Command::new(env!("CARGO_BIN_EXE_mesh-cni"))
        .args([
            "iptables",
            "--dry-run",
            "--annotation",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges=10.0.0.0/40",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("traffic.sidecar.istio.io/excludeOutboundIPRanges"),
        "{err}"
    );
}
