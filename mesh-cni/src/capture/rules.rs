//! The capture rules as iptables-restore input for the `nat` table, equivalent to what
//! istio-iptables writes in REDIRECT mode: the same chains (ISTIO_INBOUND,
//! ISTIO_IN_REDIRECT, ISTIO_OUTPUT, ISTIO_REDIRECT), the same order and exclusions.
//!
//! Each rule is rendered in the canonical form `iptables-save` prints it back in (both the
//! nft and the legacy backend agree on it), so that CNI CHECK can compare the live table
//! with the generated rules line by line.
//!
//! Differences from istio-iptables, on purpose: no HBONE tunnel port (15008) exception,
//! because this mesh has no HBONE; excluded interfaces are matched at the top of our own
//! chains instead of with extra rules in PREROUTING/OUTPUT, so that the only rules we put
//! into built-in chains are the two jumps (clean-up then never touches anything else).

use std::fmt::Write as _;

use super::config::{CaptureConfig, InterceptionMode, IpRanges, PortSet};

pub const INBOUND: &str = "ISTIO_INBOUND";
pub const IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
pub const OUTPUT: &str = "ISTIO_OUTPUT";
pub const REDIRECT: &str = "ISTIO_REDIRECT";
/// Our chains, in the order they are declared.
pub const CHAINS: [&str; 4] = [INBOUND, REDIRECT, IN_REDIRECT, OUTPUT];

/// Source address the proxy binds when it forwards inbound traffic to the app through
/// the pod IP, so that the connection is not captured again (Istio's convention).
pub const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6/32";
const LOCALHOST: &str = "127.0.0.1/32";

/// One `-A` line: a chain and a rule in iptables-save's canonical option order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub spec: String,
}

impl Rule {
    pub fn line(&self) -> String {
        format!("-A {} {}", self.chain, self.spec)
    }
}

/// Owner match of a rule.
#[derive(Clone, Copy)]
enum Owner {
    Uid(u32),
    Gid(u32),
}

/// Builds one rule in canonical order: `-s -d -i -o -p -m tcp -m owner -j`.
#[derive(Default)]
struct RuleBuilder {
    src: Option<String>,
    dst: Option<(bool, String)>,
    in_if: Option<String>,
    out_if: Option<String>,
    tcp: bool,
    dport: Option<u16>,
    owner: Option<(bool, Owner)>,
}

impl RuleBuilder {
    fn src(mut self, s: &str) -> Self {
        self.src = Some(s.to_string());
        self
    }
    fn dst(mut self, d: impl ToString) -> Self {
        self.dst = Some((false, d.to_string()));
        self
    }
    fn not_dst(mut self, d: &str) -> Self {
        self.dst = Some((true, d.to_string()));
        self
    }
    fn in_if(mut self, i: &str) -> Self {
        self.in_if = Some(i.to_string());
        self
    }
    fn out_if(mut self, o: &str) -> Self {
        self.out_if = Some(o.to_string());
        self
    }
    fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }
    fn dport(mut self, p: u16) -> Self {
        self.tcp = true;
        self.dport = Some(p);
        self
    }
    fn owner(mut self, o: Owner) -> Self {
        self.owner = Some((false, o));
        self
    }
    fn not_owner(mut self, o: Owner) -> Self {
        self.owner = Some((true, o));
        self
    }
    fn jump(self, chain: &'static str, target: &str) -> Rule {
        let mut s = String::new();
        if let Some(src) = &self.src {
            let _ = write!(s, "-s {src} ");
        }
        if let Some((neg, dst)) = &self.dst {
            let _ = write!(s, "{}-d {dst} ", if *neg { "! " } else { "" });
        }
        if let Some(i) = &self.in_if {
            let _ = write!(s, "-i {i} ");
        }
        if let Some(o) = &self.out_if {
            let _ = write!(s, "-o {o} ");
        }
        if self.tcp {
            s.push_str("-p tcp ");
        }
        if let Some(p) = self.dport {
            let _ = write!(s, "-m tcp --dport {p} ");
        }
        if let Some((neg, owner)) = self.owner {
            let neg = if neg { "! " } else { "" };
            let _ = match owner {
                Owner::Uid(u) => write!(s, "-m owner {neg}--uid-owner {u} "),
                Owner::Gid(g) => write!(s, "-m owner {neg}--gid-owner {g} "),
            };
        }
        let _ = write!(s, "-j {target}");
        Rule { chain, spec: s }
    }
}

fn rule() -> RuleBuilder {
    RuleBuilder::default()
}

/// The rules for one pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

impl RuleSet {
    /// Generates the rules for `cfg`; empty when the pod asked for no interception.
    pub fn generate(cfg: &CaptureConfig) -> Self {
        let mut r = Vec::new();
        if cfg.mode == InterceptionMode::None {
            return Self { rules: r };
        }
        let to = |port: u16| format!("REDIRECT --to-ports {port}");
        r.push(rule().tcp().jump(REDIRECT, &to(cfg.outbound_capture_port)));
        r.push(
            rule()
                .tcp()
                .jump(IN_REDIRECT, &to(cfg.inbound_capture_port)),
        );

        // Inbound: only when some inbound port is captured at all.
        let inbound = match &cfg.include_inbound_ports {
            PortSet::All => true,
            PortSet::Ports(p) => !p.is_empty(),
        };
        if inbound {
            r.push(rule().tcp().jump("PREROUTING", INBOUND));
            for iface in &cfg.exclude_interfaces {
                r.push(rule().in_if(iface).jump(INBOUND, "RETURN"));
            }
            match &cfg.include_inbound_ports {
                PortSet::All => {
                    for &p in &cfg.exclude_inbound_ports {
                        r.push(rule().dport(p).jump(INBOUND, "RETURN"));
                    }
                    r.push(rule().tcp().jump(INBOUND, IN_REDIRECT));
                }
                PortSet::Ports(ports) => {
                    for &p in ports {
                        r.push(rule().dport(p).jump(INBOUND, IN_REDIRECT));
                    }
                }
            }
        }

        // Outbound.
        r.push(rule().tcp().jump("OUTPUT", OUTPUT));
        for iface in &cfg.exclude_interfaces {
            r.push(rule().out_if(iface).jump(OUTPUT, "RETURN"));
        }
        // Port exclusions come before the loopback rules, so that an excluded port is
        // never redirected even when the app calls itself through a service VIP.
        for &p in &cfg.exclude_outbound_ports {
            r.push(rule().dport(p).jump(OUTPUT, "RETURN"));
        }
        // The proxy's inbound passthrough connections to the app (source 127.0.0.6).
        r.push(
            rule()
                .src(INBOUND_PASSTHROUGH_SOURCE)
                .out_if("lo")
                .jump(OUTPUT, "RETURN"),
        );
        let loopback_included = match &cfg.include_outbound_ip_ranges {
            IpRanges::All => false,
            IpRanges::Cidrs(c) => c.iter().any(|n| n.addr().is_loopback()),
        };
        for owner in [Owner::Uid(cfg.proxy_uid), Owner::Gid(cfg.proxy_gid)] {
            // app -> VIP -> proxy (outbound) -> own pod IP: send it to the inbound side,
            // so a pod calling its own service goes through both halves of the proxy.
            r.push(
                rule()
                    .not_dst(LOCALHOST)
                    .out_if("lo")
                    .tcp()
                    .owner(owner)
                    .jump(OUTPUT, IN_REDIRECT),
            );
            // app -> its own pod IP over lo: not captured (unless loopback is included).
            if !loopback_included {
                r.push(rule().out_if("lo").not_owner(owner).jump(OUTPUT, "RETURN"));
            }
            // Everything else the proxy sends leaves untouched: no loop.
            r.push(rule().owner(owner).jump(OUTPUT, "RETURN"));
        }
        // Explicit localhost calls (app to app, app to proxy admin) are never captured.
        r.push(rule().dst(LOCALHOST).jump(OUTPUT, "RETURN"));
        for net in &cfg.exclude_outbound_ip_ranges {
            r.push(rule().dst(net).jump(OUTPUT, "RETURN"));
        }
        for &p in &cfg.include_outbound_ports {
            r.push(rule().dport(p).jump(OUTPUT, REDIRECT));
        }
        match &cfg.include_outbound_ip_ranges {
            IpRanges::All => r.push(rule().jump(OUTPUT, REDIRECT)),
            IpRanges::Cidrs(nets) => {
                for net in nets {
                    r.push(rule().dst(net).jump(OUTPUT, REDIRECT));
                }
            }
        }
        Self { rules: r }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// iptables-restore input (for `--noflush`) that creates, or flushes and refills, our
    /// chains. `preamble` lines (deletions of stale jumps) go first, inside the same
    /// transaction, so the whole change is atomic.
    pub fn restore_input(&self, preamble: &[String]) -> String {
        let mut out = String::from("*nat\n");
        for line in preamble {
            out.push_str(line);
            out.push('\n');
        }
        for chain in CHAINS {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for rule in &self.rules {
            out.push_str(&rule.line());
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        out
    }

    /// The rules of `chain`, in order.
    pub fn chain(&self, chain: &str) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|r| r.chain == chain)
            .map(|r| r.spec.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests;
