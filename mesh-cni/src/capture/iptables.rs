//! Applies, checks and removes a [`RuleSet`] with `iptables-restore`/`iptables-save` in
//! the current network namespace (callers enter the pod's namespace first, see
//! [`crate::netns`]).
//!
//! Every change is one iptables-restore transaction with `--noflush`: stale jumps from a
//! previous run are deleted, our chains are declared (which creates or flushes them) and
//! refilled, all in the same commit. Re-applying is therefore idempotent and a pod never
//! sees a half-written rule set.
//!
//! Backends: `iptables-nft` and `iptables-legacy` keep separate tables, so one pod must be
//! handled by one of them consistently. `auto` picks the backend that already holds our
//! chains, otherwise nft (Debian's default), otherwise legacy; both work in a network
//! namespace on this project's machines.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::rules::{CHAINS, RuleSet};

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{cmd} not found (hint: install Debian's iptables package)")]
    NotFound { cmd: &'static str },
    #[error("could not run {cmd}: {source}")]
    Spawn {
        cmd: &'static str,
        source: std::io::Error,
    },
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        cmd: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("neither iptables-nft nor iptables-legacy works here (nft: {nft}; legacy: {legacy})")]
    NoBackend { nft: String, legacy: String },
    #[error("capture rules drifted in chain {chain}: expected {want:?}, found {got:?}")]
    Drift {
        chain: String,
        want: Vec<String>,
        got: Vec<String>,
    },
}

/// Which iptables implementation a caller asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Nft,
    Legacy,
}

/// A concrete iptables implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    fn save_cmd(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-save",
            Backend::Legacy => "iptables-legacy-save",
        }
    }
    fn restore_cmd(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

/// The `nat` table as iptables-save prints it, reduced to what we care about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NatTable {
    /// Declared chains (built-in and user).
    pub chains: Vec<String>,
    /// `(chain, spec)` of every `-A` line, in order.
    pub rules: Vec<(String, String)>,
}

impl NatTable {
    pub fn parse(save: &str) -> Self {
        let mut t = NatTable::default();
        let mut in_nat = false;
        for line in save.lines() {
            let line = line.trim();
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat || line.starts_with('#') {
                continue;
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    t.chains.push(name.to_string());
                }
            } else if let Some(rest) = line.strip_prefix("-A ")
                && let Some((chain, spec)) = rest.split_once(' ')
            {
                t.rules.push((chain.to_string(), spec.to_string()));
            }
        }
        t
    }

    /// Which of our chains exist.
    pub fn our_chains(&self) -> Vec<&str> {
        CHAINS
            .into_iter()
            .filter(|c| self.chains.iter().any(|have| have == c))
            .collect()
    }

    /// `-D` lines for every rule outside our chains that jumps into one of them.
    pub fn stale_jumps(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|(chain, spec)| {
                !CHAINS.contains(&chain.as_str())
                    && CHAINS.iter().any(|c| spec.ends_with(&format!("-j {c}")))
            })
            .map(|(chain, spec)| format!("-D {chain} {spec}"))
            .collect()
    }

    pub fn chain_rules(&self, chain: &str) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|(c, _)| c == chain)
            .map(|(_, s)| s.as_str())
            .collect()
    }

    /// Rules in `chain` that jump into our chains (for built-in chains).
    fn our_jumps(&self, chain: &str) -> Vec<&str> {
        self.chain_rules(chain)
            .into_iter()
            .filter(|spec| CHAINS.iter().any(|c| spec.ends_with(&format!("-j {c}"))))
            .collect()
    }
}

/// The restore input that installs `rules` over whatever `current` holds.
pub fn apply_input(current: &NatTable, rules: &RuleSet) -> String {
    rules.restore_input(&current.stale_jumps())
}

/// The restore input that removes every trace of capture, or `None` when there is none.
pub fn clean_input(current: &NatTable) -> Option<String> {
    let jumps = current.stale_jumps();
    let chains = current.our_chains();
    if jumps.is_empty() && chains.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for j in jumps {
        out.push_str(&j);
        out.push('\n');
    }
    // Declaring flushes; only then can the chains (which reference each other) be deleted.
    for c in &chains {
        out.push_str(&format!(":{c} - [0:0]\n"));
    }
    for c in &chains {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Compares the live table with the generated rules, chain by chain.
pub fn diff(current: &NatTable, rules: &RuleSet) -> Result<(), IptablesError> {
    let mut chains: Vec<&str> = vec!["PREROUTING", "OUTPUT"];
    if !rules.is_empty() {
        chains.extend(CHAINS);
    }
    for chain in chains {
        let want = rules.chain(chain);
        let got = if matches!(chain, "PREROUTING" | "OUTPUT") {
            current.our_jumps(chain)
        } else {
            current.chain_rules(chain)
        };
        let missing_chain = CHAINS.contains(&chain) && !current.chains.iter().any(|c| c == chain);
        if want != got || missing_chain {
            return Err(IptablesError::Drift {
                chain: chain.to_string(),
                want: want.into_iter().map(String::from).collect(),
                got: if missing_chain {
                    vec!["<chain missing>".into()]
                } else {
                    got.into_iter().map(String::from).collect()
                },
            });
        }
    }
    Ok(())
}

/// iptables in the current network namespace.
#[derive(Debug, Clone, Copy)]
pub struct Iptables {
    backend: Backend,
}

impl Iptables {
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    /// Resolves `auto` (see the module docs). Must run in the target network namespace.
    pub fn detect(choice: BackendChoice) -> Result<Self, IptablesError> {
        match choice {
            BackendChoice::Nft => return Ok(Self::new(Backend::Nft)),
            BackendChoice::Legacy => return Ok(Self::new(Backend::Legacy)),
            BackendChoice::Auto => {}
        }
        let nft = Self::new(Backend::Nft).save();
        let legacy = Self::new(Backend::Legacy).save();
        for (backend, res) in [(Backend::Nft, &nft), (Backend::Legacy, &legacy)] {
            if let Ok(t) = res
                && !t.our_chains().is_empty()
            {
                return Ok(Self::new(backend));
            }
        }
        match (nft, legacy) {
            (Ok(_), _) => Ok(Self::new(Backend::Nft)),
            (_, Ok(_)) => Ok(Self::new(Backend::Legacy)),
            (Err(n), Err(l)) => Err(IptablesError::NoBackend {
                nft: n.to_string(),
                legacy: l.to_string(),
            }),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The live `nat` table.
    pub fn save(&self) -> Result<NatTable, IptablesError> {
        let cmd = self.backend.save_cmd();
        let out = Command::new(cmd)
            .args(["-t", "nat"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| spawn_error(cmd, e))?;
        if !out.status.success() {
            return Err(IptablesError::Failed {
                cmd,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(NatTable::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// Feeds `input` to iptables-restore as one transaction.
    pub fn restore(&self, input: &str) -> Result<(), IptablesError> {
        let cmd = self.backend.restore_cmd();
        let mut child = Command::new(cmd)
            .args(["--noflush", "--wait", "10"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(cmd, e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| spawn_error(cmd, e))?;
        }
        let out = child.wait_with_output().map_err(|e| spawn_error(cmd, e))?;
        if !out.status.success() {
            return Err(IptablesError::Failed {
                cmd,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    /// Installs `rules`, replacing any earlier capture rules. An empty rule set removes them.
    pub fn apply(&self, rules: &RuleSet) -> Result<(), IptablesError> {
        if rules.is_empty() {
            return self.clean().map(drop);
        }
        let current = self.save()?;
        self.restore(&apply_input(&current, rules))
    }

    /// Removes every capture rule and chain. Returns whether there was anything to remove.
    pub fn clean(&self) -> Result<bool, IptablesError> {
        let current = self.save()?;
        match clean_input(&current) {
            Some(input) => self.restore(&input).map(|()| true),
            None => Ok(false),
        }
    }

    /// Verifies that exactly `rules` are in force.
    pub fn check(&self, rules: &RuleSet) -> Result<(), IptablesError> {
        diff(&self.save()?, rules)
    }
}

fn spawn_error(cmd: &'static str, e: std::io::Error) -> IptablesError {
    if e.kind() == std::io::ErrorKind::NotFound {
        IptablesError::NotFound { cmd }
    } else {
        IptablesError::Spawn { cmd, source: e }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CaptureConfig;

    const SAVED: &str = "# Generated by iptables-nft-save v1.8.9\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:ISTIO_INBOUND - [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A PREROUTING -p tcp -j ISTIO_INBOUND\n-A OUTPUT -d 1.2.3.4/32 -j DNAT --to-destination 5.6.7.8\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN\nCOMMIT\n";

    #[test]
    fn parse_finds_our_chains_and_jumps() {
        let t = NatTable::parse(SAVED);
        assert_eq!(t.our_chains(), vec!["ISTIO_INBOUND", "ISTIO_OUTPUT"]);
        assert_eq!(
            t.stale_jumps(),
            vec![
                "-D PREROUTING -p tcp -j ISTIO_INBOUND",
                "-D OUTPUT -p tcp -j ISTIO_OUTPUT"
            ]
        );
    }

    #[test]
    fn reapply_deletes_old_jumps_first() {
        let t = NatTable::parse(SAVED);
        let input = apply_input(&t, &RuleSet::generate(&CaptureConfig::default()));
        let del = input.find("-D OUTPUT -p tcp -j ISTIO_OUTPUT").unwrap();
        let add = input.find("-A OUTPUT -p tcp -j ISTIO_OUTPUT").unwrap();
        assert!(del < add);
        // Someone else's rule is left alone.
        assert!(!input.contains("DNAT"));
    }

    #[test]
    fn clean_flushes_before_deleting() {
        let input = clean_input(&NatTable::parse(SAVED)).unwrap();
        let flush = input.find(":ISTIO_OUTPUT - [0:0]").unwrap();
        let delete = input.find("-X ISTIO_OUTPUT").unwrap();
        assert!(flush < delete);
        assert!(!input.contains("DNAT"));
        assert!(clean_input(&NatTable::parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n")).is_none());
    }

    #[test]
    fn diff_detects_drift_and_accepts_exact_match() {
        let rules = RuleSet::generate(&CaptureConfig::default());
        let mut save = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        for c in CHAINS {
            save.push_str(&format!(":{c} - [0:0]\n"));
        }
        for r in &rules.rules {
            save.push_str(&r.line());
            save.push('\n');
        }
        save.push_str("COMMIT\n");
        diff(&NatTable::parse(&save), &rules).unwrap();

        let tampered = save.replace("--to-ports 15001", "--to-ports 15002");
        let err = diff(&NatTable::parse(&tampered), &rules)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ISTIO_REDIRECT"), "{err}");

        let err = diff(&NatTable::parse(SAVED), &rules)
            .unwrap_err()
            .to_string();
        assert!(err.contains("drifted"), "{err}");
    }

    #[test]
    fn diff_of_empty_rules_wants_no_jumps() {
        diff(
            &NatTable::parse("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"),
            &RuleSet::default(),
        )
        .unwrap();
        assert!(diff(&NatTable::parse(SAVED), &RuleSet::default()).is_err());
    }
}
