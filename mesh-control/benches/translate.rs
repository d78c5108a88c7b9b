//! Translation cost per proxy for a generated mesh of 1,000 services x 3 subsets (10
//! namespaces, 3 pods per service, a DestinationRule with 3 subsets and a weighted
//! VirtualService per service), with and without a Sidecar resource limiting the proxy to
//! its own namespace. Also prints the resource bytes each proxy receives and the snapshot
//! (registry + routing index) build time.
//!
//! `cargo bench -p mesh-control --bench translate`

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_control::model::{Proxy, ProxyKind};
use mesh_control::store::Snapshot;
use mesh_control::translate::{Generated, generate};

const NAMESPACES: usize = 10;
const SERVICES: usize = 1_000;

fn mesh_yaml(with_sidecar: bool) -> String {
    let mut y = String::new();
    for i in 0..SERVICES {
        let ns = format!("ns-{}", i % NAMESPACES);
        let name = format!("svc-{i}");
        let vip = format!("10.251.{}.{}", i / 250, i % 250 + 1);
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 8080}}]\n"
        );
        for (v, version) in ["v1", "v2", "v3"].iter().enumerate() {
            let ip = format!("10.250.{}.{}", (i * 3 + v) / 250, (i * 3 + v) % 250 + 1);
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}-{version}, namespace: {ns}, labels: {{app: {name}, version: {version}}}}}\nspec: {{containers: [{{name: app, image: app, ports: [{{containerPort: 8080}}]}}]}}\nstatus: {{podIP: {ip}}}\n"
            );
        }
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {name}\n  trafficPolicy: {{connectionPool: {{http: {{http1MaxPendingRequests: 100}}}}, outlierDetection: {{consecutive5xxErrors: 5}}}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n  - {{name: v3, labels: {{version: v3}}}}\n"
        );
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}]\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: {name}, subset: v2}}}}]\n  - route:\n    - {{destination: {{host: {name}, subset: v1}}, weight: 80}}\n    - {{destination: {{host: {name}, subset: v2}}, weight: 10}}\n    - {{destination: {{host: {name}, subset: v3}}, weight: 10}}\n    timeout: 2s\n    retries: {{attempts: 2, perTryTimeout: 300ms, retryOn: 5xx}}\n"
        );
    }
    if with_sidecar {
        y.push_str("---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: ns-0}\nspec:\n  egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n");
    }
    y
}

fn proxy() -> Proxy {
    Proxy::for_test(
        ProxyKind::Sidecar,
        "10.250.0.1".parse().expect("ip"),
        "svc-0-v1",
        "ns-0",
    )
}

fn bytes(g: &Generated) -> (usize, [usize; 4]) {
    let size = |v: &[mesh_control::translate::Named]| {
        v.iter().map(|n| n.resource.value.len()).sum::<usize>()
    };
    let parts = [
        size(&g.listeners),
        size(&g.routes),
        size(&g.clusters),
        size(&g.endpoints),
    ];
    (parts.iter().sum(), parts)
}

fn bench(c: &mut Criterion) {
    for (label, with_sidecar) in [("whole mesh", false), ("sidecar scoped", true)] {
        let text = mesh_yaml(with_sidecar);
        let start = std::time::Instant::now();
        let snapshot = Snapshot::from_yaml("bench.yaml", &text);
        let build = start.elapsed();
        assert!(
            snapshot.issues().is_empty(),
            "{:?}",
            &snapshot.issues()[..1]
        );
        let g = generate(&snapshot, &proxy());
        let (total, [l, r, cl, e]) = bytes(&g);
        eprintln!(
            "{label}: snapshot build {build:?}; per proxy {} listeners, {} routes, {} clusters, {} endpoints; {total} bytes (listeners {l}, routes {r}, clusters {cl}, endpoints {e})",
            g.listeners.len(),
            g.routes.len(),
            g.clusters.len(),
            g.endpoints.len(),
        );
        c.bench_function(
            &format!("generate 1000 services x 3 subsets, {label}"),
            |b| b.iter(|| black_box(generate(black_box(&snapshot), black_box(&proxy())))),
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
