//! Sampling a server process from `/proc`: resident memory and CPU use over a run.

use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One reading: seconds since the sampler started, RSS in MiB, CPU % since the previous one
/// (100 = one core busy).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at_s: f64,
    pub rss_mib: f64,
    pub cpu_percent: f64,
}

/// RSS in KiB of `pid` (`VmRSS` in `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User plus system CPU time of `pid`, in clock ticks (`/proc/PID/stat` fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces; fields are counted after its closing parenthesis
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Samples a process every `every` in a background task.
#[derive(Clone)]
pub struct Sampler {
    pid: u32,
    samples: Arc<Mutex<Vec<Sample>>>,
}

/// Linux reports CPU times in ticks of 1/100 s (`getconf CLK_TCK`) on every platform we run.
pub const TICKS_PER_S: f64 = 100.0;

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Sampler {
        let s = Sampler {
            pid,
            samples: Default::default(),
        };
        let out = s.samples.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let mut last = (Instant::now(), cpu_ticks(pid).unwrap_or(0));
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let (Some(rss), Some(ticks)) = (rss_kib(pid), cpu_ticks(pid)) else {
                    return;
                };
                let now = Instant::now();
                let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
                let cpu = (ticks.saturating_sub(last.1)) as f64 / TICKS_PER_S / dt * 100.0;
                last = (now, ticks);
                out.lock().unwrap().push(Sample {
                    at_s: t0.elapsed().as_secs_f64(),
                    rss_mib: rss as f64 / 1024.0,
                    cpu_percent: cpu,
                });
            }
        });
        s
    }

    pub fn rss_mib_now(&self) -> f64 {
        rss_kib(self.pid).unwrap_or(0) as f64 / 1024.0
    }

    pub fn last(&self) -> Option<Sample> {
        self.samples.lock().unwrap().last().copied()
    }

    /// Mean CPU % of the samples taken between `from_s` and `to_s` (sampler seconds).
    pub fn cpu_between(&self, from_s: f64, to_s: f64) -> f64 {
        let s = self.samples.lock().unwrap();
        let v: Vec<f64> = s
            .iter()
            .filter(|x| x.at_s > from_s && x.at_s <= to_s)
            .map(|x| x.cpu_percent)
            .collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }

    pub fn elapsed_s(&self) -> f64 {
        self.samples.lock().unwrap().last().map_or(0.0, |s| s.at_s)
    }

    pub fn peak_rss_mib(&self) -> f64 {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.rss_mib)
            .fold(0.0, f64::max)
    }

    /// Every sample, as `[[seconds, rss MiB, cpu %], ...]`.
    pub fn series(&self) -> Value {
        let s = self.samples.lock().unwrap();
        json!(s
            .iter()
            .map(|x| [
                (x.at_s * 10.0).round() / 10.0,
                (x.rss_mib * 10.0).round() / 10.0,
                x.cpu_percent.round()
            ])
            .collect::<Vec<_>>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert!(rss_kib(u32::MAX).is_none());
    }
}
