//! CPU time and memory of a proxy from /proc: the process and its descendants (nginx's
//! workers are children of its master), so every proxy is charged for all its processes.

use std::collections::HashMap;

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
const TICKS: f64 = 100.0;

/// `(ppid, utime + stime in ticks)` of every process, from /proc/<pid>/stat.
fn table() -> HashMap<i32, (i32, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(v) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            out.insert(pid, v);
        }
    }
    out
}

/// `(ppid, utime + stime)` from a stat line; the command (field 2) may hold spaces.
fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command, from field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `pid` and all its descendants that are alive now.
pub fn tree(pid: i32) -> Vec<i32> {
    let t = table();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            t.iter()
                .filter(|(_, (pp, _))| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out.retain(|p| t.contains_key(p));
    out
}

/// User + system CPU seconds of the process tree under `pid`.
pub fn cpu_seconds(pid: i32) -> f64 {
    let t = table();
    tree(pid)
        .iter()
        .filter_map(|p| t.get(p))
        .map(|(_, ticks)| *ticks as f64 / TICKS)
        .sum()
}

/// Seconds the threads of the process tree under `pid` have spent on a CPU and waiting
/// on a run queue (runnable, not running), from /proc/<tid>/schedstat: nanosecond
/// counters, where /proc/<pid>/stat counts 10 ms ticks. The wait is what a proxy that
/// shares its CPU pays in latency for every wakeup the scheduler does not serve at once.
pub fn sched(pid: i32) -> Option<Sched> {
    let mut out = Sched::default();
    let mut any = false;
    for p in tree(pid) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("schedstat");
            if let Some(s) = std::fs::read_to_string(path)
                .ok()
                .as_deref()
                .and_then(Sched::parse)
            {
                out.cpu_s += s.cpu_s;
                out.wait_s += s.wait_s;
                out.slices += s.slices;
                any = true;
            }
        }
    }
    any.then_some(out)
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sched {
    pub cpu_s: f64,
    pub wait_s: f64,
    /// Times a thread was put on a CPU.
    pub slices: u64,
}

impl Sched {
    /// `<on-cpu ns> <run-queue wait ns> <timeslices>`.
    fn parse(line: &str) -> Option<Sched> {
        let mut f = line.split_whitespace().map(|v| v.parse::<u64>().ok());
        Some(Sched {
            cpu_s: f.next()?? as f64 / 1e9,
            wait_s: f.next()?? as f64 / 1e9,
            slices: f.next()??,
        })
    }

    pub fn since(self, before: Sched) -> Sched {
        Sched {
            cpu_s: self.cpu_s - before.cpu_s,
            wait_s: self.wait_s - before.wait_s,
            slices: self.slices.saturating_sub(before.slices),
        }
    }
}

/// A `/proc/<pid>/status` memory field (`VmRSS`, `VmHWM`) summed over the tree, in MiB.
pub fn memory_mib(pid: i32, field: &str) -> f64 {
    let kib: u64 = tree(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .sum();
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let line = "4242 (nginx: worker (x)) S 4200 4200 4200 0 -1 4194624 90 0 0 0 37 12 0 0 20 0 1 0 1234 0 0";
        assert_eq!(parse_stat(line), Some((4200, 49)));
    }

    #[test]
    fn this_process_is_measured() {
        let me = std::process::id() as i32;
        assert!(tree(me).contains(&me));
        assert!(memory_mib(me, "VmRSS") > 0.0);
        assert!(memory_mib(me, "VmHWM") >= memory_mib(me, "VmRSS") * 0.5);
        assert!(cpu_seconds(me) >= 0.0);
        let a = sched(me).expect("schedstat of this process");
        let x: u64 = (0..2_000_000u64).map(std::hint::black_box).sum();
        std::hint::black_box(x);
        let d = sched(me).unwrap().since(a);
        assert!(d.cpu_s > 0.0, "{d:?}");
    }

    #[test]
    fn schedstat_fields() {
        let s = Sched::parse("226161672 38939033 371\n").unwrap();
        assert_eq!(s.slices, 371);
        assert!((s.cpu_s - 0.226161672).abs() < 1e-12);
        assert!((s.wait_s - 0.038939033).abs() < 1e-12);
        assert_eq!(Sched::parse("12 x 3"), None);
    }
}
