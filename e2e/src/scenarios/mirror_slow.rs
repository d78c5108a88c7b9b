//! A slow mirror target does not slow the primary: the mirror copy waits 2 s at
//! catalog-v2 (`delay=2s&pod=catalog-v2`), the caller is answered by v1 at once, and the
//! copies still arrive.

use std::time::Duration;

use anyhow::{Result, ensure};

use super::env::{Env, brief};
use super::mirror::CONFIG;
use crate::cluster::ClientArgs;

pub fn run(env: &Env<'_>) -> Result<()> {
    env.service("catalog", "http-catalog", 80)?;
    env.app("catalog-v1", "catalog", "v1", 80)?;
    env.app("catalog-v2", "catalog", "v2", 80)?;
    env.sleep()?;
    env.apply(CONFIG)?;
    let key = env.key("slow-mirror");
    let n = 20;
    let r = env.from_sleep(
        ClientArgs::get(format!("http://catalog/?delay=2s&pod=catalog-v2&key={key}"))
            .requests(n)
            .concurrency(4),
    )?;
    ensure!(
        r.ok == n && r.version("v1") == n,
        "the caller is answered by the primary: {}",
        brief(&r)
    );
    ensure!(
        r.latency_ms.max < 1000.0,
        "the primary must not wait for the 2 s mirror (max {:.0} ms)",
        r.latency_ms.max
    );
    let mirrored = env.eventually_seen("catalog-v2", 80, &key, n, Duration::from_secs(10))?;
    ensure!(
        mirrored == n,
        "the mirror target saw {mirrored} of {n} copies"
    );
    Ok(())
}
