//! The subcommands: what `main` dispatches to.

use anyhow::Context as _;

use crate::config::{Command, DatabaseArgs, SeedArgs, ServeArgs};
use crate::seed::{self, SeedOptions, SeedSample};
use crate::startup::{shutdown_signal, Application, GeneratedSecrets};
use crate::store::{self, DynStore};
use crate::telemetry;

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate(args) => {
            telemetry::init(crate::config::LogFormat::Text);
            migrate(&args).await.map(|_| ())
        }
        Command::Seed(args) => seed_command(args).await,
        Command::Validate(args) => validate_command(args).await,
        Command::Drain(args) => drain_command(args).await,
        Command::Bench(args) => crate::bench::run(*args).await,
        Command::Openapi => {
            let document = serde_json::to_string_pretty(crate::http::openapi_document())?;
            println!("{document}");
            Ok(())
        }
    }
}

async fn migrate(args: &DatabaseArgs) -> anyhow::Result<DynStore> {
    let store = store::connect(args.database_url.as_str())
        .await
        .with_context(|| format!("opening the database {}", args.database_url.redacted()))?;
    store
        .migrate()
        .await
        .with_context(|| format!("migrating the database {}", args.database_url.redacted()))?;
    tracing::info!(backend = store.backend(), "migrations applied");
    Ok(store)
}

async fn seed_command(args: SeedArgs) -> anyhow::Result<()> {
    telemetry::init(args.log.log_format);
    migrate(&args.db).await?;
    let opts = SeedOptions {
        organizations: args.organizations,
        leads: args.leads,
        conversations_per_lead: args.conversations_per_lead,
        seed: args.seed,
    };
    let report = seed::seed(args.db.database_url.as_str(), &opts).await?;
    println!(
        "seeded {} organizations, {} leads, {} conversations in {:.1} s",
        report.organizations,
        report.leads,
        report.conversations,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

async fn validate_command(args: crate::config::ValidateArgs) -> anyhow::Result<()> {
    use crate::validate::{self, ValidateOptions};
    let mut opts = ValidateOptions::new(args.url.as_str());
    opts.admin_token = args.admin_token.map(|s| s.expose().to_string());
    opts.webhook_secret = args.webhook_secret.map(|s| s.expose().to_string());
    opts.latency_target_ms = args.latency_target_ms;
    let report = validate::run(&opts).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    if !report.passed {
        std::process::exit(1);
    }
    Ok(())
}

async fn drain_command(args: crate::config::DrainArgs) -> anyhow::Result<()> {
    use crate::drain::{self, DrainOptions};
    use std::time::Duration;
    let token = match args.admin_token() {
        Ok(t) => t.expose().to_string(),
        Err(e) => e.exit(),
    };
    let ack_within = Duration::from_secs(args.ack_timeout_s);
    let opts = DrainOptions {
        url: args.url.as_str().to_string(),
        admin_token: token,
        ack_within,
        request_timeout: ack_within.min(Duration::from_secs(5)),
    };
    let drained = drain::run(&opts).await;
    match &drained {
        Ok(d) => println!(
            "drained `{}` (message {}): {}",
            d.instance_id, d.message_id, d.detail
        ),
        Err(_) if args.wait_s > 0 => println!("the drain failed (below)"),
        Err(_) => {}
    }
    // Waited even when the drain failed: a stop hook's wait is also the time load balancers
    // take to stop sending to an instance being removed, whatever its /healthz says.
    if args.wait_s > 0 {
        println!("waiting {} s for load balancers to notice", args.wait_s);
        tokio::time::sleep(Duration::from_secs(args.wait_s)).await;
    }
    drained
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("drain failed: {e}"))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Err(e) = args.check_secrets() {
        e.exit();
    }
    telemetry::init(args.log.log_format);
    telemetry::log_panics();
    let (app, generated) = Application::build(&args).await?;
    print_generated(&generated);
    let demo = if !args.demo {
        None
    } else if let Err(e) = app.store().ping().await {
        // A database that is not there yet does not stop the service, nor its demo.
        tracing::warn!(error = %e, "the database is unavailable: no demo data for now");
        None
    } else {
        Some(demo_sample(app.store(), &args).await?)
    };
    let addr = app.local_addr();
    tracing::info!(%addr, backend = app.store().backend(), "hotline is serving");
    if let Some(sample) = demo.flatten() {
        print_demo_curl(addr, &sample, &generated);
    }
    app.run_until(shutdown_signal()).await?;
    Ok(())
}

/// Secrets generated at start are printed once, on stderr, so that the operator can use them.
fn print_generated(generated: &GeneratedSecrets) {
    if let Some(token) = &generated.admin_token {
        eprintln!(
            "ADMIN_TOKEN is not set; generated for this run: {}",
            token.expose()
        );
    }
    if let Some(secret) = &generated.webhook_secret {
        eprintln!(
            "WEBHOOK_SECRET is not set; generated for this run: {}",
            secret.expose()
        );
    }
}

/// Seeds a small demo data set into an empty database, and picks a known caller to show.
async fn demo_sample(store: &DynStore, args: &ServeArgs) -> anyhow::Result<Option<SeedSample>> {
    if store.recently_active_leads(1).await?.is_empty() {
        let opts = SeedOptions {
            organizations: 3,
            leads: 60,
            conversations_per_lead: 2,
            seed: 42,
        };
        let report = seed::seed(args.db.database_url.as_str(), &opts).await?;
        eprintln!(
            "Seeded demo data: {} organizations, {} leads, {} conversations.",
            report.organizations, report.leads, report.conversations
        );
        if report.sample.is_some() {
            return Ok(report.sample);
        }
    }
    for id in store.recently_active_leads(50).await? {
        let lead = store.lead(id).await?;
        let Some(name) = lead.customer_name.clone() else {
            continue;
        };
        let org = store.organization(lead.organization_id).await?;
        return Ok(Some(SeedSample {
            organization_phone: org.phone_number,
            organization_name: org.name,
            lead_phone: lead.phone_number,
            customer_name: name,
        }));
    }
    Ok(None)
}

fn print_demo_curl(addr: std::net::SocketAddr, sample: &SeedSample, generated: &GeneratedSecrets) {
    let secret = generated
        .webhook_secret
        .as_ref()
        .map_or_else(|| "$WEBHOOK_SECRET".to_string(), |s| s.expose().to_string());
    let body = serde_json::json!({
        "caller_id": sample.lead_phone.as_str(),
        "agent_id": "agent_demo",
        "called_number": sample.organization_phone.as_str(),
        "call_sid": "CA00000000000000000000000000000000",
    });
    println!(
        "\nDemo: {} is calling {}. Paste this to see the answer ElevenLabs would get:\n\n  curl -s -X POST http://{addr}/webhooks/elevenlabs/conversation-initiation \\\n    -H 'Authorization: Bearer {secret}' -H 'Content-Type: application/json' \\\n    -d '{body}'\n",
        sample.customer_name, sample.organization_name,
    );
}
