//! `chatty-loadtest`: an open-loop load generator for Chatty and its peers.
//!
//! * `run`: one scenario against one target, a sweep of rates; JSON, table and SVG chart.
//! * `report`: combine several result files (a comparison) into one JSON, table and chart.
//! * `smoke`: two clients join, see each other's presence, exchange a message; exit non-zero
//!   on any failure (used after deploys).
//! * `bare-server`: the no-persistence broadcast ceiling the comparison measures against.
//! * `otlp-sink`: a stand-in OTLP/HTTP trace collector for the tracing cost runs.
//! * `worker`: internal; the coordinator re-executes itself in this mode.

mod bare;
mod sink;
mod coord;
mod plan;
mod report;
mod smoke;
mod stats;
mod target;
mod worker;
mod ws;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chatty-loadtest",
    version,
    about = "Open-loop load generator for Chatty and its peers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario against one server (a sweep of rates).
    Run(Box<coord::RunArgs>),
    /// Combine result files into one JSON, a Markdown table and a chart.
    Report {
        /// Result JSON files written by `run --out`; the first is the reference for ratios.
        inputs: Vec<String>,
        #[arg(long)]
        json: Option<String>,
        #[arg(long)]
        md: Option<String>,
        #[arg(long)]
        svg: Option<String>,
        /// Latency goals for the "best rate" summaries (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "100,250,1000")]
        p99_limit_ms: Vec<f64>,
        #[arg(long, default_value = "latency against offered load")]
        title: String,
    },
    /// Post-deploy check: two clients join a room, see presence, exchange a message.
    Smoke {
        /// Chatty's WebSocket URL, e.g. wss://chat.example.com/ws.
        #[arg(long)]
        url: String,
        /// HS256 secret to mint the two clients' tokens with.
        #[arg(
            long,
            env = "CHATTY_LOADTEST_JWT_SECRET",
            default_value = "local-development-secret-change-me",
            hide_env_values = true
        )]
        jwt_secret: String,
        /// Seconds allowed for each step.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// The bare broadcast ceiling: rooms in memory, no auth, no persistence, coalesced writes.
    BareServer {
        #[arg(long, default_value_t = 8090)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Runtime threads (0: one per CPU this process may use).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Frames queued per socket before it is dropped as a slow consumer.
        #[arg(long, default_value_t = 8192)]
        queue: usize,
    },
    /// A stand-in OTLP/HTTP trace collector: accepts every export, counts requests and bytes.
    OtlpSink {
        #[arg(long, default_value_t = 18098)]
        port: u16,
    },
    #[command(hide = true)]
    Worker,
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => {
            let allow_invalid = a.allow_invalid;
            if !coord::run(*a)? && !allow_invalid {
                std::process::exit(coord::EXIT_INVALID);
            }
            Ok(())
        }
        Cmd::Report {
            inputs,
            json,
            md,
            svg,
            p99_limit_ms,
            title,
        } => report::combine(
            &inputs,
            json.as_deref(),
            md.as_deref(),
            svg.as_deref(),
            &p99_limit_ms,
            &title,
        ),
        Cmd::Smoke {
            url,
            jwt_secret,
            timeout,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match rt.block_on(smoke::run(&url, &jwt_secret, timeout)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    eprintln!("smoke FAILED: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Cmd::BareServer {
            port,
            host,
            threads,
            queue,
        } => bare::main(&host, port, threads, queue),
        Cmd::OtlpSink { port } => sink::main(port),
        Cmd::Worker => worker::main(),
    }
}
