//! The commit check and the COPY comparison: after a durable run, ask PostgreSQL (through
//! `psql`) whether every acked message is committed gap-free, and optionally time a raw COPY of
//! as many rows. Kept apart because it is the only part that talks to the database.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::model::DurableCheck;

fn psql(db: &str, sql: &str) -> Result<String> {
    let out = std::process::Command::new("psql")
        .arg(db)
        .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Make every room of the run private before anyone joins, with its connections' users as
/// members and one more member who never connects, so every message of the run is one a
/// webhook (`message.offline`) and the inbox are about. Written straight into the tables the
/// server reads at each join.
pub fn make_private(db: &str, run_id: &str, groups: &[crate::plan::Group]) -> Result<()> {
    let mut sql = String::from("begin;\n");
    for g in groups {
        let room = format!("'lt{run_id}-{}-' || r", g.name);
        let last = g.rooms.saturating_sub(1);
        sql.push_str(&format!(
            "insert into rooms (id, private) select {room}, true from generate_series(0, {last}) r \
             on conflict (id) do update set private = true;\n\
             insert into room_members (room_id, user_id) select {room}, 'lt{run_id}-away' \
             from generate_series(0, {last}) r on conflict do nothing;\n\
             insert into room_members (room_id, user_id) \
             select 'lt{run_id}-{}-' || ((c - {first}) / {size}), 'lt{run_id}-u' || c \
             from generate_series({first}, {end}) c on conflict do nothing;\n",
            g.name,
            first = g.first_conn,
            size = g.room_size.max(1),
            end = (g.first_conn + g.conns()).saturating_sub(1),
        ));
    }
    sql.push_str("commit;");
    psql(db, &sql).map(drop)
}

/// Every acked message of this run is in `messages`, and every room's seqs are exactly 1..=n.
/// Optionally time a raw COPY of as many rows into a scratch copy of the table.
pub fn verify_db(
    db: &str,
    run_id: &str,
    acked: u64,
    copy: bool,
    body_bytes: usize,
    best_acks_per_s: f64,
) -> Result<DurableCheck> {
    let like = format!("lt{run_id}-%");
    let counts = psql(
        db,
        &format!(
            "select count(*), count(distinct room_id) from messages where room_id like '{like}'"
        ),
    )?;
    let mut it = counts.split('|');
    let committed: u64 = it.next().unwrap_or("0").parse()?;
    let rooms: u64 = it.next().unwrap_or("0").parse()?;
    let gaps: u64 = psql(
        db,
        &format!(
            "select count(*) from (select room_id, count(*) c, min(seq) lo, max(seq) hi from messages \
             where room_id like '{like}' group by room_id) x where c <> hi or lo <> 1"
        ),
    )?
    .parse()?;
    let mut d = DurableCheck {
        acked,
        committed,
        rooms,
        rooms_with_gaps: gaps,
        ok: committed >= acked && gaps == 0,
        ..Default::default()
    };
    if copy {
        let rows = acked.max(10_000);
        let table = format!("lt_copy_{run_id}");
        psql(
            db,
            &format!(
                "drop table if exists {table}; create table {table} (like messages including defaults including constraints including indexes)"
            ),
        )?;
        let mut data = Vec::with_capacity(rows as usize * (body_bytes + 64));
        let body = "x".repeat(body_bytes);
        let ts = crate::stats::now_us() / 1000;
        for i in 0..rows {
            let room = i % 100;
            writeln!(
                data,
                "lt{run_id}-copy-{room}\t{}\tu{room}\tu{room}\tc{i}\t{body}\t{ts}",
                i / 100 + 1
            )?;
        }
        let t0 = Instant::now();
        let mut child = std::process::Command::new("psql")
            .arg(db)
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-c"])
            // Name the columns a send writes: the rest (the message lifecycle's) take their
            // defaults, as they do on an append, whatever the schema's version.
            .arg(format!(
                "\\copy {table} (room_id, seq, user_id, name, cid, body, ts) from pstdin"
            ))
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("piped").write_all(&data)?;
        let st = child.wait()?;
        let secs = t0.elapsed().as_secs_f64();
        let _ = psql(db, &format!("drop table if exists {table}"));
        if !st.success() {
            bail!("COPY failed");
        }
        d.copy_rows = Some(rows);
        d.copy_s = Some(secs);
        d.copy_rows_per_s = Some(rows as f64 / secs);
        d.acks_vs_copy = Some(best_acks_per_s / (rows as f64 / secs));
    }
    Ok(d)
}
