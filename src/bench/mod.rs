//! `hotline bench`: a load generator for the conversation-initiation webhook and `/healthz`.
//!
//! HTTP/1.1 keep-alive over one `reqwest::Client`, a fixed number of workers, callers chosen by
//! a seeded Zipf distribution over the seeded leads plus a share of unknown callers. Every
//! webhook carries a `call_sid` never sent before, so that each one starts a call (as each ring
//! does), unless the instance runs with calls off. The calls scenario also listens to the event
//! stream with many SSE clients, possibly on another instance (see [`sse`]). Store loads
//! and tier hits are read from `/api/monitoring/stats/cache` before and after the measured phase;
//! the answer's `X-Hotline-Source` gives the hit rate per tier as the caller sees it. With
//! `--server-pid`, the instance's CPU time over the measured phase is read from `/proc` as well.
//! `scripts/bench.sh` drives it across scenarios.

pub mod cpu;
pub mod instrumentation;
pub mod sse;
pub mod stats;

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use crate::cache::Source;
use crate::config::DatabaseUrl;

/// The initiation webhook's path (as served by `http::webhooks`).
const INITIATION_PATH: &str = "/webhooks/elevenlabs/conversation-initiation";
pub use stats::{Latencies, Zipf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// GET /healthz: the HTTP stack alone.
    Healthz,
    /// POST the initiation webhook for Zipf-chosen callers.
    Webhook,
    /// `--stampede-requests` requests at once for one caller (run it on a cold instance).
    Stampede,
    /// No server: what recording one webhook's metrics costs, in process, with and without.
    Instrumentation,
    /// Call-heavy: the webhook as in `webhook` (a new call each time) while `--sse-clients`
    /// clients stream `GET /api/events` from `--sse-url`; adds events delivered per second and
    /// each event's latency from its creation to its arrival.
    Calls,
}

impl Scenario {
    fn as_str(self) -> &'static str {
        match self {
            Scenario::Healthz => "healthz",
            Scenario::Webhook => "webhook",
            Scenario::Stampede => "stampede",
            Scenario::Instrumentation => "instrumentation",
            Scenario::Calls => "calls",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the hotline instance under test.
    #[arg(long, env = "BENCH_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, value_enum, default_value = "webhook")]
    pub scenario: Scenario,
    /// A name for this run in the output (default: the scenario's).
    #[arg(long)]
    pub label: Option<String>,
    /// How long the measured phase lasts (healthz, webhook).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration_s: u64,
    /// Concurrent workers, each with one request in flight (healthz, webhook).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,
    /// Send at this many requests per second, on a fixed schedule shared by the workers (open
    /// loop), instead of as fast as they can. The report gives how late requests left against
    /// the schedule: a large lateness means the instance (or the generator) could not keep up,
    /// and its latency figures then hide the wait.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Where the callers are read from: `select` the leads' and their organizations' numbers.
    /// Postgres or SQLite; needed by the webhook and stampede scenarios.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<DatabaseUrl>,
    /// At most this many callers (the Zipf ranks), in a fixed order.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub callers: u64,
    /// Share of requests, in percent, from valid numbers that are not leads.
    #[arg(long, default_value_t = 10.0)]
    pub unknown_pct: f64,
    /// How many distinct unknown callers there are, chosen by the same Zipf law (they call
    /// again, as unknown callers do); 0: a number never seen before every time. Default: a
    /// tenth of the callers.
    #[arg(long)]
    pub unknown_pool: Option<u64>,
    /// The Zipf exponent over callers (1.0: the k-th caller calls 1/k as often as the first).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,
    /// Seed of every random choice: the same seed, the same sequence of callers per worker.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Before measuring, send one request for every known caller (not measured).
    #[arg(long)]
    pub warm_pass: bool,
    /// How many requests the stampede sends at once.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    pub stampede_requests: u64,
    /// How many webhooks' recordings the instrumentation scenario times.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: u64,
    /// The bearer token of the initiation webhook.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// The process id of the instance under test, when it runs on this machine: its CPU time
    /// (user and system, all threads, from `/proc/<pid>/stat`) over the measured phase goes in
    /// the report, in total and per request. Where it cannot be read (no `/proc`), those figures
    /// are null. The stampede's measured phase includes opening its connections.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Calls scenario: how many SSE clients stream `GET /api/events` during the measured phase.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub sse_clients: u64,
    /// Calls scenario: the instance the SSE clients stream from (default: `--url`). Another
    /// instance sharing Redis measures delivery across instances.
    #[arg(long)]
    pub sse_url: Option<String>,
    /// Calls scenario: the admin token `GET /api/events` asks for.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Append the run's JSON object, one per line, to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// A (caller, called organization) pair.
#[derive(Debug, Clone)]
struct Target {
    caller: String,
    called: String,
}

/// The webhooks' call ids (`call_sid`): `CA` and 32 hex digits, a new one for every request.
/// They come from a generator of their own, on a stream per worker, seeded once per run: the
/// seed's sequence of callers stays what it was, and a second run against the same instance
/// starts new calls too instead of updating the first run's.
struct CallIds(ChaCha8Rng);

impl CallIds {
    fn new(run: u64, stream: u64) -> CallIds {
        let mut rng = ChaCha8Rng::seed_from_u64(run);
        rng.set_stream(stream);
        CallIds(rng)
    }

    fn next_id(&mut self) -> String {
        format!(
            "CA{:016x}{:016x}",
            self.0.random::<u64>(),
            self.0.random::<u64>()
        )
    }
}

/// Generator streams of the call ids, per phase (a worker's number is added).
const WARM_IDS: u64 = 1 << 32;
const STAMPEDE_IDS: u64 = 2 << 32;

/// What one worker saw.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u64>,
    /// Paced runs: how late each request left against its schedule.
    lateness_us: Vec<u64>,
    errors: u64,
    sources: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.lateness_us.extend(other.lateness_us);
        self.errors += other.errors;
        for (k, v) in other.sources {
            *self.sources.entry(k).or_default() += v;
        }
    }
}

struct Shared {
    client: reqwest::Client,
    base: String,
    secret: String,
    known: Vec<Target>,
    unknown_called: Vec<String>,
    known_callers: HashSet<String>,
    zipf: Option<Zipf>,
    unknown_share: f64,
    /// Unknown callers who call again, chosen by `unknown_zipf`; empty: a new number each time.
    unknown_pool: Vec<Target>,
    unknown_zipf: Option<Zipf>,
    /// Seeds this run's call ids.
    run_nonce: u64,
}

impl Shared {
    /// A known caller by Zipf rank, or (with the unknown share) a valid number that is no lead.
    fn pick(&self, rng: &mut ChaCha8Rng) -> Target {
        if self.known.is_empty() || rng.random_bool(self.unknown_share) {
            return match &self.unknown_zipf {
                Some(zipf) => self.unknown_pool[zipf.sample(rng)].clone(),
                None => self.unknown(rng),
            };
        }
        let zipf = self.zipf.as_ref().expect("callers were loaded");
        self.known[zipf.sample(rng)].clone()
    }

    /// `size` distinct unknown callers, the same for the same seed.
    fn fill_unknown_pool(&mut self, size: usize, seed: u64, zipf_s: f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0075_6e6b_6e6f_776e);
        let mut seen = HashSet::with_capacity(size);
        while self.unknown_pool.len() < size {
            let target = self.unknown(&mut rng);
            if seen.insert(target.caller.clone()) {
                self.unknown_pool.push(target);
            }
        }
        self.unknown_zipf = Some(Zipf::new(size, zipf_s));
    }

    /// A US number in a known caller's area code, in an exchange the seeder also uses, that is
    /// not a known caller; called at a known organization.
    fn unknown(&self, rng: &mut ChaCha8Rng) -> Target {
        let called = self.unknown_called[rng.random_range(0..self.unknown_called.len())].clone();
        let area = match self.known.get(rng.random_range(0..self.known.len().max(1))) {
            Some(t) if t.caller.len() == 12 && t.caller.starts_with("+1") => &t.caller[2..5],
            _ => "212",
        };
        loop {
            let exchange: u32 = rng.random_range(200..1000);
            if exchange % 100 == 11 || exchange == 555 {
                continue;
            }
            let line: u32 = rng.random_range(0..10_000);
            let caller = format!("+1{area}{exchange:03}{line:04}");
            if !self.known_callers.contains(&caller) {
                return Target { caller, called };
            }
        }
    }

    /// Sends one request and counts its latency; when paced, also how late it left against
    /// `due`, its scheduled time.
    async fn send(
        &self,
        scenario: Scenario,
        target: Option<&Target>,
        call_ids: &mut CallIds,
        due: Option<Instant>,
        tally: &mut Tally,
    ) {
        let started = Instant::now();
        if let Some(due) = due {
            tally
                .lateness_us
                .push(started.saturating_duration_since(due).as_micros() as u64);
        }
        let request = match (scenario, target) {
            (Scenario::Healthz, _) | (_, None) => self.client.get(format!("{}/healthz", self.base)),
            (_, Some(t)) => self
                .client
                .post(format!("{}{INITIATION_PATH}", self.base))
                .bearer_auth(&self.secret)
                .json(&json!({
                    "caller_id": t.caller,
                    "agent_id": "agent_bench",
                    "called_number": t.called,
                    "call_sid": call_ids.next_id(),
                })),
        };
        let outcome = match request.send().await {
            Ok(response) => {
                let ok = response.status().is_success();
                let source = response
                    .headers()
                    .get("x-hotline-source")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match response.bytes().await {
                    Ok(_) if ok => Ok(source),
                    _ => Err(()),
                }
            }
            Err(_) => Err(()),
        };
        tally
            .latencies_us
            .push(started.elapsed().as_micros() as u64);
        match outcome {
            Ok(Some(source)) => *tally.sources.entry(source).or_default() += 1,
            Ok(None) => {}
            Err(()) => tally.errors += 1,
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !(0.0..=100.0).contains(&args.unknown_pct) {
        bail!("--unknown-pct must be from 0 to 100");
    }
    if !(args.zipf_s.is_finite() && args.zipf_s >= 0.0) {
        bail!("--zipf-s must be 0 or more");
    }
    if args.scenario == Scenario::Instrumentation {
        let report = instrumentation::measure(args.iterations);
        println!("{}", instrumentation::human_line(&report));
        return write_json(args.json_out.as_deref(), &report);
    }
    let base = args.url.trim_end_matches('/').to_string();
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| args.scenario.as_str().to_string());
    let pool = match args.scenario {
        Scenario::Stampede => args.stampede_requests as usize,
        _ => args.concurrency as usize,
    };
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;

    let needs_callers = args.scenario != Scenario::Healthz;
    let (known, organizations) = if needs_callers {
        let url = args
            .database_url
            .as_ref()
            .context("--database-url (DATABASE_URL) is needed to read the callers")?;
        load_callers(url, args.callers).await?
    } else {
        (Vec::new(), Vec::new())
    };
    if needs_callers && (known.is_empty() || organizations.is_empty()) {
        bail!("the database has no leads to call as; run `hotline seed` first");
    }
    let secret = match (needs_callers, &args.webhook_secret) {
        (true, None) => bail!("--webhook-secret (WEBHOOK_SECRET) is needed for the webhook"),
        (_, s) => s.clone().unwrap_or_default(),
    };
    let known_callers = known.iter().map(|t| t.caller.clone()).collect();
    let zipf = (!known.is_empty()).then(|| Zipf::new(known.len(), args.zipf_s));
    let mut shared = Shared {
        client,
        base,
        secret,
        known,
        unknown_called: organizations,
        known_callers,
        zipf,
        unknown_share: args.unknown_pct / 100.0,
        unknown_pool: Vec::new(),
        unknown_zipf: None,
        run_nonce: rand::random(),
    };
    if needs_callers && args.unknown_pct > 0.0 {
        let size = args
            .unknown_pool
            .unwrap_or(shared.known.len() as u64 / 10)
            .max(1) as usize;
        if args.unknown_pool != Some(0) {
            shared.fill_unknown_pool(size, args.seed, args.zipf_s);
        }
    }
    let shared = Arc::new(shared);

    // The instance must answer before anything is measured.
    shared
        .client
        .get(format!("{}/healthz", shared.base))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("{}/healthz does not answer", shared.base))?;

    if args.warm_pass && needs_callers {
        let started = Instant::now();
        let tally = warm_pass(&shared, args.concurrency as usize).await;
        eprintln!(
            "bench: warm pass over {} callers in {:.1} s ({} errors)",
            shared.known.len(),
            started.elapsed().as_secs_f64(),
            tally.errors
        );
    }

    let listeners = match args.scenario {
        Scenario::Calls => {
            let token = args
                .admin_token
                .as_deref()
                .context("--admin-token (ADMIN_TOKEN) is needed to stream /api/events")?;
            let url = args.sse_url.as_deref().unwrap_or(&shared.base);
            let listeners = sse::Listeners::connect(url, token, args.sse_clients as usize).await?;
            eprintln!(
                "bench: {} SSE clients streaming {}",
                args.sse_clients, listeners.url
            );
            Some(listeners)
        }
        _ => None,
    };

    let before = cache_stats(&shared).await?;
    let meter = args.server_pid.map(cpu::Meter::start);
    if let Some(listeners) = &listeners {
        listeners.start();
    }
    let started = Instant::now();
    let (tally, concurrency) = match args.scenario {
        Scenario::Stampede => {
            let n = args.stampede_requests as usize;
            (stampede(&shared, n, args.seed).await, n)
        }
        scenario => {
            let c = args.concurrency as usize;
            let until = started + Duration::from_secs(args.duration_s);
            let pace = args.rate.map(|rate| Pace::new(started, rate));
            (load(&shared, scenario, c, until, pace, args.seed).await, c)
        }
    };
    let elapsed = started.elapsed();
    let server_cpu = match meter.map(cpu::Meter::stop) {
        Some(Ok(cpu)) => Some(cpu),
        Some(Err(why)) => {
            eprintln!("bench: the server's CPU time is not measured: {why}");
            None
        }
        None => None,
    };
    // The events still on their way arrive (and are timed) before the streams close.
    let sse = match listeners {
        Some(listeners) => {
            let url = listeners.url.clone();
            let answered = (tally.latencies_us.len() as u64).saturating_sub(tally.errors);
            Some(sse::report(
                &url,
                listeners.finish().await,
                elapsed,
                answered,
            ))
        }
        None => None,
    };
    // Let loads started by the last requests finish counting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = cache_stats(&shared).await?;

    let mut report = build_report(
        &label,
        args.scenario,
        &args,
        concurrency,
        elapsed,
        server_cpu,
        tally,
        &before,
        &after,
    );
    if let Some(sse) = sse {
        report["sse"] = sse;
    }
    println!("{}", human_line(&report));
    write_json(args.json_out.as_deref(), &report)
}

/// Appends the report, one JSON object per line, to `path` when there is one.
fn write_json(path: Option<&std::path::Path>, report: &Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{report}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The leads' numbers with their organizations' numbers, in a fixed order; and the
/// organizations' numbers.
async fn load_callers(url: &DatabaseUrl, limit: u64) -> anyhow::Result<(Vec<Target>, Vec<String>)> {
    const CALLERS: &str = "select l.phone_number, o.phone_number from leads l \
         join organizations o on o.id = l.organization_id \
         order by l.phone_number, o.phone_number limit $1";
    const ORGS: &str = "select phone_number from organizations order by phone_number";
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let opening = || format!("opening {}", url.redacted());
    let (rows, orgs): (Vec<(String, String)>, Vec<(String,)>) = if url.is_postgres() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url.as_str())
            .await
            .with_context(opening)?;
        let rows = sqlx::query_as(CALLERS).bind(limit).fetch_all(&pool).await;
        let orgs = sqlx::query_as(ORGS).fetch_all(&pool).await;
        pool.close().await;
        (
            rows.context("reading the callers")?,
            orgs.context("reading the organizations")?,
        )
    } else {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(url.as_str())
            .await
            .with_context(opening)?;
        let rows = sqlx::query_as(CALLERS).bind(limit).fetch_all(&pool).await;
        let orgs = sqlx::query_as(ORGS).fetch_all(&pool).await;
        pool.close().await;
        (
            rows.context("reading the callers")?,
            orgs.context("reading the organizations")?,
        )
    };
    let known = rows
        .into_iter()
        .map(|(caller, called)| Target { caller, called })
        .collect();
    Ok((known, orgs.into_iter().map(|(p,)| p).collect()))
}

/// A fixed schedule of requests shared by the workers: the n-th is due at `start + n / rate`.
struct Pace {
    start: Instant,
    interval: Duration,
    next: AtomicU64,
}

impl Pace {
    fn new(start: Instant, rate: f64) -> Arc<Pace> {
        Arc::new(Pace {
            start,
            interval: Duration::from_secs_f64(1.0 / rate),
            next: AtomicU64::new(0),
        })
    }

    /// The due time of the next request nobody has taken yet.
    fn take(&self) -> Instant {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.start + self.interval.mul_f64(n as f64)
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => Ok(r),
        _ => Err("a rate in requests per second, above 0 and at most 1000000".into()),
    }
}

/// `concurrency` workers, each looping until `until`: back to back, or on `pace`'s schedule.
async fn load(
    shared: &Arc<Shared>,
    scenario: Scenario,
    concurrency: usize,
    until: Instant,
    pace: Option<Arc<Pace>>,
    seed: u64,
) -> Tally {
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let shared = Arc::clone(shared);
        let pace = pace.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(w as u64));
            let mut call_ids = CallIds::new(shared.run_nonce, w as u64);
            let mut tally = Tally::default();
            loop {
                let due = match &pace {
                    Some(pace) => {
                        let due = pace.take();
                        if due >= until {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                        Some(due)
                    }
                    None if Instant::now() < until => None,
                    None => break,
                };
                let target = (scenario != Scenario::Healthz).then(|| shared.pick(&mut rng));
                shared
                    .send(scenario, target.as_ref(), &mut call_ids, due, &mut tally)
                    .await;
            }
            tally
        }));
    }
    join(workers).await
}

/// One request per caller (the known ones and the pool of unknown ones), spread over
/// `concurrency` workers, the least frequent first: the most frequent callers are then the most
/// recently cached when the measurement starts (tier 1 keeps nothing past `L1_MAX_AGE_S`).
async fn warm_pass(shared: &Arc<Shared>, concurrency: usize) -> Tally {
    let order: Arc<Vec<Target>> = Arc::new(warm_order(&shared.known, &shared.unknown_pool));
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let shared = Arc::clone(shared);
        let order = Arc::clone(&order);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut call_ids = CallIds::new(shared.run_nonce, WARM_IDS + w as u64);
            for target in order.iter().skip(w).step_by(concurrency) {
                shared
                    .send(
                        Scenario::Webhook,
                        Some(target),
                        &mut call_ids,
                        None,
                        &mut tally,
                    )
                    .await;
            }
            tally
        }));
    }
    join(workers).await
}

/// Every caller once, interleaving known and unknown ones by rank, the lowest ranks last.
fn warm_order(known: &[Target], unknown: &[Target]) -> Vec<Target> {
    let mut order: Vec<(usize, &Target)> = known
        .iter()
        .enumerate()
        .chain(unknown.iter().enumerate())
        .collect();
    order.sort_by_key(|(rank, _)| std::cmp::Reverse(*rank));
    order.into_iter().map(|(_, t)| t.clone()).collect()
}

/// `n` requests for one caller, released together; connections are opened beforehand with
/// `/healthz`, so that the requests meet the instance at once rather than queue on connects.
async fn stampede(shared: &Arc<Shared>, n: usize, seed: u64) -> Tally {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // A caller far down the ranks: nothing earlier in the run asked for it.
    let target = shared.known[rng.random_range(shared.known.len() / 2..shared.known.len())].clone();
    let gate = Arc::new(tokio::sync::Barrier::new(n));
    let mut workers = Vec::with_capacity(n);
    for w in 0..n {
        let shared = Arc::clone(shared);
        let gate = Arc::clone(&gate);
        let target = target.clone();
        workers.push(tokio::spawn(async move {
            let mut call_ids = CallIds::new(shared.run_nonce, STAMPEDE_IDS + w as u64);
            let mut warmup = Tally::default();
            shared
                .send(Scenario::Healthz, None, &mut call_ids, None, &mut warmup)
                .await;
            gate.wait().await;
            let mut tally = Tally::default();
            shared
                .send(
                    Scenario::Stampede,
                    Some(&target),
                    &mut call_ids,
                    None,
                    &mut tally,
                )
                .await;
            tally
        }));
    }
    join(workers).await
}

async fn join(workers: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for w in workers {
        match w.await {
            Ok(t) => total.merge(t),
            Err(_) => total.errors += 1,
        }
    }
    total
}

async fn cache_stats(shared: &Shared) -> anyhow::Result<Value> {
    let url = format!("{}/api/monitoring/stats/cache", shared.base);
    let value = shared
        .client
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("reading {url}"))?
        .json::<Value>()
        .await
        .with_context(|| format!("reading {url}"))?;
    Ok(value)
}

/// `after - before` of one counter, per cache kind.
fn delta_by_kind(before: &Value, after: &Value, counter: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Some(kinds) = after.as_object() {
        for (kind, a) in kinds {
            let Some(a) = a.get(counter).and_then(Value::as_u64) else {
                continue;
            };
            let b = before
                .get(kind)
                .and_then(|v| v.get(counter))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            out.insert(kind.clone(), a.saturating_sub(b));
        }
    }
    out
}

fn ms(us: Option<u64>) -> Value {
    us.map_or(Value::Null, |v| json!(v as f64 / 1000.0))
}

fn pct(part: u64, whole: u64) -> Value {
    if whole == 0 {
        Value::Null
    } else {
        json!(part as f64 * 100.0 / whole as f64)
    }
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    label: &str,
    scenario: Scenario,
    args: &BenchArgs,
    concurrency: usize,
    elapsed: Duration,
    server_cpu: Option<Duration>,
    tally: Tally,
    before: &Value,
    after: &Value,
) -> Value {
    let requests = tally.latencies_us.len() as u64;
    let errors = tally.errors;
    let sources = tally.sources;
    let latencies = Latencies::from_unsorted(tally.latencies_us);
    let lateness = (!tally.lateness_us.is_empty())
        .then(|| Latencies::from_unsorted(tally.lateness_us))
        .map_or(Value::Null, |l| {
            json!({
                "p50": ms(l.percentile(50.0)),
                "p99": ms(l.percentile(99.0)),
                "max": ms(l.max()),
            })
        });
    let answered: u64 = sources.values().sum();
    let source_count = |s: Source| sources.get(s.as_str()).copied().unwrap_or(0);

    let loads = delta_by_kind(before, after, "loads");
    let loads_total: u64 = loads.values().sum();
    let sum = |counter: &str| -> u64 { delta_by_kind(before, after, counter).values().sum() };
    let (hits_l1, hits_l2, misses, stale) =
        (sum("hits_l1"), sum("hits_l2"), sum("misses"), sum("stale"));
    let lookups = hits_l1 + hits_l2 + misses + stale;
    let secs = elapsed.as_secs_f64();
    let cpu_s = server_cpu.map(|d| d.as_secs_f64());

    let mut source_map = Map::new();
    for s in Source::ALL {
        source_map.insert(s.as_str().into(), json!(source_count(s)));
    }
    json!({
        "label": label,
        "scenario": scenario.as_str(),
        "concurrency": concurrency,
        "target_rps": args.rate,
        "elapsed_s": secs,
        "requests": requests,
        "errors": errors,
        "rps": if secs > 0.0 { requests as f64 / secs } else { 0.0 },
        "latency_ms": {
            "p50": ms(latencies.percentile(50.0)),
            "p95": ms(latencies.percentile(95.0)),
            "p99": ms(latencies.percentile(99.0)),
            "max": ms(latencies.max()),
            "mean": latencies.mean().map_or(Value::Null, |m| json!(m / 1000.0)),
        },
        // Paced runs: how late requests left against their schedule (timer granularity is a
        // millisecond; more than that means the generator was starved of workers or CPU).
        "schedule_lateness_ms": lateness,
        "zipf_s": args.zipf_s,
        "unknown_pct": args.unknown_pct,
        "seed": args.seed,
        // The answers' X-Hotline-Source: the least fresh tier of the lookups behind each answer.
        "sources": source_map,
        "client_hit_pct": {
            "l1": pct(source_count(Source::L1), answered),
            "l2": pct(source_count(Source::L2), answered),
            "db": pct(source_count(Source::Db), answered),
        },
        // The instance's own counters, per lookup (an answer makes up to three lookups).
        "server": {
            "lookups": lookups,
            "hits_l1": hits_l1,
            "hits_l2": hits_l2,
            "misses": misses,
            "stale": stale,
            "l1_hit_pct": pct(hits_l1, lookups),
            "l2_hit_pct": pct(hits_l2, lookups),
            "loads": loads,
            "loads_total": loads_total,
            "loads_per_request": if requests > 0 { json!(loads_total as f64 / requests as f64) } else { Value::Null },
            // Its CPU time (user and system) over the measured phase, with `--server-pid`: in
            // seconds, per request in microseconds, and as cores kept busy on average.
            "cpu_s": cpu_s,
            "cpu_us_per_request": match cpu_s {
                Some(s) if requests > 0 => json!(s * 1e6 / requests as f64),
                _ => Value::Null,
            },
            "cpu_cores": match cpu_s {
                Some(s) if secs > 0.0 => json!(s / secs),
                _ => Value::Null,
            },
        },
    })
}

fn human_line(r: &Value) -> String {
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
    let lat = &r["latency_ms"];
    format!(
        "{label}: {req} requests, {err} errors, {rps:.0} req/s, p50 {p50} ms, p95 {p95} ms, p99 {p99} ms, max {max} ms, L1 {l1}%, L2 {l2}%, loads/request {lpr}, loads {loads}",
        label = r["label"].as_str().unwrap_or(""),
        req = r["requests"],
        err = r["errors"],
        rps = r["rps"].as_f64().unwrap_or(0.0),
        p50 = f(&lat["p50"]),
        p95 = f(&lat["p95"]),
        p99 = f(&lat["p99"]),
        max = f(&lat["max"]),
        l1 = f(&r["client_hit_pct"]["l1"]),
        l2 = f(&r["client_hit_pct"]["l2"]),
        lpr = r["server"]["loads_per_request"].as_f64().map_or("-".into(), |x| format!("{x:.4}")),
        loads = r["server"]["loads"],
    ) + &match r["server"]["cpu_us_per_request"].as_f64() {
        Some(us) => format!(
            ", server CPU {us:.1} µs/request ({} cores busy)",
            f(&r["server"]["cpu_cores"])
        ),
        None => String::new(),
    } + &match r["schedule_lateness_ms"].as_object() {
        Some(l) => format!(
            ", left late against the schedule: p99 {} ms, max {} ms",
            f(&l["p99"]),
            f(&l["max"])
        ),
        None => String::new(),
    } + &match r["sse"].as_object() {
        Some(sse) => format!(
            "; SSE: {clients} clients, {events} events ({per_s} events/s), latency p50 {p50} ms, p99 {p99} ms, max {max} ms, call.started delivered {delivered}%, {disconnected} disconnected",
            clients = sse["clients"],
            events = sse["events"],
            per_s = sse["events_per_s"].as_f64().map_or("-".into(), |x| format!("{x:.0}")),
            p50 = f(&sse["latency_ms"]["p50"]),
            p99 = f(&sse["latency_ms"]["p99"]),
            max = f(&sse["latency_ms"]["max"]),
            delivered = f(&sse["call_started_delivered_pct"]),
            disconnected = sse["disconnected"],
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_are_per_kind_and_skip_non_kinds() {
        let before = json!({"lead": {"loads": 3}, "organization": {"loads": 1}, "l1_entries": 5});
        let after = json!({"lead": {"loads": 10}, "organization": {"loads": 1}, "context": {"loads": 2}, "l1_entries": 9});
        let d = delta_by_kind(&before, &after, "loads");
        assert_eq!(d.get("lead"), Some(&7));
        assert_eq!(d.get("organization"), Some(&0));
        assert_eq!(d.get("context"), Some(&2));
        assert!(!d.contains_key("l1_entries"));
    }

    fn args(extra: &[&str]) -> BenchArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let argv = ["bench"].iter().chain(extra);
        <Cli as clap::Parser>::parse_from(argv).bench
    }

    fn tally(requests: u64) -> Tally {
        Tally {
            latencies_us: vec![1_000; requests as usize],
            ..Tally::default()
        }
    }

    #[test]
    fn the_servers_cpu_time_is_reported_per_request() {
        let report = build_report(
            "b_warm",
            Scenario::Webhook,
            &args(&["--server-pid", "1"]),
            8,
            Duration::from_secs(4),
            Some(Duration::from_millis(2_500)),
            tally(10_000),
            &json!({}),
            &json!({}),
        );
        let server = &report["server"];
        assert_eq!(server["cpu_s"], json!(2.5));
        assert_eq!(server["cpu_us_per_request"], json!(250.0));
        assert_eq!(server["cpu_cores"], json!(0.625));
        assert!(human_line(&report).contains("server CPU 250.0 µs/request"));
    }

    #[test]
    fn without_the_servers_cpu_time_the_fields_are_null() {
        for (cpu, requests) in [(None, 10), (Some(Duration::from_secs(1)), 0)] {
            let report = build_report(
                "a_healthz",
                Scenario::Healthz,
                &args(&[]),
                8,
                Duration::from_secs(4),
                cpu,
                tally(requests),
                &json!({}),
                &json!({}),
            );
            assert!(report["server"]["cpu_us_per_request"].is_null());
            assert!(!human_line(&report).contains("server CPU"));
        }
    }

    fn target(caller: &str) -> Target {
        Target {
            caller: caller.into(),
            called: "+13125550100".into(),
        }
    }

    /// One known caller, and every request from an unknown one.
    fn all_unknown() -> Shared {
        Shared {
            client: reqwest::Client::new(),
            base: String::new(),
            secret: String::new(),
            known: vec![target("+12125550100")],
            unknown_called: vec!["+13125550100".into()],
            known_callers: ["+12125550100".to_string()].into_iter().collect(),
            zipf: Some(Zipf::new(1, 1.0)),
            unknown_share: 1.0,
            unknown_pool: Vec::new(),
            unknown_zipf: None,
            run_nonce: 0,
        }
    }

    #[test]
    fn unknown_callers_are_valid_and_not_leads() {
        let shared = all_unknown();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let t = shared.pick(&mut rng);
            assert!(t.caller.starts_with("+1212") && t.caller.len() == 12);
            assert_ne!(t.caller, "+12125550100");
            assert!(
                crate::domain::Phone::from_caller_id(&t.caller, crate::domain::Region::default())
                    .is_some(),
                "{} does not parse",
                t.caller
            );
        }
    }

    #[test]
    fn a_pool_of_unknown_callers_repeats_and_is_the_same_for_a_seed() {
        let mut shared = all_unknown();
        let callers = |s: &Shared| -> Vec<String> {
            s.unknown_pool.iter().map(|t| t.caller.clone()).collect()
        };
        shared.fill_unknown_pool(5, 9, 1.0);
        let first = callers(&shared);
        let pool: HashSet<String> = first.iter().cloned().collect();
        assert_eq!(pool.len(), 5, "distinct numbers");
        assert!(!pool.contains("+12125550100"), "none of them a lead");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let picked: HashSet<String> = (0..500).map(|_| shared.pick(&mut rng).caller).collect();
        assert!(picked.is_subset(&pool) && picked.len() > 1, "{picked:?}");
        shared.unknown_pool.clear();
        shared.fill_unknown_pool(5, 9, 1.0);
        let again = callers(&shared);
        assert_eq!(first, again, "the same seed, the same pool");
    }

    #[test]
    fn every_request_gets_a_call_id_of_its_own() {
        let mut ids = HashSet::new();
        for stream in [0, 1, WARM_IDS, STAMPEDE_IDS] {
            let mut call_ids = CallIds::new(42, stream);
            for _ in 0..100 {
                let id = call_ids.next_id();
                assert_eq!(id.len(), 34, "{id}");
                assert!(id.starts_with("CA"), "{id}");
                assert!(id[2..].bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
                assert!(crate::calls::model::valid_call_id(&id), "{id}");
                assert!(ids.insert(id), "a call id came twice");
            }
        }
        let again = CallIds::new(43, 0).next_id();
        assert!(!ids.contains(&again), "another run, other ids");
    }

    #[test]
    fn the_warm_pass_ends_with_the_most_frequent_callers() {
        let known = [target("+1a0"), target("+1a1"), target("+1a2")];
        let unknown = [target("+1u0"), target("+1u1")];
        let order: Vec<String> = warm_order(&known, &unknown)
            .into_iter()
            .map(|t| t.caller)
            .collect();
        assert_eq!(order.len(), 5);
        assert_eq!(order[0], "+1a2", "the least frequent first");
        let last: HashSet<&str> = order[3..].iter().map(String::as_str).collect();
        assert_eq!(last, HashSet::from(["+1a0", "+1u0"]), "rank 0 last");
    }
}
