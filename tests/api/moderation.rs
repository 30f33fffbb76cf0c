//! Roles, moderation and revocation on one node (protocol v1.1): who may kick, ban, unban and
//! set roles, what a removed socket sees, token expiry and refresh, disconnect. The cluster
//! half (another node's sockets, a ban across restarts) is in `cluster.rs`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::*;

const JSON: &str = "chatty.v1.json";
const MSGPACK: &str = "chatty.v1.msgpack";

fn kick(r: &str, room: &str, user: &str, ban: bool) -> Value {
    json!({"type": "kick", "ref": r, "room": room, "user": user, "ban": ban})
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The socket is open and served: a ping is answered.
async fn alive(c: &mut Client, r: &str) {
    let v = c.call(json!({"type": "ping", "ref": r})).await;
    assert_eq!(v["type"], "pong", "{v}");
}

fn error_code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "expected an error, got {v}");
    v["code"].as_str().unwrap()
}

#[tokio::test]
async fn kick_and_ban_need_the_role_take_the_user_out_and_unban_lets_them_back() {
    let app = spawn_app().await;
    let room = "mod-kick";
    let mut alice = app.connect("alice").await;
    let mut bob = app.connect_msgpack("bob").await;
    assert_eq!(alice.join(room).await["role"], "member");
    bob.join(room).await;

    // Without a role: forbidden, and nothing changes.
    let v = alice.call(kick("k1", room, "bob", false)).await;
    assert_eq!(error_code(&v), "forbidden");
    let v = alice
        .call(json!({"type":"unban","ref":"u0","room":room,"user":"bob"}))
        .await;
    assert_eq!(error_code(&v), "forbidden");
    assert_eq!(bob.send_msg(room, "b1", "still here").await["type"], "ack");

    // The backend makes alice a moderator (a role row in a public room).
    let (st, _) = app
        .api(
            "PUT",
            &format!("/api/v1/rooms/{room}/members/alice"),
            Some(json!({"role":"moderator"})),
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(alice.join(room).await["role"], "moderator");

    // A kick: bob is out (removed, then not_joined), and may come back.
    let v = alice.call(kick("k2", room, "bob", false)).await;
    assert_eq!(
        (v["type"].as_str(), v["user"].as_str()),
        (Some("kicked"), Some("bob")),
        "{v}"
    );
    let removed = bob.next_of("removed").await;
    assert_eq!(
        removed,
        json!({"type":"removed","room":room,"reason":"kicked"})
    );
    assert_eq!(
        error_code(&bob.send_msg(room, "b2", "after kick").await),
        "not_joined"
    );
    let v = bob
        .call(json!({"type":"read","ref":"r1","room":room,"seq":1}))
        .await;
    assert_eq!(error_code(&v), "not_joined");
    assert_eq!(bob.join(room).await["type"], "joined");

    // A ban: out, and kept out.
    let v = alice.call(kick("k3", room, "bob", true)).await;
    assert_eq!(v["type"], "kicked", "{v}");
    assert_eq!(bob.next_of("removed").await["reason"], "banned");
    assert_eq!(
        error_code(&bob.send_msg(room, "b3", "after ban").await),
        "not_joined"
    );
    let v = bob
        .call(json!({"type":"join","ref":"j2","room":room}))
        .await;
    assert_eq!(error_code(&v), "forbidden");
    let v = bob
        .call(json!({"type":"history","ref":"h1","room":room}))
        .await;
    assert_eq!(
        error_code(&v),
        "forbidden",
        "a banned user cannot read the history either"
    );

    // Neither message sent after a removal was stored or delivered.
    let rows = app.rows(room).await;
    assert_eq!(
        rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>(),
        vec!["b1"]
    );
    let seen = alice.messages(room, 1).await;
    assert_eq!(seen[0]["cid"], "b1");
    alice
        .assert_quiet(Duration::from_millis(200), &["presence"])
        .await;

    // Unban: bob may join again.
    let v = alice
        .call(json!({"type":"unban","ref":"u1","room":room,"user":"bob"}))
        .await;
    assert_eq!(
        v,
        json!({"type":"unbanned","ref":"u1","room":room,"user":"bob"})
    );
    assert_eq!(bob.join(room).await["type"], "joined");
    assert_eq!(bob.send_msg(room, "b4", "back").await["type"], "ack");
}

#[tokio::test]
async fn moderation_goes_down_the_ranks_only_and_hostile_requests_change_nothing() {
    let app = spawn_app().await;
    let room = "mod-ranks";
    for (user, role) in [("mo", "moderator"), ("ow", "owner"), ("mo2", "moderator")] {
        let (st, _) = app
            .api(
                "PUT",
                &format!("/api/v1/rooms/{room}/members/{user}"),
                Some(json!({"role": role})),
            )
            .await;
        assert_eq!(st, 204);
    }
    let mut mo = app.connect("mo").await;
    let mut ow = app.connect("ow").await;
    let mut mo2 = app.connect("mo2").await;
    let admin_token = app.token_with("root", "Root", &["admin"], Duration::from_secs(600));
    let mut admin = app.connect_token(&admin_token, JSON).await;
    let mut eve = app.connect("eve").await;
    for c in [&mut mo, &mut ow, &mut mo2, &mut admin, &mut eve] {
        c.join(room).await;
    }

    // Kicking oneself, an equal, a superior or an admin: a clear error, nobody removed.
    assert_eq!(
        error_code(&mo.call(kick("s", room, "mo", false)).await),
        "bad_request"
    );
    assert_eq!(
        error_code(&mo.call(kick("e", room, "mo2", false)).await),
        "forbidden"
    );
    assert_eq!(
        error_code(&mo.call(kick("o", room, "ow", true)).await),
        "forbidden"
    );
    assert_eq!(
        error_code(&ow.call(kick("a", room, "root", true)).await),
        "forbidden"
    );
    // Kick in a room one has not joined.
    assert_eq!(
        error_code(&mo.call(kick("n", "mod-elsewhere", "eve", false)).await),
        "not_joined"
    );
    // Malformed requests carry their ref back.
    for (r, frame) in [
        ("m1", json!({"type":"kick","ref":"m1","room":room})),
        (
            "m2",
            json!({"type":"kick","ref":"m2","room":room,"user":""}),
        ),
        (
            "m3",
            json!({"type":"kick","ref":"m3","room":room,"user":"eve","ban":"yes"}),
        ),
        (
            "m4",
            json!({"type":"set_role","ref":"m4","room":room,"user":"eve","role":"admin"}),
        ),
        (
            "m5",
            json!({"type":"set_role","ref":"m5","room":room,"user":"eve","role":"Owner"}),
        ),
        (
            "m6",
            json!({"type":"set_role","ref":"m6","room":room,"user":"eve","role":["owner"]}),
        ),
    ] {
        let v = mo.call(frame).await;
        assert_eq!(
            (v["ref"].as_str(), error_code(&v)),
            (Some(r), "bad_request"),
            "{v}"
        );
    }
    // Nobody was removed by any of it.
    for (c, r) in [
        (&mut mo2, "p1"),
        (&mut ow, "p2"),
        (&mut admin, "p3"),
        (&mut eve, "p4"),
    ] {
        c.assert_quiet(
            Duration::from_millis(50),
            &["presence", "typing", "message"],
        )
        .await;
        alive(c, r).await;
        assert_eq!(c.send_msg(room, r, "here").await["type"], "ack");
    }

    // Roles: a moderator may not set them; an owner may, below themselves; admins may all.
    let set = |r: &str, user: &str, role: &str| json!({"type":"set_role","ref":r,"room":room,"user":user,"role":role});
    assert_eq!(
        error_code(&mo.call(set("r1", "eve", "moderator")).await),
        "forbidden"
    );
    assert_eq!(
        error_code(&ow.call(set("r2", "eve", "owner")).await),
        "forbidden"
    );
    let v = ow.call(set("r3", "eve", "moderator")).await;
    assert_eq!(
        v,
        json!({"type":"role_set","ref":"r3","room":room,"user":"eve","role":"moderator"})
    );
    assert_eq!(eve.join(room).await["role"], "moderator");
    assert_eq!(
        admin.call(set("r4", "ow", "member")).await["type"],
        "role_set"
    );
    // Demoted: the former owner cannot moderate any more (roles are read at each action).
    assert_eq!(
        error_code(&ow.call(kick("k", room, "mo", false)).await),
        "forbidden"
    );
    // The owner's moderation of a moderator, and an admin's of anyone, go through.
    assert_eq!(
        admin.call(kick("k2", room, "ow", false)).await["type"],
        "kicked"
    );
    assert_eq!(ow.next_of("removed").await["reason"], "kicked");
}

#[tokio::test]
async fn removing_a_member_of_a_private_room_takes_their_sockets_out_live() {
    let app = spawn_app().await;
    let room = "mod-private";
    let (st, _) = app
        .api(
            "PUT",
            &format!("/api/v1/rooms/{room}"),
            Some(json!({"private": true})),
        )
        .await;
    assert_eq!(st, 204);
    for u in ["ann", "ben"] {
        let (st, _) = app
            .api("PUT", &format!("/api/v1/rooms/{room}/members/{u}"), None)
            .await;
        assert_eq!(st, 204);
    }
    let mut ann = app.connect("ann").await;
    let mut ben1 = app.connect("ben").await;
    let mut ben2 = app.connect_msgpack("ben").await;
    for c in [&mut ann, &mut ben1, &mut ben2] {
        assert_eq!(c.join(room).await["type"], "joined");
    }
    let (st, _) = app
        .api("DELETE", &format!("/api/v1/rooms/{room}/members/ben"), None)
        .await;
    assert_eq!(st, 204);
    for b in [&mut ben1, &mut ben2] {
        assert_eq!(b.next_of("removed").await["reason"], "removed");
        assert_eq!(
            error_code(&b.send_msg(room, "late", "x").await),
            "not_joined"
        );
        let v = b.call(json!({"type":"join","ref":"rj","room":room})).await;
        assert_eq!(error_code(&v), "forbidden");
        alive(b, "still-open").await;
    }
    assert!(app.rows(room).await.is_empty());
    assert_eq!(ann.send_msg(room, "a1", "hi").await["type"], "ack");
    // Removing a member of a public room removes a role, nobody's socket.
    let (st, _) = app
        .api(
            "PUT",
            "/api/v1/rooms/mod-pub/members/ann",
            Some(json!({"role":"owner"})),
        )
        .await;
    assert_eq!(st, 204);
    ann.join("mod-pub").await;
    let (st, _) = app
        .api("DELETE", "/api/v1/rooms/mod-pub/members/ann", None)
        .await;
    assert_eq!(st, 204);
    assert_eq!(
        ann.send_msg("mod-pub", "a2", "still in").await["type"],
        "ack"
    );
    assert_eq!(ann.join("mod-pub").await["role"], "member");
}

#[tokio::test]
async fn the_backend_kicks_bans_and_unbans_admins_included_and_bad_calls_are_400() {
    let app = spawn_app().await;
    let room = "mod-api";
    let admin_token = app.token_with("boss", "Boss", &["admin"], Duration::from_secs(600));
    let mut boss = app.connect_token(&admin_token, MSGPACK).await;
    boss.join(room).await;
    let (st, _) = app
        .api(
            "POST",
            &format!("/api/v1/rooms/{room}/kick"),
            Some(json!({"user":"boss","ban":true})),
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(boss.next_of("removed").await["reason"], "banned");
    // An admin may still join a room they are banned from (to moderate it).
    assert_eq!(boss.join(room).await["type"], "joined");
    let mut carl = app.connect("carl").await;
    carl.join(room).await;
    let (st, _) = app
        .api(
            "POST",
            &format!("/api/v1/rooms/{room}/kick"),
            Some(json!({"user":"carl","ban":true})),
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(carl.next_of("removed").await["reason"], "banned");
    assert_eq!(
        error_code(
            &carl
                .call(json!({"type":"join","ref":"j","room":room}))
                .await
        ),
        "forbidden"
    );
    let (st, _) = app
        .api("DELETE", &format!("/api/v1/rooms/{room}/bans/carl"), None)
        .await;
    assert_eq!(st, 204);
    let (st, _) = app
        .api("DELETE", &format!("/api/v1/rooms/{room}/bans/carl"), None)
        .await;
    assert_eq!(st, 204, "unban is idempotent");
    assert_eq!(carl.join(room).await["type"], "joined");

    for (method, path, body) in [
        (
            "PUT",
            format!("/api/v1/rooms/{room}/members/carl"),
            json!({"role":"admin"}),
        ),
        (
            "PUT",
            format!("/api/v1/rooms/{room}/members/carl"),
            json!({"rol":"owner"}),
        ),
        (
            "PUT",
            format!("/api/v1/rooms/{room}/members/carl"),
            json!({"role":7}),
        ),
        (
            "POST",
            format!("/api/v1/rooms/{room}/kick"),
            json!({"ban":true}),
        ),
        (
            "POST",
            format!("/api/v1/rooms/{room}/kick"),
            json!({"user":"a\u{1}b"}),
        ),
        (
            "POST",
            "/api/v1/users/carl/disconnect".to_string(),
            json!({"reason": "x".repeat(300)}),
        ),
        (
            "POST",
            "/api/v1/users/carl/disconnect".to_string(),
            json!({"why":"x"}),
        ),
    ] {
        let (st, _) = app.api(method, &path, Some(body.clone())).await;
        assert!((400..500).contains(&st), "{method} {path} {body}: {st}");
    }
    let (st, _) = api_call(
        app.port,
        "wrong-key",
        "POST",
        &format!("/api/v1/rooms/{room}/kick"),
        Some(json!({"user":"carl"})),
    )
    .await;
    assert_eq!(st, 401);
    // None of it touched carl.
    alive(&mut carl, "p").await;
    assert_eq!(carl.send_msg(room, "c1", "fine").await["type"], "ack");
    assert_eq!(carl.join(room).await["role"], "member");
}

#[tokio::test]
async fn disconnect_closes_every_socket_of_the_user_with_4003_and_nobody_elses() {
    let app = spawn_app().await;
    let mut d1 = app.connect("dora").await;
    let mut d2 = app.connect_msgpack("dora").await;
    let mut other = app.connect("otto").await;
    d1.join("dc-room").await;
    other.join("dc-room").await;
    let (st, _) = app
        .api(
            "POST",
            "/api/v1/users/dora/disconnect",
            Some(json!({"reason":"spam"})),
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(d1.next_of_close().await, Some(4003));
    assert_eq!(d2.next_of_close().await, Some(4003));
    alive(&mut other, "p").await;
    // Reconnecting with a valid token is allowed; a body is optional.
    let mut d3 = app.connect("dora").await;
    alive(&mut d3, "p").await;
    let (st, _) = app
        .api("POST", "/api/v1/users/nobody/disconnect", None)
        .await;
    assert_eq!(st, 204);
    let app = &app;
    eventually("both closes counted", || async move {
        app.metric("chatty_connections_closed_total{code=\"4003\"}")
            .await
            >= 2.0
    })
    .await;
}

#[tokio::test]
async fn a_socket_is_closed_with_1008_when_its_token_expires_unless_it_refreshed() {
    let app = spawn_app().await;
    // Whole seconds: `exp` has a resolution of one second.
    let ttl = Duration::from_secs(2);
    let started = Instant::now();
    let exp = now_secs() + 2;
    let mut short = app
        .connect_token(&app.token_with("sam", "Sam", &[], ttl), JSON)
        .await;
    let mut refreshed = app
        .connect_token(&app.token_with("rae", "Rae", &[], ttl), MSGPACK)
        .await;
    let mut imposter = app
        .connect_token(&app.token_with("ivy", "Ivy", &[], ttl), JSON)
        .await;
    for c in [&mut short, &mut refreshed, &mut imposter] {
        c.join("exp-room").await;
    }

    // A valid newer token for the same user: refreshed, with the new name and roles.
    let newer = app.token_with("rae", "Rae Renamed", &["admin"], Duration::from_secs(3600));
    let v = refreshed
        .call(json!({"type":"refresh","ref":"f1","token":newer}))
        .await;
    assert_eq!(v["type"], "refreshed", "{v}");
    assert!(v["exp"].as_u64().unwrap() >= now_secs() + 3000);
    // Another user's token, a forged one, a flood of them: forbidden, nothing changes.
    let others = app.token_with("sam", "Sam", &["admin"], Duration::from_secs(3600));
    let v = imposter
        .call(json!({"type":"refresh","ref":"f2","token":others}))
        .await;
    assert_eq!(error_code(&v), "forbidden");
    for i in 0..100 {
        imposter
            .send(
                json!({"type":"refresh","ref":format!("x{i}"),"token":format!("forged.{i}.token")}),
            )
            .await;
    }
    for i in 0..100 {
        let v = imposter.next_of("error").await;
        assert_eq!(
            (v["ref"].as_str(), v["code"].as_str()),
            (Some(format!("x{i}").as_str()), Some("forbidden"))
        );
    }
    let v = imposter
        .call(json!({"type":"refresh","ref":"big","token":"t".repeat(5000)}))
        .await;
    assert_eq!(error_code(&v), "too_large");

    // Before `exp` every socket is open.
    for (c, r) in [
        (&mut short, "a"),
        (&mut refreshed, "b"),
        (&mut imposter, "c"),
    ] {
        alive(c, r).await;
    }
    assert!(
        now_secs() < exp,
        "the checks above took too long to prove anything"
    );
    assert_eq!(short.next_of_close().await, Some(1008));
    let closed_after = started.elapsed();
    assert_eq!(imposter.next_of_close().await, Some(1008));
    assert!(now_secs() >= exp, "closed before the token expired");
    let after_exp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - exp as i64 * 1000;
    println!("token expiry: closed {closed_after:?} after connecting, {after_exp_ms} ms after exp");

    // The refreshed socket lives on, as the new name, with the new role.
    alive(&mut refreshed, "after").await;
    let ack = refreshed.send_msg("exp-room", "r1", "renamed").await;
    assert_eq!(ack["type"], "ack");
    let m = refreshed.messages("exp-room", 1).await;
    assert_eq!(m[0]["name"], "Rae Renamed");
    let mut victim = app.connect("vic").await;
    victim.join("exp-room").await;
    assert_eq!(
        refreshed.call(kick("k", "exp-room", "vic", false)).await["type"],
        "kicked"
    );
    assert_eq!(victim.next_of("removed").await["reason"], "kicked");
}

#[tokio::test]
async fn a_token_with_malformed_roles_is_refused_at_the_handshake() {
    let app = spawn_app().await;
    let many: Vec<&str> = std::iter::repeat_n("r", 17).collect();
    let long = "r".repeat(65);
    for roles in [many, vec![long.as_str()]] {
        let t = app.token_with("mal", "Mal", &roles, Duration::from_secs(60));
        let status =
            handshake_status(&app.ws_url(), &[("authorization", &format!("Bearer {t}"))]).await;
        assert_eq!(status, 401);
    }
    // Unknown role names are ignored, not refused.
    let t = app.token_with(
        "mal",
        "Mal",
        &["superuser", "ADMIN"],
        Duration::from_secs(60),
    );
    let mut c = app.connect_token(&t, JSON).await;
    c.join("roles-room").await;
    let mut x = app.connect("xen").await;
    x.join("roles-room").await;
    assert_eq!(
        error_code(&c.call(kick("k", "roles-room", "xen", false)).await),
        "forbidden"
    );
}

#[tokio::test]
async fn rooms_a_socket_was_removed_from_do_not_count_against_its_room_limit() {
    let (mut s, _) = test_settings().await;
    s.limits.rooms_per_connection = 2;
    let app = spawn_with(s).await;
    let mut c = app.connect("lim").await;
    c.join("lim-a").await;
    c.join("lim-b").await;
    let v = c
        .call(json!({"type":"join","ref":"j3","room":"lim-c"}))
        .await;
    assert_eq!(error_code(&v), "room_limit");
    let (st, _) = app
        .api(
            "POST",
            "/api/v1/rooms/lim-a/kick",
            Some(json!({"user":"lim"})),
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(c.next_of("removed").await["room"], "lim-a");
    assert_eq!(c.join("lim-c").await["type"], "joined");
}
