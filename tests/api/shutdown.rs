use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn sigterm_under_traffic_closes_every_socket_with_1001_keeps_every_ack_and_exits_0() {
    let (settings, db_url) = test_settings().await;
    let (mut child, port) = start_binary(&[("CHATTY__DATABASE__URL", db_url.as_str())]).await;
    let auth = chatty::auth::Authenticator::new(&settings.auth);
    let url = format!("ws://127.0.0.1:{port}/ws");

    let mut tasks = Vec::new();
    for c in 0..5 {
        let token = auth
            .mint(&format!("u{c}"), None, Duration::from_secs(600))
            .unwrap();
        let mut client = Client::connect(&url, &token, Some("chatty.v1.json")).await;
        client.join("shutdown").await;
        tasks.push(tokio::spawn(async move {
            // Send steadily; collect acks until the server closes the socket.
            let mut acked = Vec::new();
            let mut i = 0;
            loop {
                let cid = format!("u{c}m{i}");
                i += 1;
                let frame = json!({"type":"send","ref":cid,"room":"shutdown","cid":cid,"body":"x"});
                if !client.try_send(frame).await {
                    // The server is closing: what it sent before is still to be read.
                    while let Some(v) = client.next().await {
                        if v["type"] == "ack" {
                            acked.push((
                                v["cid"].as_str().unwrap().to_string(),
                                v["seq"].as_i64().unwrap(),
                            ));
                        }
                    }
                    return (client.closed, acked);
                }
                // Read whatever is available for a moment.
                loop {
                    match tokio::time::timeout(Duration::from_millis(2), client.next()).await {
                        Ok(Some(v)) if v["type"] == "ack" => acked.push((
                            v["cid"].as_str().unwrap().to_string(),
                            v["seq"].as_i64().unwrap(),
                        )),
                        Ok(Some(_)) => {}
                        Ok(None) => return (client.closed, acked),
                        Err(_) => break,
                    }
                }
                if i > 20_000 {
                    panic!("the server never closed the socket");
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(25), child.wait())
        .await
        .expect("exited within 25 s")
        .unwrap();
    assert_eq!(exit.code(), Some(0));

    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let mut total_acked = 0;
    for t in tasks {
        let (code, acked) = t.await.unwrap();
        assert_eq!(
            code,
            Some(1001),
            "every client is told the server is going away"
        );
        assert!(!acked.is_empty());
        total_acked += acked.len();
        for (cid, seq) in acked {
            let found: Option<(i64,)> =
                sqlx::query_as("select seq from messages where room_id = 'shutdown' and cid = $1")
                    .bind(&cid)
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
            assert_eq!(found, Some((seq,)), "acked {cid} must be in the table");
        }
    }
    assert!(total_acked > 10);
}

#[tokio::test]
async fn stopping_the_application_acks_what_was_sent_then_closes_with_1001() {
    let mut app = spawn_app().await;
    let mut a = app.connect("alice").await;
    a.join("r").await;
    for i in 0..50 {
        let cid = format!("m{i}");
        a.send(json!({"type":"send","ref":cid,"room":"r","cid":cid,"body":"x"}))
            .await;
    }
    // Give the reader a moment to hand the frames to the actor, then stop.
    eventually("some sends taken", || async {
        app.metric("chatty_frames_in_total{encoding=\"json\",type=\"send\"}")
            .await
            >= 50.0
    })
    .await;
    let port = app.port;
    let stop = tokio::spawn(async move { app.stop().await });
    let mut acks = 0;
    while let Some(v) = a.next().await {
        if v["type"] == "ack" {
            acks += 1;
        }
    }
    assert_eq!(a.closed, Some(1001));
    assert_eq!(
        acks, 50,
        "every send taken before the drain is acked before the close"
    );
    assert!(stop.await.unwrap(), "the drain finished in time");
    // The listener is gone once the drain is over.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
}

/// A stand-in for the ECS agent's task metadata endpoint (there is no ECS here): answers
/// `GET /v4/<id>/task` with the desired status the test sets, and counts the requests.
async fn metadata_endpoint(
    desired: std::sync::Arc<parking_lot::Mutex<&'static str>>,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut req = vec![0u8; 1024];
            let n = s.read(&mut req).await.unwrap_or(0);
            let path_ok = String::from_utf8_lossy(&req[..n]).starts_with("GET /v4/task-1/task ");
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = format!(
                r#"{{"Cluster":"c","DesiredStatus":"{}","KnownStatus":"RUNNING"}}"#,
                desired.lock()
            );
            let answer = if path_ok {
                format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}")
            } else {
                "HTTP/1.0 404 Not Found\r\n\r\n".to_string()
            };
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    port
}

#[tokio::test]
async fn on_ecs_a_task_being_stopped_drains_before_any_signal() {
    let (settings, db_url) = test_settings().await;
    let desired = std::sync::Arc::new(parking_lot::Mutex::new("RUNNING"));
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let meta = metadata_endpoint(desired.clone(), asked.clone()).await;
    let uri = format!("http://127.0.0.1:{meta}/v4/task-1");
    let (mut child, port) = start_binary(&[
        ("CHATTY__DATABASE__URL", db_url.as_str()),
        ("ECS_CONTAINER_METADATA_URI_V4", uri.as_str()),
        ("CHATTY__SERVER__ECS_STOP_POLL_MS", "50"),
    ])
    .await;
    let auth = chatty::auth::Authenticator::new(&settings.auth);
    let token = auth.mint("ann", None, Duration::from_secs(600)).unwrap();
    let mut c = Client::connect(
        &format!("ws://127.0.0.1:{port}/ws"),
        &token,
        Some("chatty.v1.json"),
    )
    .await;
    c.join("ecs").await;
    let ack = c.send_msg("ecs", "before", "hi").await;
    assert_eq!(ack["type"], "ack");

    // While the task runs, the node keeps asking and keeps serving.
    let polls = asked.load(std::sync::atomic::Ordering::SeqCst);
    eventually("the node polls the metadata endpoint", || {
        let asked = asked.clone();
        async move { asked.load(std::sync::atomic::Ordering::SeqCst) > polls + 3 }
    })
    .await;
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // ECS decides to stop the task (deregistration starts): no SIGTERM is sent, yet the node
    // closes the socket with 1001 and exits 0 on its own.
    *desired.lock() = "STOPPED";
    assert_eq!(c.next_of_close().await, Some(1001));
    let exit = tokio::time::timeout(Duration::from_secs(25), child.wait())
        .await
        .expect("exited within the drain budget")
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
