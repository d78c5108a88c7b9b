//! The plugin's inputs from the environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`) and the Kubernetes pod identity carried in
//! `CNI_ARGS` (`K8S_POD_NAME`, `K8S_POD_NAMESPACE`).

use std::collections::BTreeMap;

use super::error::{CniError, Code};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
        }
    }
}

/// The runtime's parameters for one invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Option<Command>,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
}

/// The pod a CNI call is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl CniEnv {
    /// Reads the variables through `get` (the process environment in production).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let raw = get("CNI_COMMAND").unwrap_or_default();
        let command = match raw.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    "invalid CNI_COMMAND",
                    format!("{other:?} is not one of ADD, DEL, CHECK, VERSION"),
                ));
            }
        };
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        let env = CniEnv {
            command: Some(command),
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args,
        };
        // Required variables per command (CNI spec, "Parameters").
        let required: &[(&str, &str)] = match command {
            Command::Add | Command::Check => &[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
            ],
            Command::Del => &[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_IFNAME", &env.ifname),
            ],
            Command::Version => &[],
        };
        for (name, value) in required {
            if value.is_empty() {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("missing {name}"),
                    format!("{name} is required for {}", command.as_str()),
                ));
            }
        }
        Ok(env)
    }

    pub fn command(&self) -> Command {
        self.command.unwrap_or(Command::Version)
    }

    /// The Kubernetes pod, when the runtime passed one.
    pub fn pod(&self) -> Option<PodRef> {
        let name = self.args.get("K8S_POD_NAME").filter(|s| !s.is_empty())?;
        let namespace = self
            .args
            .get("K8S_POD_NAMESPACE")
            .filter(|s| !s.is_empty())
            .map_or("default", String::as_str);
        Some(PodRef {
            namespace: namespace.to_string(),
            name: name.clone(),
        })
    }
}

/// `CNI_ARGS` is `K=V;K=V`.
fn parse_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    raw.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    CniError::new(
                        Code::InvalidEnvironment,
                        "invalid CNI_ARGS",
                        format!("{kv:?} is not KEY=VALUE"),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn reads_pod_from_args() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
            ),
        ])
        .unwrap();
        assert_eq!(e.command(), Command::Add);
        assert_eq!(
            e.pod(),
            Some(PodRef {
                namespace: "shop".into(),
                name: "web-0".into()
            })
        );
    }

    #[test]
    fn rejects_missing_and_bad_variables() {
        let err = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")]).unwrap_err();
        assert_eq!(err.code, Code::InvalidEnvironment);
        assert!(err.msg.contains("CNI_NETNS"), "{err}");
        assert!(env(&[("CNI_COMMAND", "FROB")]).is_err());
        let err = env(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "oops")]).unwrap_err();
        assert!(err.details.contains("oops"));
        // DEL without a namespace is fine: the namespace may be gone already.
        env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
    }
}
