//! Configuration: clap structs whose every flag also reads an environment variable, validated
//! once at start. A bad value stops the process with one line naming the variable.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::Region;

#[derive(Debug, Parser)]
#[command(
    name = "hotline",
    version,
    about = "A read-through cache for voice-agent backends"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run migrations, then serve HTTP (the default).
    Serve(Box<ServeArgs>),
    /// Apply migrations and exit.
    Migrate(DatabaseArgs),
    /// Fill the store with realistic demo data.
    Seed(SeedArgs),
    /// Production-readiness checks against a running instance.
    Validate(ValidateArgs),
    /// Drain a running instance (its /healthz answers 503), e.g. from a preStop hook.
    Drain(DrainArgs),
    /// Load-test a running instance (see scripts/bench.sh).
    Bench(Box<crate::bench::BenchArgs>),
    /// Print the OpenAPI 3.1 document of the HTTP API (as `GET /api/openapi.json` serves it).
    Openapi,
}

/// A secret from the environment: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// 32 random bytes, hex-encoded.
    pub fn generate() -> Secret {
        Secret(hex::encode(rand::random::<[u8; 32]>()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    let s = s.trim();
    if s.len() < 16 {
        return Err("must be at least 16 characters".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".into());
    }
    Ok(Secret(s.to_string()))
}

/// A database URL, validated by the driver's own parser. `Debug` hides the password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_postgres(&self) -> bool {
        self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")
    }

    /// The URL with any password replaced, for logs.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            sqlx::postgres::PgConnectOptions::from_str(s)
                .map_err(|_| "is not a valid postgres:// URL".to_string())?;
        } else if s.starts_with("sqlite:") {
            sqlx::sqlite::SqliteConnectOptions::from_str(s)
                .map_err(|_| "is not a valid sqlite:// URL".to_string())?;
        } else {
            return Err("must start with postgres://, postgresql:// or sqlite://".into());
        }
        Ok(DatabaseUrl(s.to_string()))
    }
}

/// Replaces the password in `scheme://user:password@host/...` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A URL whose scheme must be one of a few.
#[derive(Clone)]
pub struct SchemeUrl(String);

impl SchemeUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SchemeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

fn parse_scheme_url(s: &str, schemes: &[&str]) -> Result<SchemeUrl, String> {
    let s = s.trim();
    let ok = schemes.iter().any(|scheme| {
        s.strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
    });
    if ok {
        Ok(SchemeUrl(s.to_string()))
    } else {
        Err(format!(
            "must be a URL starting with {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ))
    }
}

fn parse_redis_url(s: &str) -> Result<SchemeUrl, String> {
    let url = parse_scheme_url(s, &["redis", "rediss"])?;
    // With RESP3, the client reconnects on its own when a connection drops, without any command
    // failing: hotline would not know to verify the server behind the new connection (a
    // restart with old data, a failover) before trusting it. RESP2 reports the drop.
    if s.to_ascii_lowercase().contains("protocol=resp3") {
        return Err("must not ask for protocol=resp3 (hotline verifies every new Redis connection, which needs RESP2)".into());
    }
    Ok(url)
}

fn parse_http_url(s: &str) -> Result<SchemeUrl, String> {
    parse_scheme_url(s, &["http", "https"])
}

fn parse_seconds(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("`{s}` is not a whole number of seconds (0 or more)"))
}

fn parse_whole(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("`{s}` is not a whole number (0 or more)"))
}

fn parse_positive(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a whole number greater than 0")),
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(n) if (0.0..=100.0).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a percentage from 0 to 100")),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{s}` is not true or false")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `postgres://…` (Postgres or Supabase) or `sqlite://…` (embedded, created if missing).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://hotline.db")]
    pub database_url: DatabaseUrl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// `text` or `json`.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        ignore_case = true
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub organizations: u32,
    /// Total number of leads, spread over the organizations.
    #[arg(long, default_value_t = 1_000)]
    pub leads: u32,
    #[arg(long, default_value_t = 3)]
    pub conversations_per_lead: u32,
    /// The same seed always produces the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Everything `hotline validate` reads.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Base URL of the running instance, e.g. `http://127.0.0.1:8080`.
    #[arg(long, env = "HOTLINE_URL", value_parser = parse_http_url)]
    pub url: SchemeUrl,
    /// The instance's admin token (for the test organization the checks work in).
    #[arg(long, env = "ADMIN_TOKEN", value_parser = parse_secret, hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// The instance's initiation webhook secret.
    #[arg(long, env = "WEBHOOK_SECRET", value_parser = parse_secret, hide_env_values = true)]
    pub webhook_secret: Option<Secret>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// `warm_latency` passes when the client-side p99 is at most this many milliseconds.
    #[arg(long, default_value_t = 5.0)]
    pub latency_target_ms: f64,
}

/// Everything `hotline drain` reads.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Base URL of the instance to drain: the instance itself, never a load balancer (whichever
    /// instance answers there is the one drained).
    #[arg(long, env = "HOTLINE_URL", default_value = "http://127.0.0.1:8080", value_parser = parse_http_url)]
    pub url: SchemeUrl,
    /// The instance's admin token (required).
    #[arg(long, env = "ADMIN_TOKEN", value_parser = parse_secret, hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Then wait this many seconds before exiting, so that load balancers see /healthz fail
    /// before the instance is stopped (waited even when the drain failed).
    #[arg(long, env = "DRAIN_WAIT_S", default_value = "0", value_parser = parse_seconds)]
    pub wait_s: u64,
    /// How long the whole drain (finding the instance, sending the message, its ack) may
    /// take, in seconds.
    #[arg(long, env = "DRAIN_ACK_TIMEOUT_S", default_value = "10", value_parser = parse_positive)]
    pub ack_timeout_s: u64,
}

impl DrainArgs {
    /// The admin token, or the one line that says it is missing.
    pub fn admin_token(&self) -> Result<&Secret, ConfigError> {
        self.admin_token.as_ref().ok_or_else(|| ConfigError {
            env: "ADMIN_TOKEN".into(),
            flag: "admin-token".into(),
            reason: "is required: draining is an admin message".into(),
        })
    }
}

/// Everything `hotline serve` reads.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,

    /// Postgres connection used for LISTEN (defaults to DATABASE_URL; Supabase's transaction
    /// pooler cannot LISTEN).
    #[arg(long, env = "DATABASE_LISTEN_URL")]
    pub database_listen_url: Option<DatabaseUrl>,
    /// How often the LISTEN connection sends itself a heartbeat through the database; hearing
    /// nothing for three of these, it reconnects (a connection that died without closing).
    #[arg(long, env = "LISTEN_HEARTBEAT_MS", default_value = "2000", value_parser = parse_heartbeat_ms)]
    pub listen_heartbeat_ms: u64,

    /// `redis://…` or `rediss://…`; unset: in-process cache only.
    #[arg(long, env = "REDIS_URL", value_parser = parse_redis_url)]
    pub redis_url: Option<SchemeUrl>,
    /// `false` turns Redis off even when REDIS_URL is set.
    #[arg(long, env = "REDIS_ENABLED", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub redis_enabled: bool,
    /// Every Redis key and channel starts with it.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "hotline", value_parser = parse_key_prefix)]
    pub redis_key_prefix: String,

    /// The bound on each Redis command on the request path; slower answers count as failures
    /// of the circuit breaker.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value = "25", value_parser = parse_positive)]
    pub redis_timeout_ms: u64,

    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// Bearer token for the store API and cache administration (required; generated only with
    /// `--demo`).
    #[arg(long, env = "ADMIN_TOKEN", value_parser = parse_secret, hide_env_values = true)]
    pub admin_token: Option<Secret>,
    /// Bearer token ElevenLabs sends to the initiation webhook (required; generated only with
    /// `--demo`).
    #[arg(long, env = "WEBHOOK_SECRET", value_parser = parse_secret, hide_env_values = true)]
    pub webhook_secret: Option<Secret>,
    /// HMAC secret of the post-call webhook; unset: that endpoint answers 503.
    #[arg(long, env = "ELEVENLABS_WEBHOOK_SECRET", value_parser = parse_secret, hide_env_values = true)]
    pub elevenlabs_webhook_secret: Option<Secret>,

    /// Also send the greeting as `conversation_config_override.agent.first_message`.
    #[arg(long, env = "OVERRIDE_FIRST_MESSAGE", default_value = "false", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub override_first_message: bool,
    /// Region for phone numbers written without a country code.
    #[arg(long, env = "DEFAULT_REGION", default_value = "US")]
    pub default_region: Region,
    /// The initiation webhook always answers within this budget.
    #[arg(long, env = "WEBHOOK_DEADLINE_MS", default_value = "250", value_parser = parse_positive)]
    pub webhook_deadline_ms: u64,

    #[command(flatten)]
    pub http: HttpLimitArgs,

    #[command(flatten)]
    pub ttl: TtlArgs,

    /// How long past its TTL a value may be served while the database is failing.
    #[arg(long, env = "STALE_GRACE_S", default_value = "3600", value_parser = parse_seconds)]
    pub stale_grace_s: u64,
    /// In-process cache budget in MiB; 0 turns the in-process tier off.
    #[arg(long, env = "L1_MAX_MB", default_value = "64", value_parser = parse_whole)]
    pub l1_max_mb: u64,
    /// No in-process entry is served more than this long after Redis last confirmed it (without
    /// Redis: after it was loaded).
    #[arg(long, env = "L1_MAX_AGE_S", default_value = "60", value_parser = parse_seconds)]
    pub l1_max_age_s: u64,
    /// How many recently active leads are loaded into the cache at start.
    #[arg(long, env = "WARM_LEADS", default_value = "1000", value_parser = parse_whole)]
    pub warm_leads: u64,

    #[command(flatten)]
    pub alerts: AlertArgs,

    #[command(flatten)]
    pub calls: CallArgs,

    /// Where a post-call event is kept while the database is down.
    #[arg(long, env = "SPOOL_DIR", default_value = "hotline-spool")]
    pub spool_dir: std::path::PathBuf,
    /// The spool's size in MiB: when full, a post-call event that cannot be recorded is
    /// refused with 503 instead of acknowledged. `0` keeps nothing.
    #[arg(long, env = "SPOOL_MAX_MB", default_value = "1024", value_parser = parse_whole)]
    pub spool_max_mb: u64,

    /// Seed a small demo data set when the database is empty, generate ADMIN_TOKEN and
    /// WEBHOOK_SECRET when unset, and print a curl to try.
    #[arg(long)]
    pub demo: bool,
}

/// Calls from ring to hang-up, and this instance's name on the event bus.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// `false`: no call is created, and `/api/calls*` answers 503 (the event bus still carries
    /// alerts, instances and admin messages).
    #[arg(long, env = "CALLS_ENABLED", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub calls_enabled: bool,
    /// How long a call (and its events) is kept after its last change, in seconds.
    #[arg(long, env = "CALL_TTL_S", default_value = "3600", value_parser = parse_positive)]
    pub call_ttl_s: u64,
    /// Events kept per call for replay (the global stream keeps ten times as many).
    #[arg(long, env = "CALL_EVENTS_MAX", default_value = "1000", value_parser = parse_events_max)]
    pub call_events_max: u64,
    /// This instance's name in events (default: hostname, pid and a random suffix).
    #[arg(long, env = "INSTANCE_ID", value_parser = parse_instance_id)]
    pub instance_id: Option<String>,
    /// How often this instance announces itself, in seconds; it is gone after 3 missed beats.
    #[arg(long, env = "HEARTBEAT_INTERVAL_S", default_value = "5", value_parser = parse_heartbeat_s)]
    pub heartbeat_interval_s: u64,
}

fn parse_heartbeat_s(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=300).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not a whole number of seconds from 1 to 300"
        )),
    }
}

impl CallArgs {
    /// `INSTANCE_ID`, or a name unique to this process.
    pub fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(crate::monitoring::default_instance_id)
    }
}

fn parse_events_max(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a whole number from 1 to 100000")),
    }
}

fn parse_instance_id(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 128 || !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be 1 to 128 visible ASCII characters".into());
    }
    Ok(s.to_string())
}

fn parse_heartbeat_ms(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (50..=60_000).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not a whole number of milliseconds from 50 to 60000"
        )),
    }
}

fn parse_key_prefix(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be 1 to 64 visible ASCII characters".into());
    }
    Ok(s.to_string())
}

/// What one client may make the server hold: time, connections, request bodies in memory.
#[derive(Debug, Clone, Args)]
pub struct HttpLimitArgs {
    /// A request's headers must arrive within this many seconds of the connection waiting for
    /// them (also how long an idle keep-alive connection stays open).
    #[arg(long, env = "HEADER_READ_TIMEOUT_S", default_value = "10", value_parser = parse_positive)]
    pub header_read_timeout_s: u64,
    /// A request's body must arrive in full within this many seconds of its headers.
    #[arg(long, env = "BODY_TIMEOUT_S", default_value = "15", value_parser = parse_positive)]
    pub body_timeout_s: u64,
    /// Open connections at most; further ones wait in the listen backlog until one closes.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "512", value_parser = parse_positive)]
    pub max_connections: u64,
    /// MiB of request bodies held in memory at once, across all requests; a request that
    /// would go past it is refused with 503.
    #[arg(long, env = "BODY_BUDGET_MB", default_value = "64", value_parser = parse_budget_mb)]
    pub body_budget_mb: u64,
}

fn parse_budget_mb(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=64 * 1024).contains(&n) => Ok(n),
        _ => Err(format!(
            "`{s}` is not a whole number of MiB from 1 to 65536"
        )),
    }
}

/// Per-kind time to live, in seconds.
#[derive(Debug, Clone, Args)]
pub struct TtlArgs {
    #[arg(long, env = "TTL_LEAD_S", default_value = "900", value_parser = parse_seconds)]
    pub ttl_lead_s: u64,
    #[arg(long, env = "TTL_ORG_S", default_value = "1800", value_parser = parse_seconds)]
    pub ttl_org_s: u64,
    #[arg(long, env = "TTL_CONTEXT_S", default_value = "600", value_parser = parse_seconds)]
    pub ttl_context_s: u64,
    #[arg(long, env = "TTL_SUMMARY_S", default_value = "1200", value_parser = parse_seconds)]
    pub ttl_summary_s: u64,
    #[arg(long, env = "TTL_GREETING_S", default_value = "300", value_parser = parse_seconds)]
    pub ttl_greeting_s: u64,
    #[arg(long, env = "TTL_HISTORY_S", default_value = "600", value_parser = parse_seconds)]
    pub ttl_history_s: u64,
    #[arg(long, env = "TTL_NEGATIVE_S", default_value = "60", value_parser = parse_seconds)]
    pub ttl_negative_s: u64,
}

#[derive(Debug, Clone, Args)]
pub struct AlertArgs {
    #[arg(long, env = "ALERT_HIT_RATE_MIN_PCT", default_value = "50", value_parser = parse_percent)]
    pub alert_hit_rate_min_pct: f64,
    #[arg(long, env = "ALERT_RESPONSE_MS_MAX", default_value = "100", value_parser = parse_positive)]
    pub alert_response_ms_max: u64,
    #[arg(long, env = "ALERT_ERROR_RATE_MAX_PCT", default_value = "5", value_parser = parse_percent)]
    pub alert_error_rate_max_pct: f64,
    #[arg(long, env = "ALERT_REDIS_DOWN_S", default_value = "30", value_parser = parse_positive)]
    pub alert_redis_down_s: u64,
    #[arg(long, env = "ALERT_MIN_SAMPLES", default_value = "20", value_parser = parse_whole)]
    pub alert_min_samples: u64,
    #[arg(long, env = "ALERT_HOLD_S", default_value = "10", value_parser = parse_seconds)]
    pub alert_hold_s: u64,
    #[arg(long, env = "ALERT_WEBHOOK_URL", value_parser = parse_http_url)]
    pub alert_webhook_url: Option<SchemeUrl>,
}

impl ServeArgs {
    pub fn webhook_deadline(&self) -> Duration {
        Duration::from_millis(self.webhook_deadline_ms)
    }

    pub fn spool_max_bytes(&self) -> u64 {
        self.spool_max_mb.saturating_mul(1024 * 1024)
    }
}

impl Cli {
    /// Parses the command line and environment. With no subcommand, `serve` is assumed.
    /// A value error becomes one line naming the variable (clap's own output spans several).
    pub fn parse_or_exit() -> Command {
        Self::parse_from_or_exit(std::env::args_os())
    }

    pub fn parse_from_or_exit<I, T>(args: I) -> Command
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        // `hotline` and `hotline --listen-addr …` mean `hotline serve …`.
        let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
        let is_meta = matches!(first, "-h" | "--help" | "-V" | "--version" | "help");
        if args.len() <= 1 || (first.starts_with('-') && !is_meta) {
            args.insert(1.min(args.len()), "serve".into());
        }
        let subcommand = args.get(1).and_then(|a| a.to_str()).map(str::to_string);
        let parsed = Cli::try_parse_from(args).and_then(|c| {
            c.command.ok_or_else(|| {
                use clap::CommandFactory;
                Cli::command().error(
                    clap::error::ErrorKind::MissingSubcommand,
                    "a subcommand is required",
                )
            })
        });
        parsed.unwrap_or_else(|e| exit_with(e, subcommand.as_deref()))
    }
}

/// A setting that stops the process at start: printed as one line naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {env} (--{flag}): {reason}")]
pub struct ConfigError {
    pub env: String,
    pub flag: String,
    pub reason: String,
}

impl ConfigError {
    /// Prints the one line and exits with status 2, as every configuration error does.
    pub fn exit(&self) -> ! {
        eprintln!("hotline: {self}");
        std::process::exit(2);
    }
}

impl ServeArgs {
    /// `ADMIN_TOKEN` and `WEBHOOK_SECRET` are required: instances behind one load balancer must
    /// share them, so none may invent its own. Only `serve --demo` generates them.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        if self.demo {
            return Ok(());
        }
        let missing = |env: &str, flag: &str| ConfigError {
            env: env.into(),
            flag: flag.into(),
            reason: "is required (at least 16 characters; every instance needs the same \
                     value); only `hotline serve --demo` generates one"
                .into(),
        };
        if self.admin_token.is_none() {
            return Err(missing("ADMIN_TOKEN", "admin-token"));
        }
        if self.webhook_secret.is_none() {
            return Err(missing("WEBHOOK_SECRET", "webhook-secret"));
        }
        Ok(())
    }
}

fn exit_with(err: clap::Error, subcommand: Option<&str>) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let is_value_error = matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    );
    if !is_value_error {
        err.exit();
    }
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let long = arg
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_start_matches('-')
        .to_string();
    // Several subcommands may have the same flag (`--url`): the one in use names it.
    let env = subcommand
        .and_then(|sub| env_name_in(sub, &long))
        .or_else(|| env_name_for(&long))
        .unwrap_or_else(|| long.clone());
    let reason = err
        .source()
        .map(|s| s.to_string())
        .or_else(|| match err.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(v)) => Some(format!("`{v}` is not an accepted value")),
            _ => None,
        })
        .unwrap_or_else(|| "invalid value".into());
    ConfigError {
        env,
        flag: long,
        reason,
    }
    .exit()
}

use std::error::Error as _;

/// The environment variable behind a long flag of one subcommand.
fn env_name_in(subcommand: &str, long: &str) -> Option<String> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let sub = cmd.find_subcommand(subcommand)?;
    let env = sub
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned());
    env
}

/// The environment variable behind a long flag, searched through every subcommand.
fn env_name_for(long: &str) -> Option<String> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut stack = vec![cmd];
    while let Some(cmd) = stack.pop() {
        for arg in cmd.get_arguments() {
            if arg.get_long() == Some(long) {
                if let Some(env) = arg.get_env() {
                    return Some(env.to_string_lossy().into_owned());
                }
            }
        }
        stack.extend(cmd.get_subcommands().cloned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_that_is_no_number_is_not_called_seconds() {
        use clap::Parser;
        for flag in ["--l1-max-mb", "--warm-leads", "--alert-min-samples"] {
            let e = Cli::try_parse_from(["hotline", "serve", flag, "abc"])
                .expect_err("abc is no number")
                .to_string();
            assert!(e.contains("not a whole number"), "{flag}: {e}");
            assert!(!e.contains("seconds"), "{flag}: {e}");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn database_urls_are_checked_by_scheme() {
        assert!("sqlite://hotline.db".parse::<DatabaseUrl>().is_ok());
        assert!("postgres://u:p@localhost:5432/db"
            .parse::<DatabaseUrl>()
            .is_ok());
        assert!("mysql://localhost/db".parse::<DatabaseUrl>().is_err());
        assert!("hotline.db".parse::<DatabaseUrl>().is_err());
    }

    #[test]
    fn redis_urls_must_leave_reconnects_to_hotline() {
        assert!(parse_redis_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(parse_redis_url("rediss://cache.example:6380").is_ok());
        assert!(parse_redis_url("redis://127.0.0.1:6379/0?protocol=resp3").is_err());
        assert!(parse_redis_url("http://127.0.0.1:6379").is_err());
    }

    #[test]
    fn redaction_hides_passwords_only() {
        assert_eq!(
            redact_url("postgres://user:hunter2@db.example.com:5432/app"),
            "postgres://user:***@db.example.com:5432/app"
        );
        assert_eq!(redact_url("sqlite://hotline.db"), "sqlite://hotline.db");
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379/0"),
            "redis://:***@127.0.0.1:6379/0"
        );
        let url: DatabaseUrl = "postgres://u:hunter2@h/db".parse().unwrap();
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(!format!("{:?}", Secret::new("hunter2hunter2hunter2")).contains("hunter2"));
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_seconds("900"), Ok(900));
        assert!(parse_seconds("-5").is_err());
        assert!(parse_positive("0").is_err());
        assert!(parse_percent("101").is_err());
        assert_eq!(parse_bool("FALSE"), Ok(false));
        assert!(parse_bool("maybe").is_err());
        assert!(parse_redis_url("rediss://h:6380").is_ok());
        assert!(parse_redis_url("http://h").is_err());
        assert!(parse_secret("short").is_err());
        assert!(parse_budget_mb("0").is_err());
        assert_eq!(parse_budget_mb("64"), Ok(64));
        assert_eq!(
            env_name_for("body-budget-mb").as_deref(),
            Some("BODY_BUDGET_MB")
        );
        assert_eq!(env_name_for("ttl-lead-s").as_deref(), Some("TTL_LEAD_S"));
        assert_eq!(
            env_name_in("validate", "url").as_deref(),
            Some("HOTLINE_URL")
        );
    }

    #[test]
    fn no_subcommand_means_serve() {
        let c = Cli::parse_from_or_exit(["hotline"]);
        assert!(matches!(c, Command::Serve(_)));
        let c = Cli::parse_from_or_exit(["hotline", "--listen-addr", "127.0.0.1:0"]);
        assert!(matches!(c, Command::Serve(a) if a.listen_addr.port() == 0));
        let c = Cli::parse_from_or_exit(["hotline", "migrate"]);
        assert!(matches!(c, Command::Migrate(_)));
    }
}
