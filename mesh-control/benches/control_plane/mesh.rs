//! The simulated mesh, written as a `--config-dir` the real control plane watches: Services
//! with EndpointSlices, Pods (the proxies' identities), a DestinationRule with three subsets
//! and a weighted, header-matching VirtualService per service, and (scoped runs) a Sidecar
//! per namespace importing only that namespace. Files per namespace and concern, so that an
//! endpoint change touches only EndpointSlices (an EDS-only push) and a route change only
//! VirtualServices (a full push).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The shape of the generated mesh.
#[derive(Debug, Clone, Copy)]
pub struct MeshShape {
    pub services: usize,
    /// Pods per service (all are endpoints; the proxies take the identities of the first N).
    pub replicas: usize,
    pub namespaces: usize,
    /// A Sidecar per namespace limiting its proxies to their own namespace.
    pub scoped: bool,
}

/// The service port every generated service uses.
pub const PORT: u16 = 8080;

impl MeshShape {
    pub fn pods(&self) -> usize {
        self.services * self.replicas
    }

    pub fn namespace_of(&self, service: usize) -> String {
        format!("ns-{}", service % self.namespaces)
    }

    pub fn host_of(&self, service: usize) -> String {
        format!(
            "svc-{service}.{}.svc.cluster.local",
            self.namespace_of(service)
        )
    }

    /// Pod `p` belongs to service `p % services` (so the first N pods spread over services
    /// and namespaces), replica `p / services`.
    pub fn pod(&self, p: usize) -> PodId {
        let service = p % self.services;
        let replica = p / self.services;
        PodId {
            service,
            name: format!("svc-{service}-{replica}"),
            namespace: self.namespace_of(service),
            ip: pod_ip(p),
            version: replica % 3 + 1,
        }
    }

    /// The outbound EDS clusters of a service: the plain one and one per subset.
    pub fn clusters_of(&self, service: usize) -> Vec<String> {
        let host = self.host_of(service);
        ["", "v1", "v2", "v3"]
            .iter()
            .map(|subset| format!("outbound|{PORT}|{subset}|{host}"))
            .collect()
    }
}

/// A pod's identity, as a proxy presents it.
#[derive(Debug, Clone)]
pub struct PodId {
    pub service: usize,
    pub name: String,
    pub namespace: String,
    pub ip: String,
    pub version: usize,
}

fn pod_ip(p: usize) -> String {
    format!("10.250.{}.{}", p / 250, p % 250 + 1)
}

fn service_vip(i: usize) -> String {
    format!("10.251.{}.{}", i / 250, i % 250 + 1)
}

/// The generated config directory and the state the changes toggle.
#[derive(Debug)]
pub struct Mesh {
    pub shape: MeshShape,
    pub dir: PathBuf,
    /// Services whose replica 0 is currently not ready.
    not_ready: HashSet<usize>,
    /// Services whose VirtualService currently sends 70% (not 80%) to v1.
    shifted: HashSet<usize>,
}

impl Mesh {
    /// Writes the whole mesh into `dir` (which must exist and be empty).
    pub fn write(dir: &Path, shape: MeshShape) -> std::io::Result<Mesh> {
        let mesh = Mesh {
            shape,
            dir: dir.to_path_buf(),
            not_ready: HashSet::new(),
            shifted: HashSet::new(),
        };
        for ns in 0..shape.namespaces {
            std::fs::create_dir_all(dir.join(format!("ns-{ns}")))?;
            mesh.write_file(
                &mesh.ns_file(ns, "services"),
                &mesh.namespace_yaml(ns, |m, i, y| y.push_str(&m.service_yaml(i))),
            )?;
            mesh.write_endpoints(ns)?;
            mesh.write_virtual_services(ns)?;
        }
        if shape.scoped {
            let mut y = String::new();
            for ns in 0..shape.namespaces {
                let _ = write!(
                    y,
                    "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: ns-{ns}}}\nspec:\n  egress:\n  - hosts: [\"./*\", \"istio-system/*\"]\n"
                );
            }
            mesh.write_file(&dir.join("sidecars.yaml"), &y)?;
        }
        Ok(mesh)
    }

    /// One file per namespace and kind of change, as a GitOps repository lays config out:
    /// `ns-3/services.yaml` (Services, Pods, DestinationRules), `ns-3/endpointslices.yaml`,
    /// `ns-3/virtualservices.yaml`. (One file per resource would measure the file source's
    /// initial load, which applies and publishes file by file, more than the push.)
    fn ns_file(&self, ns: usize, what: &str) -> PathBuf {
        self.dir
            .join(format!("ns-{ns}"))
            .join(format!("{what}.yaml"))
    }

    fn namespace_yaml(&self, ns: usize, each: impl Fn(&Mesh, usize, &mut String)) -> String {
        let mut y = String::new();
        for i in (ns..self.shape.services).step_by(self.shape.namespaces) {
            y.push_str("---\n");
            each(self, i, &mut y);
        }
        y
    }

    fn write_endpoints(&self, ns: usize) -> std::io::Result<()> {
        let text = self.namespace_yaml(ns, |m, i, y| {
            y.push_str(&m.endpoints_yaml(i, m.not_ready.contains(&i).then_some(0)))
        });
        self.write_file(&self.ns_file(ns, "endpointslices"), &text)
    }

    fn write_virtual_services(&self, ns: usize) -> std::io::Result<()> {
        let text = self.namespace_yaml(ns, |m, i, y| {
            let weight = if m.shifted.contains(&i) { 70 } else { 80 };
            y.push_str(&m.virtual_service_yaml(i, weight))
        });
        self.write_file(&self.ns_file(ns, "virtualservices"), &text)
    }

    /// Writes through a hidden temp file and a rename, as editors and config syncers do, so
    /// the watcher never reads half a file.
    fn write_file(&self, path: &Path, text: &str) -> std::io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let tmp = path.with_file_name(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    fn service_yaml(&self, i: usize) -> String {
        let shape = &self.shape;
        let ns = shape.namespace_of(i);
        let mut y = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: svc-{i}}}\n  ports: [{{name: http, port: {PORT}, targetPort: {PORT}}}]\n",
            vip = service_vip(i)
        );
        for r in 0..shape.replicas {
            let pod = shape.pod(r * shape.services + i);
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: svc-{i}, version: v{v}}}}}\nspec: {{serviceAccountName: svc-{i}, containers: [{{name: app, image: app, ports: [{{containerPort: {PORT}}}]}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n",
                name = pod.name,
                v = pod.version,
                ip = pod.ip,
            );
        }
        let _ = write!(
            y,
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  host: svc-{i}\n  trafficPolicy: {{connectionPool: {{http: {{http1MaxPendingRequests: 100}}}}, outlierDetection: {{consecutive5xxErrors: 5}}}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n  - {{name: v3, labels: {{version: v3}}}}\n"
        );
        y
    }

    /// The EndpointSlice of service `i`; `not_ready` marks one replica not ready (it leaves
    /// the load assignment).
    fn endpoints_yaml(&self, i: usize, not_ready: Option<usize>) -> String {
        let shape = &self.shape;
        let ns = shape.namespace_of(i);
        let mut y = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: svc-{i}-abcde, namespace: {ns}, labels: {{kubernetes.io/service-name: svc-{i}}}}}\naddressType: IPv4\nports: [{{name: http, port: {PORT}, protocol: TCP}}]\nendpoints:\n"
        );
        for r in 0..shape.replicas {
            let pod = shape.pod(r * shape.services + i);
            let _ = write!(
                y,
                "- addresses: [\"{ip}\"]\n  conditions: {{ready: {ready}}}\n  targetRef: {{kind: Pod, name: {name}, namespace: {ns}}}\n",
                ip = pod.ip,
                ready = not_ready != Some(r),
                name = pod.name,
            );
        }
        y
    }

    /// The VirtualService of service `i`, sending `v1_weight`% to v1 and the rest split
    /// between v2 and v3.
    fn virtual_service_yaml(&self, i: usize, v1_weight: u32) -> String {
        let ns = self.shape.namespace_of(i);
        let v2 = (100 - v1_weight) / 2;
        let v3 = 100 - v1_weight - v2;
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-{i}, namespace: {ns}}}\nspec:\n  hosts: [svc-{i}]\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: svc-{i}, subset: v2}}}}]\n  - route:\n    - {{destination: {{host: svc-{i}, subset: v1}}, weight: {v1_weight}}}\n    - {{destination: {{host: svc-{i}, subset: v2}}, weight: {v2}}}\n    - {{destination: {{host: svc-{i}, subset: v3}}, weight: {v3}}}\n    timeout: 2s\n    retries: {{attempts: 2, perTryTimeout: 300ms, retryOn: 5xx}}\n"
        )
    }

    /// Takes service `i`'s replica 0 out of (or back into) its endpoints. Returns the
    /// number of endpoints the service has afterwards.
    pub fn toggle_endpoints(&mut self, i: usize) -> std::io::Result<usize> {
        let out = !self.not_ready.remove(&i);
        if out {
            self.not_ready.insert(i);
        }
        self.write_endpoints(i % self.shape.namespaces)?;
        Ok(self.shape.replicas - usize::from(out))
    }

    /// Moves service `i`'s v1 weight between 80% and 70%. Returns the new weight.
    pub fn toggle_v1_weight(&mut self, i: usize) -> std::io::Result<u32> {
        let shift = !self.shifted.remove(&i);
        if shift {
            self.shifted.insert(i);
        }
        let weight = if shift { 70 } else { 80 };
        self.write_virtual_services(i % self.shape.namespaces)?;
        Ok(weight)
    }

    /// The endpoint count and v1 weight the next toggle of service `i` will produce.
    pub fn next_state(&self, i: usize) -> (usize, u32) {
        let count = if self.not_ready.contains(&i) {
            self.shape.replicas
        } else {
            self.shape.replicas - 1
        };
        let weight = if self.shifted.contains(&i) { 80 } else { 70 };
        (count, weight)
    }
}
