//! Results: merging the workers' reports, the JSON result, the table, the chart, Prometheus
//! counter diffs, the commit check and the COPY comparison, and `report` (combine runs).
//!
//! One file per job, so each can be read (and changed) without the others:
//!
//! * `model`: the result types, i.e. the schema of the JSON files `run --out` writes and
//!   `report` reads, and their date stamp.
//! * `merge`: the workers' connect and step reports merged into those results.
//! * `verdict`: when a step or a run is INVALID, and the thresholds behind it.
//! * `table`: the text a person reads: the Markdown table and the per-step line.
//! * `chart`: the SVG chart.
//! * `metrics`: Prometheus scraping and counter diffs.
//! * `durable`: the commit check and the COPY comparison against PostgreSQL.
//! * `combine`: the `report` subcommand (several result files into one).

mod chart;
mod combine;
mod durable;
mod merge;
mod metrics;
mod model;
mod table;
mod verdict;

// What `coord` and `main` name; the other result types reach them through these signatures.
pub use chart::chart;
pub use combine::combine;
pub use durable::{make_private, verify_db};
pub use merge::{merge_connect, step_result};
pub use metrics::{diff, scrape};
pub use model::{utc_now, MemoryPerConn, RunResult, ServerSample};
pub use table::{step_line, table};
pub use verdict::{closes_failure, connect_failure, run_invalid_reasons, saturation};
