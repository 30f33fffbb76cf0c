//! The `chatty` binary: parse the command line, load settings, run.

use std::time::Duration;

use anyhow::Context;
use chatty::auth::{parse_ttl, Authenticator};
use chatty::{startup, telemetry, Application, Settings};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chatty",
    version,
    about = "Chatty: a realtime messaging engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default).
    Serve,
    /// Create the database if needed and apply migrations, then exit.
    Migrate,
    /// Mint a JWT for a user with the configured secret (local use and tests).
    Token {
        user: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Exit 0 if the local server answers /readyz with 200 (for container health checks).
    Healthcheck,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = match Settings::load(&Settings::default_dir()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chatty: {e}");
            std::process::exit(2);
        }
    };
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Token { user, name, ttl } => {
            let ttl = parse_ttl(&ttl).map_err(anyhow::Error::msg)?;
            let token = Authenticator::new(&settings.auth)
                .mint(&user, name.as_deref(), ttl)
                .map_err(anyhow::Error::msg)?;
            println!("{token}");
            Ok(())
        }
        Cmd::Healthcheck => healthcheck(&settings),
        Cmd::Migrate => {
            telemetry::init_logs(&settings.log.format, &settings.log.level);
            runtime()?.block_on(startup::migrate_only(&settings))
        }
        Cmd::Serve => {
            let rt = runtime()?;
            let telemetry = telemetry::init(&settings, rt.handle())?;
            tracing::info!(settings = ?settings, "starting chatty {}", env!("CARGO_PKG_VERSION"));
            let outcome = rt.block_on(serve(settings));
            // The spans of the last messages still go out, on the runtime that is left.
            telemetry.shutdown();
            outcome
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let settings_poll_ms = settings.server.ecs_stop_poll_ms;
    let app = Application::build(settings).await?;
    tracing::info!(
        port = app.port(),
        metrics_port = app.metrics_port(),
        "listening"
    );
    // On ECS, also drain when the task is being stopped (before SIGTERM: see ecs.rs).
    let ecs_stop = async {
        match std::env::var(chatty::ecs::METADATA_ENV) {
            Ok(uri) if settings_poll_ms > 0 => {
                chatty::ecs::stop_requested(uri, Duration::from_millis(settings_poll_ms)).await
            }
            _ => std::future::pending().await,
        }
    };
    let clean = app
        .run_until(async {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = ecs_stop => {}
            }
        })
        .await?;
    if !clean {
        tracing::warn!("shutdown did not finish every step in time");
    }
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A minimal HTTP/1.1 GET of /readyz on the local public port, without a client library.
fn healthcheck(settings: &Settings) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let addr = ("127.0.0.1", settings.server.port);
    let mut s = std::net::TcpStream::connect(addr).context("connecting to the server")?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let head = String::from_utf8_lossy(&buf[..n]);
    if head.starts_with("HTTP/1.1 200") {
        println!("ready");
        Ok(())
    } else {
        anyhow::bail!("not ready: {}", head.lines().next().unwrap_or(""))
    }
}
