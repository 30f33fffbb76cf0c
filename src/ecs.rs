//! Start the drain when ECS decides to stop this task, not when SIGTERM arrives.
//!
//! Behind an ALB, ECS stops a task in two steps: it deregisters the target and waits the
//! target group's deregistration delay (the ALB ends every socket still open when the delay
//! runs out), and only then sends SIGTERM. Waiting for the signal would leave Chatty's drain
//! (readiness 503, every socket closed with 1001 so clients reconnect elsewhere, the writer
//! flushed) with no sockets to drain. So the node watches its own task in the ECS task
//! metadata endpoint (v4, which the agent puts in `ECS_CONTAINER_METADATA_URI_V4`) and drains
//! as soon as the task's desired status is `STOPPED`; the deregistration delay is longer than
//! the drain, so Chatty closes the sockets itself before the ALB would. SIGTERM still drains
//! (or finds the drain done) as everywhere else.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The environment variable the ECS agent sets in every container.
pub const METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// A metadata answer larger than this is not one (the task document is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

/// Resolves once the task's desired status is `STOPPED`, polling every `every`. Errors (the
/// endpoint briefly unavailable, a malformed answer) are logged and polled again: a watcher
/// that gives up would silently bring back the ALB-ends-the-sockets behaviour.
pub async fn stop_requested(metadata_uri: String, every: Duration) {
    let mut logged_error = false;
    loop {
        match desired_status(&metadata_uri).await {
            Ok(status) if status == "STOPPED" => {
                tracing::info!(
                    "ECS is stopping this task: draining before the load balancer ends the sockets"
                );
                return;
            }
            Ok(_) => logged_error = false,
            Err(e) if !logged_error => {
                tracing::warn!(error = %format!("{e:#}"), "ECS task metadata unavailable; will retry");
                logged_error = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(every).await;
    }
}

/// `DesiredStatus` of `GET {uri}/task`: plain HTTP on the link-local agent address, so a
/// minimal HTTP/1.0 exchange (the answer ends when the connection closes) needs no client.
async fn desired_status(uri: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(uri).context("metadata URI")?;
    if url.scheme() != "http" {
        bail!("metadata URI must be http://, got {}", url.scheme());
    }
    let host = url.host_str().context("metadata URI without a host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let path = format!("{}/task", url.path().trim_end_matches('/'));
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut buf)
            .await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .context("metadata request timed out")??;
    if buf.len() > MAX_RESPONSE {
        bail!("metadata answer over {MAX_RESPONSE} bytes");
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("metadata answer without headers")?;
    let status_line = std::str::from_utf8(&buf[..split])?
        .lines()
        .next()
        .unwrap_or("");
    if status_line.split_whitespace().nth(1) != Some("200") {
        bail!("metadata answered {status_line:?}");
    }
    #[derive(serde::Deserialize)]
    struct Task {
        #[serde(rename = "DesiredStatus")]
        desired_status: String,
    }
    let task: Task = serde_json::from_slice(&buf[split + 4..]).context("metadata task JSON")?;
    Ok(task.desired_status)
}
