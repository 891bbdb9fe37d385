//! crm-example: a small CRM speaking the subset of HubSpot's CRM v3 objects
//! API that plugboard's crm-sync plugin uses, persisted in SQLite. For the
//! demo and the tests; not a HubSpot replacement.
//!
//! - `POST /crm/v3/objects/{type}/batch/upsert`: create or update by `idProperty`
//! - `POST /crm/v3/objects/{type}/batch/read`: read many by `idProperty`
//! - `GET  /crm/v3/objects/{type}/{id}?idProperty=booking_id`: read one
//! - `GET  /crm/v3/objects/{type}?limit=N&after=CURSOR`: page through all
//! - `GET  /stats`: requests answered and inputs upserted since start
//!
//! `--latency-ms N` delays every objects API answer by N ms: a slow sink.

mod api;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

/// A small CRM with HubSpot's objects API, backed by SQLite.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on; port 0 picks a free port. The address bound is
    /// printed on standard output as `listening on http://ADDR`.
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// The SQLite database file; created if missing.
    #[arg(long)]
    db: PathBuf,
    /// If set, every request must carry `Authorization: Bearer <token>`.
    #[arg(long, env = "CRM_TOKEN")]
    token: Option<String>,
    /// Answers every objects API request this many milliseconds late, as a
    /// remote SaaS CRM does (`/stats` answers at once): a slow sink for
    /// benchmarks.
    #[arg(long, env = "CRM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let store = store::Store::open(&cli.db)?;
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "crm-example listening on http://{addr} (db {})",
        cli.db.display()
    );
    // For scripts and tests that asked for port 0.
    println!("listening on http://{addr}");
    let latency = std::time::Duration::from_millis(cli.latency_ms);
    axum::serve(listener, api::router(store, cli.token, latency))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
