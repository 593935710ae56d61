//! The report of a bench run: figures, floors and ratios, as text and JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    /// Concurrent holders (or senders).
    pub(crate) concurrency: usize,
    /// Requests completed in the measured window, successful or not.
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    /// Failed requests by HTTP status, or `transport` when no answer came.
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) seconds: f64,
    pub(crate) requests_per_second: f64,
    /// Latency of the measured request alone (not the challenge before it), ms.
    pub(crate) latency_ms: Latency,
    /// The same requests as the (first) server timed them, from reading the request to
    /// its answer, ms: the quantiles of its `fedgate_http_request_seconds` summary for the
    /// route (successful answers), which rolls over the last minute (the run and its
    /// warm-up). What the client's latency adds is its network and its own scheduling,
    /// on the same cores when the bench runs beside the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_latency_ms: Option<ServerLatency>,
    /// The challenges the requests answered (exchange and research): asked for, or
    /// offered by the answer before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) challenges: Option<ChallengeFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ingest: Option<IngestFigures>,
    /// Distinct patients the requests asked for (exchange).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) patients: Option<usize>,
    /// Policy decisions of the gateway over the whole run (warm-up included), as its
    /// metrics count them: evaluated, and answered from its decision cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) decisions: Option<DecisionFigures>,
    /// Records of the gateway over the whole run (warm-up included), as its metrics count
    /// them: read from the store, and copied from those it keeps parsed. Absent when it
    /// keeps none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) records: Option<RecordFigures>,
    /// Pages of the gateway's answers over the whole run (warm-up included), as its
    /// metrics count them: made (fetched and tokenized), and served from those it kept.
    /// Absent when it keeps none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) answers: Option<AnswerFigures>,
    /// Durable commits of the gateway's database over the whole run (set-up included), as
    /// its metrics count them, and the writes they carried (group commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) storage: Option<StorageFigures>,
    /// Batches of access events the gateway sent to the log in the measured window, and
    /// the events they carried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) shipping: Option<ShippingFigures>,
    /// The server process under load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<ServerUsage>,
    /// Cores this load generator kept busy in the window: on a small machine it competes
    /// with the server for them.
    pub(crate) load_generator_cores_busy: f64,
    pub(crate) floor: Floor,
}

#[derive(Serialize, Clone, Copy)]
pub(crate) struct ServerLatency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
}

#[derive(Serialize)]
pub(crate) struct ChallengeFigures {
    /// Asked for with `POST /v1/challenges` (each holder's first, or every one with
    /// `--challenge-per-request`).
    pub(crate) asked: u64,
    /// Offered by the answer to the holder's previous request (`Fedgate-Next-Challenge`).
    pub(crate) carried: u64,
    /// Latency of asking for one, ms.
    pub(crate) latency_ms: Latency,
}

#[derive(Serialize, Clone, Copy)]
pub(crate) struct DecisionFigures {
    pub(crate) evaluated: u64,
    pub(crate) from_cache: u64,
    /// A decision's time as the (first) gateway made it, from the cache or evaluated, in
    /// µs: the quantiles of its `fedgate_decision_seconds` summary, which rolls over the
    /// last minute (the run and its warm-up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) p99_us: Option<f64>,
    /// Evaluations made on the request's own thread, and on the blocking pool (the
    /// interpreter's, and compiled ones that outran the inline limit).
    pub(crate) on_request_thread: u64,
    pub(crate) on_pool: u64,
}

#[derive(Serialize, Clone, Copy)]
pub(crate) struct RecordFigures {
    pub(crate) read: u64,
    pub(crate) kept: u64,
}

#[derive(Serialize, Clone, Copy)]
pub(crate) struct AnswerFigures {
    pub(crate) made: u64,
    pub(crate) kept: u64,
}

#[derive(Serialize, Clone, Copy)]
pub(crate) struct StorageFigures {
    pub(crate) commits: u64,
    pub(crate) writes: u64,
    pub(crate) writes_per_request: f64,
    pub(crate) commits_per_request: f64,
}

#[derive(Serialize, Clone, Copy)]
pub(crate) struct ShippingFigures {
    pub(crate) batches: u64,
    pub(crate) events: u64,
    pub(crate) events_per_batch: f64,
}

#[derive(Serialize, Default, Clone, Copy)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    mean: f64,
}

impl Latency {
    pub(super) fn of(mut samples: Vec<Duration>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let at = |p: f64| ms(samples[((samples.len() - 1) as f64 * p).round() as usize]);
        let total: Duration = samples.iter().sum();
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
            mean: ms(total) / samples.len() as f64,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct IngestFigures {
    pub(crate) events_per_batch: usize,
    pub(crate) events_appended: u64,
    pub(crate) events_per_second: f64,
    /// New checkpoints (tree heads) seen in the answers during the window.
    pub(crate) checkpoints: u64,
    pub(crate) checkpoints_per_second: f64,
    /// Longest time between two successive new checkpoints, ms.
    pub(crate) max_checkpoint_interval_ms: f64,
    pub(crate) tree_size: u64,
}

#[derive(Serialize)]
pub(crate) struct ServerUsage {
    pub(crate) name: String,
    pub(crate) pid: u32,
    /// Resident set once the service was up, before any holder was set up (fixtures
    /// loaded, nothing asked yet); absent for a service the bench did not start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) idle_rss_mb: Option<f64>,
    /// VmHWM: the process's peak resident set since it started.
    pub(crate) peak_rss_mb: f64,
    pub(crate) rss_mb: f64,
    /// CPU time the process used during the measured window.
    pub(crate) cpu_seconds: f64,
    /// `cpu_seconds` per second of the window: cores the server kept busy.
    pub(crate) cores_busy: f64,
}

/// The least work the measured operation needs, measured in this process in this run.
#[derive(Serialize)]
pub(crate) struct Floor {
    /// What the floor is made of, in words.
    pub(crate) made_of: String,
    pub(crate) per_request_us: f64,
    /// The floor's throughput on `cores` cores.
    pub(crate) cores: usize,
    pub(crate) per_second: f64,
    /// Measured throughput ÷ the floor's.
    pub(crate) ratio: f64,
    /// The parts, µs each.
    pub(crate) parts_us: BTreeMap<String, f64>,
}

impl Report {
    pub(super) fn text(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        out.push_str(&format!(
            "fedgate bench {}: {} concurrent, {} requests in {:.1} s\n",
            self.scenario, self.concurrency, self.requests, self.seconds
        ));
        out.push_str(&format!(
            "  throughput   {:>10.0} requests/s ({} ok)\n",
            self.requests_per_second, self.ok
        ));
        out.push_str(&format!(
            "  latency ms   p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}\n",
            l.p50, l.p90, l.p99, l.max, l.mean
        ));
        if let Some(s) = &self.server_latency_ms {
            out.push_str(&format!(
                "               as the server timed them: p50 {:.2}  p99 {:.2}\n",
                s.p50, s.p99
            ));
        }
        if let Some(n) = self.patients {
            out.push_str(&format!("  patients     {n} asked for in turn\n"));
        }
        if let Some(c) = &self.challenges {
            out.push_str(&format!(
                "  challenges   {} asked (ms p50 {:.2}  p99 {:.2}), {} offered by the answer before ({:.0} %)\n",
                c.asked,
                c.latency_ms.p50,
                c.latency_ms.p99,
                c.carried,
                hit_percent(c.asked, c.carried)
            ));
        }
        if let Some(i) = &self.ingest {
            out.push_str(&format!(
                "  events       {:>10.0} events/s appended ({} events, {} per batch), tree size {}\n",
                i.events_per_second, i.events_appended, i.events_per_batch, i.tree_size
            ));
            out.push_str(&format!(
                "  checkpoints  {} ({:.1}/s), longest interval {:.0} ms\n",
                i.checkpoints, i.checkpoints_per_second, i.max_checkpoint_interval_ms
            ));
        }
        if let Some(d) = &self.decisions {
            out.push_str(&format!(
                "  decisions    {} evaluated, {} from the decision cache ({:.0} %)\n",
                d.evaluated,
                d.from_cache,
                hit_percent(d.evaluated, d.from_cache)
            ));
            if let (Some(p50), Some(p99)) = (d.p50_us, d.p99_us) {
                out.push_str(&format!(
                    "               as made (cache or evaluated): p50 {p50:.1} µs  p99 {p99:.1} µs\n"
                ));
            }
            out.push_str(&format!(
                "               evaluated on the request's thread {}, on the blocking pool {}\n",
                d.on_request_thread, d.on_pool
            ));
        }
        if let Some(r) = &self.records {
            out.push_str(&format!(
                "  records      {} read from the store, {} copied from those kept parsed ({:.0} %)\n",
                r.read,
                r.kept,
                hit_percent(r.read, r.kept)
            ));
        }
        if let Some(a) = &self.answers {
            out.push_str(&format!(
                "  answers      {} pages made, {} served from those kept ({:.0} %)\n",
                a.made,
                a.kept,
                hit_percent(a.made, a.kept)
            ));
        }
        if let Some(st) = &self.storage {
            out.push_str(&format!(
                "  storage      {} commits carrying {} writes: {:.2} writes and {:.2} commits per request\n",
                st.commits, st.writes, st.writes_per_request, st.commits_per_request
            ));
        }
        if let Some(sh) = &self.shipping {
            out.push_str(&format!(
                "  shipping     {} batches to the log carrying {} events: {:.1} events per batch\n",
                sh.batches, sh.events, sh.events_per_batch
            ));
        }
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!("  errors       {errors}\n"));
        if let Some(s) = &self.server {
            out.push_str(&format!(
                "  {} (pid {})  peak RSS {:.1} MB (idle {}), RSS {:.1} MB, {:.2} cores busy (load generator: {:.2})\n",
                s.name,
                s.pid,
                s.peak_rss_mb,
                s.idle_rss_mb.map(|m| format!("{m:.1} MB")).unwrap_or_else(|| "-".into()),
                s.rss_mb,
                s.cores_busy,
                self.load_generator_cores_busy
            ));
        }
        let f = &self.floor;
        out.push_str(&format!(
            "  floor        {:.1} µs per request ({}) = {:.0}/s on {} cores; measured is {:.3} of it\n",
            f.per_request_us, f.made_of, f.per_second, f.cores, f.ratio
        ));
        if let Some(s) = &self.server {
            if self.requests_per_second > 0.0 {
                let cpu_us = s.cores_busy * 1e6 / self.requests_per_second;
                out.push_str(&format!(
                    "  server CPU   {:.0} µs per request = {:.2}× the floor's {:.0} µs\n",
                    cpu_us,
                    cpu_us / f.per_request_us.max(f64::MIN_POSITIVE),
                    f.per_request_us
                ));
            }
        }
        out
    }
}

/// Hits as a percentage of all lookups (0 when there were none).
fn hit_percent(misses: u64, hits: u64) -> f64 {
    100.0 * hits as f64 / (misses + hits).max(1) as f64
}
