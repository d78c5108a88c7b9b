//! Delta and SotW give the same final resources for the same sequence of changes: both kinds
//! of client are connected to one server while a sequence of mesh changes is pushed, and
//! after every step both must hold exactly what the mesh says (a table of hand-picked
//! sequences, then proptest-generated ones).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod xds_support;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use xds_support::*;

const WAIT: Duration = Duration::from_secs(5);

/// One change to the mesh.
#[derive(Debug, Clone)]
enum Step {
    /// Set a cluster's endpoints (adds the cluster if new): EDS-only if it existed.
    Endpoints(u8, Vec<u16>),
    RemoveCluster(u8),
    /// Point a listener at a route config (adds the listener if new).
    Listener(u8, u8),
    RemoveListener(u8),
    /// Set a route config's domain (adds it if new).
    Route(u8, u8),
    RemoveRoute(u8),
}

fn cluster(i: u8) -> String {
    format!("outbound|80||svc{i}.default.svc.cluster.local")
}

impl Step {
    /// Applies the step; returns whether it needs a full push.
    fn apply(&self, w: &mut World) -> bool {
        match self {
            Step::Endpoints(c, ports) => w.clusters.insert(cluster(*c), ports.clone()).is_none(),
            Step::RemoveCluster(c) => {
                w.clusters.remove(&cluster(*c));
                true
            }
            Step::Listener(l, r) => {
                w.listeners
                    .insert(format!("0.0.0.0_{l}"), format!("route{r}"));
                true
            }
            Step::RemoveListener(l) => {
                w.listeners.remove(&format!("0.0.0.0_{l}"));
                true
            }
            Step::Route(r, d) => {
                w.routes.insert(format!("route{r}"), format!("host{d}"));
                true
            }
            Step::RemoveRoute(r) => {
                w.routes.remove(&format!("route{r}"));
                true
            }
        }
    }
}

async fn run(steps: Vec<Step>) {
    let mut w = World {
        clusters: BTreeMap::from([(cluster(0), vec![80])]),
        listeners: BTreeMap::from([("0.0.0.0_0".into(), "route0".into())]),
        routes: BTreeMap::from([("route0".into(), "host0".into())]),
    };
    let cp = ControlPlane::start(w.clone()).await;
    let sotw = sotw_client(cp.xds_addr, ClientOptions::default()).await;
    let delta = delta_client(cp.xds_addr, ClientOptions::default(), None).await;
    sotw.wait_for(&w.expected(), WAIT).await.unwrap();
    delta.wait_for(&w.expected(), WAIT).await.unwrap();
    for (i, step) in steps.iter().enumerate() {
        let full = step.apply(&mut w);
        cp.change(w.clone(), full);
        let want = w.expected();
        if let Err(have) = sotw.wait_for(&want, WAIT).await {
            panic!("step {i} {step:?}: SotW client holds\n{have:#?}\nwant\n{want:#?}");
        }
        if let Err(have) = delta.wait_for(&want, WAIT).await {
            panic!("step {i} {step:?}: delta client holds\n{have:#?}\nwant\n{want:#?}");
        }
        assert_eq!(sotw.holdings(), delta.holdings(), "step {i} {step:?}");
    }
}

#[tokio::test]
async fn table_of_change_sequences() {
    use Step::*;
    let table: Vec<Vec<Step>> = vec![
        // endpoints only
        vec![
            Endpoints(0, vec![81]),
            Endpoints(0, vec![81, 82]),
            Endpoints(0, vec![]),
        ],
        // add and remove clusters, endpoints of a new cluster
        vec![
            Endpoints(1, vec![90]),
            Endpoints(2, vec![91]),
            RemoveCluster(1),
            Endpoints(1, vec![92]),
        ],
        // listeners and the routes they name, including a route that appears late
        vec![
            Listener(1, 5),
            Route(5, 1),
            Route(5, 2),
            RemoveListener(0),
            Listener(0, 0),
        ],
        // remove everything, then bring it back
        vec![
            RemoveCluster(0),
            RemoveListener(0),
            RemoveRoute(0),
            Route(0, 3),
            Listener(0, 0),
            Endpoints(0, vec![1]),
        ],
        // a listener switches route configs
        vec![Route(1, 1), Listener(0, 1), Listener(0, 0), RemoveRoute(1)],
    ];
    for steps in table {
        run(steps).await;
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..3, prop::collection::vec(1u16..5, 0..3)).prop_map(|(c, p)| Step::Endpoints(c, p)),
        1 => (0u8..3).prop_map(Step::RemoveCluster),
        1 => (0u8..2, 0u8..3).prop_map(|(l, r)| Step::Listener(l, r)),
        1 => (0u8..2).prop_map(Step::RemoveListener),
        1 => (0u8..3, 0u8..3).prop_map(|(r, d)| Step::Route(r, d)),
        1 => (0u8..3).prop_map(Step::RemoveRoute),
    ]
}

proptest! {
    // Each case runs a server and two gRPC clients: keep the count small.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_change_sequences(steps in prop::collection::vec(step(), 1..8)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(steps));
    }
}
