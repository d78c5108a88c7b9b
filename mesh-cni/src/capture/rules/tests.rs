//! Golden rule sets, one per annotation. Regenerate with `MESH_UPDATE_GOLDEN=1`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::capture::config::annotation as a;

fn golden(name: &str, annotations: &[(&str, &str)]) {
    let ann: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cfg = CaptureConfig::from_annotations(&ann).expect("valid annotations");
    let mut got = String::new();
    for (k, v) in &ann {
        got.push_str(&format!("# {k}: {v:?}\n"));
    }
    got.push_str(&RuleSet::generate(&cfg).restore_input(&[]));
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/capture/testdata")
        .join(format!("{name}.golden"));
    if std::env::var_os("MESH_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with MESH_UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(got, want, "golden {} differs", path.display());
}

#[test]
fn default_pod() {
    golden("default", &[]);
}

#[test]
fn include_inbound_ports() {
    golden(
        "include-inbound-ports",
        &[(a::INCLUDE_INBOUND_PORTS, "8080,9090")],
    );
}

#[test]
fn include_inbound_ports_empty() {
    golden(
        "include-inbound-ports-empty",
        &[(a::INCLUDE_INBOUND_PORTS, "")],
    );
}

#[test]
fn exclude_inbound_ports() {
    golden(
        "exclude-inbound-ports",
        &[(a::EXCLUDE_INBOUND_PORTS, "8081,9901")],
    );
}

#[test]
fn include_outbound_ip_ranges() {
    golden(
        "include-outbound-ip-ranges",
        &[(a::INCLUDE_OUTBOUND_IP_RANGES, "10.250.0.0/16,10.251.0.0/16")],
    );
}

#[test]
fn include_outbound_ip_ranges_empty() {
    golden(
        "include-outbound-ip-ranges-empty",
        &[(a::INCLUDE_OUTBOUND_IP_RANGES, "")],
    );
}

#[test]
fn include_outbound_loopback() {
    golden(
        "include-outbound-loopback",
        &[(a::INCLUDE_OUTBOUND_IP_RANGES, "127.0.0.1/32,10.251.0.0/16")],
    );
}

#[test]
fn exclude_outbound_ip_ranges() {
    golden(
        "exclude-outbound-ip-ranges",
        &[(
            a::EXCLUDE_OUTBOUND_IP_RANGES,
            "10.96.0.0/12,169.254.169.254/32",
        )],
    );
}

#[test]
fn exclude_outbound_ports() {
    golden(
        "exclude-outbound-ports",
        &[(a::EXCLUDE_OUTBOUND_PORTS, "5432,6379")],
    );
}

#[test]
fn include_outbound_ports() {
    golden(
        "include-outbound-ports",
        &[
            (a::INCLUDE_OUTBOUND_IP_RANGES, ""),
            (a::INCLUDE_OUTBOUND_PORTS, "3306"),
        ],
    );
}

#[test]
fn exclude_interfaces() {
    golden(
        "exclude-interfaces",
        &[(a::EXCLUDE_INTERFACES, "eth1,net1")],
    );
}

#[test]
fn interception_mode_redirect() {
    golden(
        "interception-mode-redirect",
        &[(a::INTERCEPTION_MODE, "REDIRECT")],
    );
}

#[test]
fn interception_mode_none() {
    golden("interception-mode-none", &[(a::INTERCEPTION_MODE, "NONE")]);
}

#[test]
fn everything_at_once() {
    golden(
        "combined",
        &[
            (a::INCLUDE_INBOUND_PORTS, "*"),
            (a::EXCLUDE_INBOUND_PORTS, "9000"),
            (a::INCLUDE_OUTBOUND_IP_RANGES, "10.251.0.0/16"),
            (a::EXCLUDE_OUTBOUND_IP_RANGES, "10.251.9.0/24"),
            (a::EXCLUDE_OUTBOUND_PORTS, "25"),
            (a::INCLUDE_OUTBOUND_PORTS, "443"),
        ],
    );
}

#[test]
fn restore_input_puts_preamble_in_the_same_transaction() {
    let rules = RuleSet::generate(&CaptureConfig::default());
    let input = rules.restore_input(&["-D OUTPUT -p tcp -j ISTIO_OUTPUT".to_string()]);
    let lines: Vec<&str> = input.lines().collect();
    assert_eq!(lines[0], "*nat");
    assert_eq!(lines[1], "-D OUTPUT -p tcp -j ISTIO_OUTPUT");
    assert_eq!(lines.last(), Some(&"COMMIT"));
    assert_eq!(input.matches("COMMIT").count(), 1);
}

#[test]
fn jumps_into_builtin_chains_are_only_the_two_entry_points() {
    let cfg = CaptureConfig::from_annotations(
        &[(a::EXCLUDE_INTERFACES.to_string(), "eth1".to_string())]
            .into_iter()
            .collect(),
    )
    .unwrap();
    let rules = RuleSet::generate(&cfg);
    assert_eq!(rules.chain("PREROUTING"), vec!["-p tcp -j ISTIO_INBOUND"]);
    assert_eq!(rules.chain("OUTPUT"), vec!["-p tcp -j ISTIO_OUTPUT"]);
}

mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::capture::iptables::{NatTable, diff};

    fn port_list() -> impl Strategy<Value = String> {
        prop::collection::vec(1u16..=65535, 0..5).prop_map(|v| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    fn cidr_list() -> impl Strategy<Value = String> {
        prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..4).prop_map(|v| {
            v.iter()
                .map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3]))
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
        (
            prop_oneof![Just("*".to_string()), port_list()],
            port_list(),
            prop_oneof![Just("*".to_string()), cidr_list()],
            cidr_list(),
            port_list(),
            port_list(),
        )
            .prop_map(|(ii, ei, io, eo, iop, eop)| {
                [
                    (a::INCLUDE_INBOUND_PORTS, ii),
                    (a::EXCLUDE_INBOUND_PORTS, ei),
                    (a::INCLUDE_OUTBOUND_IP_RANGES, io),
                    (a::EXCLUDE_OUTBOUND_IP_RANGES, eo),
                    (a::INCLUDE_OUTBOUND_PORTS, iop),
                    (a::EXCLUDE_OUTBOUND_PORTS, eop),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            })
    }

    proptest! {
        /// Whatever valid annotations a pod has, the rules read back from an
        /// iptables-save of them compare equal (what CNI CHECK relies on), the
        /// proxy's UID is always excluded, and the two entry jumps are the only rules
        /// in built-in chains.
        #[test]
        fn generated_rules_round_trip_through_save_format(ann in annotations()) {
            let cfg = CaptureConfig::from_annotations(&ann).unwrap();
            let rules = RuleSet::generate(&cfg);
            let mut save = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
            for c in crate::capture::rules::CHAINS {
                save.push_str(&format!(":{c} - [0:0]\n"));
            }
            for r in &rules.rules {
                save.push_str(&r.line());
                save.push('\n');
            }
            save.push_str("COMMIT\n");
            prop_assert!(diff(&NatTable::parse(&save), &rules).is_ok());
            prop_assert!(rules.chain(OUTPUT).contains(&"-m owner --uid-owner 1337 -j RETURN"));
            prop_assert!(rules.chain("OUTPUT") == vec!["-p tcp -j ISTIO_OUTPUT"]);
            prop_assert!(rules.chain("PREROUTING").len() <= 1);
        }

        /// Arbitrary annotation text never panics: it parses or names the annotation.
        #[test]
        fn arbitrary_values_never_panic(key in prop::sample::select(vec![
            a::INCLUDE_INBOUND_PORTS, a::EXCLUDE_INBOUND_PORTS, a::INCLUDE_OUTBOUND_IP_RANGES,
            a::EXCLUDE_OUTBOUND_IP_RANGES, a::INCLUDE_OUTBOUND_PORTS, a::EXCLUDE_OUTBOUND_PORTS,
            a::EXCLUDE_INTERFACES, a::INTERCEPTION_MODE,
        ]), value in ".{0,40}") {
            let ann: BTreeMap<String, String> = [(key.to_string(), value)].into_iter().collect();
            if let Err(e) = CaptureConfig::from_annotations(&ann) {
                prop_assert!(e.to_string().contains("annotation"));
            }
        }
    }
}
