//! One CNI invocation, from parsed inputs to the text the runtime reads on stdout.

use std::path::Path;

use super::env::{CniEnv, Command};
use super::error::{CniError, Code};
use super::log::Log;
use super::netconf::{NetConf, SUPPORTED_VERSIONS, sniff_version};
use crate::capture::{CaptureConfig, Iptables, IptablesError, RuleSet};
use crate::netns;
use crate::pod::{Decision, decide};

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub success: bool,
}

/// Runs one CNI command. Never panics on bad input; every failure becomes a CNI error
/// result (and a log line when the netconf names a log file).
pub fn run(env: Result<CniEnv, CniError>, stdin: &[u8]) -> Outcome {
    let version = sniff_version(stdin);
    let fail = |e: CniError| Outcome {
        stdout: e.to_json(&version),
        success: false,
    };
    let env = match env {
        Ok(env) => env,
        Err(e) => return fail(e),
    };
    if env.command() == Command::Version {
        return Outcome {
            stdout: serde_json::json!({
                "cniVersion": "1.0.0",
                "supportedVersions": SUPPORTED_VERSIONS,
            })
            .to_string(),
            success: true,
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let pod = env.pod().map_or_else(
        || "-".to_string(),
        |p| format!("{}/{}", p.namespace, p.name),
    );
    let log = Log::new(
        &conf.log_file(),
        format!(
            "cmd={} container={} pod={pod}",
            env.command().as_str(),
            env.container_id
        ),
    );
    let result = match env.command() {
        Command::Add => add(&env, &conf, &log),
        Command::Del => del(&env, &conf, &log).map(|()| String::new()),
        Command::Check => check(&env, &conf, &log).map(|()| String::new()),
        Command::Version => Ok(String::new()),
    };
    match result {
        Ok(stdout) => Outcome {
            stdout,
            success: true,
        },
        Err(e) => {
            log.error(&format!("code={} {e}", e.code as u32));
            fail(e)
        }
    }
}

/// What ADD/CHECK decided for this pod: rules to enforce, or none with a reason.
fn plan(env: &CniEnv, conf: &NetConf, log: &Log) -> Result<Option<RuleSet>, CniError> {
    let Some(pod_ref) = env.pod() else {
        log.info("no K8S_POD_NAME in CNI_ARGS: not a Kubernetes pod, not captured");
        return Ok(None);
    };
    if conf.exclude_namespaces.contains(&pod_ref.namespace) {
        log.info("namespace is excluded in the netconf, not captured");
        return Ok(None);
    }
    let pod = conf
        .pod_source
        .open()
        .get(&pod_ref.namespace, &pod_ref.name)
        .map_err(|e| {
            let code = match e {
                crate::pod::PodError::NotFound { .. } => Code::UnknownContainer,
                _ => Code::TryAgainLater,
            };
            CniError::new(
                code,
                "cannot look the pod up; refusing to run it uncaptured",
                e,
            )
        })?;
    match decide(&pod) {
        Decision::Skip(why) => {
            log.info(&format!("not captured: {why}"));
            Ok(None)
        }
        Decision::Capture => {
            let annotations = pod.metadata.annotations.clone().unwrap_or_default();
            let cfg = CaptureConfig::from_annotations(&annotations).map_err(|e| {
                CniError::new(
                    Code::InvalidAnnotation,
                    format!(
                        "pod {}/{}: invalid capture annotation",
                        pod_ref.namespace, pod_ref.name
                    ),
                    e,
                )
            })?;
            Ok(Some(RuleSet::generate(&cfg)))
        }
    }
}

fn prev_result(conf: &NetConf) -> Result<String, CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidNetconf,
            "missing prevResult",
            "mesh-cni is a chained plugin: list it after the interface plugin (e.g. bridge) in the conflist",
        )
    })?;
    serde_json::to_string(prev).map_err(|e| CniError::new(Code::Io, "cannot encode prevResult", e))
}

fn in_netns<T>(
    env: &CniEnv,
    f: impl FnOnce() -> Result<T, IptablesError> + Send,
) -> Result<T, CniError>
where
    T: Send,
{
    netns::run_in(Path::new(&env.netns), f)
        .map_err(|e| {
            CniError::new(
                Code::UnknownContainer,
                "cannot enter the pod network namespace",
                e,
            )
        })?
        .map_err(|e| match e {
            IptablesError::Drift { .. } => {
                CniError::new(Code::Drift, "capture rules differ from the pod's", e)
            }
            _ => CniError::new(
                Code::Iptables,
                "iptables failed in the pod network namespace",
                e,
            ),
        })
}

fn add(env: &CniEnv, conf: &NetConf, log: &Log) -> Result<String, CniError> {
    let out = prev_result(conf)?;
    if let Some(rules) = plan(env, conf, log)? {
        let choice = conf.iptables;
        let backend = in_netns(env, || {
            let ipt = Iptables::detect(choice)?;
            ipt.apply(&rules)?;
            Ok(ipt.backend())
        })?;
        log.info(&format!(
            "captured: {} rules applied with iptables-{} in {}",
            rules.rules.len(),
            backend.name(),
            env.netns
        ));
    }
    Ok(out)
}

fn del(env: &CniEnv, conf: &NetConf, log: &Log) -> Result<(), CniError> {
    // DEL must succeed when things are already gone; it never needs the pod object.
    if env.netns.is_empty() || !Path::new(&env.netns).exists() {
        log.info("network namespace already gone, nothing to remove");
        return Ok(());
    }
    let choice = conf.iptables;
    let removed = in_netns(env, || Iptables::detect(choice)?.clean())?;
    log.info(if removed {
        "capture rules removed"
    } else {
        "no capture rules to remove"
    });
    Ok(())
}

fn check(env: &CniEnv, conf: &NetConf, log: &Log) -> Result<(), CniError> {
    if conf.cni_version.starts_with("0.3.") {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            "CHECK is not defined for this CNI version",
            format!("cniVersion {} predates CHECK (0.4.0)", conf.cni_version),
        ));
    }
    prev_result(conf)?;
    let rules = plan(env, conf, log)?.unwrap_or_default();
    let choice = conf.iptables;
    in_netns(env, || Iptables::detect(choice)?.check(&rules))?;
    log.info(&format!("check passed ({} rules)", rules.rules.len()));
    Ok(())
}
