//! Prometheus: scrape the server's text endpoint (plain HTTP/1.0) before and after a run, and
//! keep the counters that moved. Kept apart because it talks to the server under test over
//! its own protocol, unlike the rest of the report.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

/// Fetch a Prometheus text endpoint (plain HTTP/1.0, no client library).
pub fn scrape(url: &str) -> Result<BTreeMap<String, f64>> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("metrics url must be http://"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let mut s = std::net::TcpStream::connect(hostport).context("metrics endpoint")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let body = body.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let mut m = BTreeMap::new();
    for l in body.lines() {
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if let Some((k, v)) = l.rsplit_once(' ') {
            if let Ok(v) = v.parse::<f64>() {
                m.insert(k.to_string(), v);
            }
        }
    }
    Ok(m)
}

/// Counters (and histogram counts/sums) that moved during the run; gauges as they ended.
pub fn diff(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let mut d = BTreeMap::new();
    for (k, v) in after {
        let name = k.split('{').next().unwrap_or(k);
        if name.ends_with("_bucket") {
            continue;
        }
        let counter =
            name.ends_with("_total") || name.ends_with("_count") || name.ends_with("_sum");
        let x = if counter {
            v - before.get(k).copied().unwrap_or(0.0)
        } else {
            *v
        };
        if x != 0.0 {
            d.insert(k.clone(), x);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_diff_and_gauges_pass() {
        let mut a = BTreeMap::new();
        a.insert("x_total".to_string(), 5.0);
        a.insert("g".to_string(), 1.0);
        let mut b = a.clone();
        b.insert("x_total".to_string(), 7.0);
        let d = diff(&a, &b);
        assert_eq!(d["x_total"], 2.0);
        assert_eq!(d["g"], 1.0);
    }
}
