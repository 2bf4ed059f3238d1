//! A listenKey belongs to the API key that made it: only that key (from an
//! address its allow-list admits, with the key header alone, as ccxt sends
//! it) keeps it alive or closes it; deleting the key, or its expiry, ends
//! the listenKey and closes its open WebSocket; the WebSocket honours the
//! allow-list too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{Value, json};
use support::{App, next_json, read};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// A new API key of the logged-in user: (id, api_key).
async fn new_key(app: &App, token: &str, extra: Value) -> (i64, String) {
    let mut body = json!({"permissions": ["read"]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (s, v) = app
        .send(Method::POST, "/api/v1/api-keys", token, Some(&body))
        .await;
    assert_eq!(s, 201, "{v}");
    (
        v["id"].as_i64().unwrap(),
        v["api_key"].as_str().unwrap().to_owned(),
    )
}

async fn stream_call(
    app: &App,
    method: Method,
    api_key: &str,
    listen_key: Option<&str>,
    from: Option<&str>,
) -> (u16, Value) {
    let url = match listen_key {
        Some(k) => format!("{}/api/v3/userDataStream?listenKey={k}", app.url),
        None => format!("{}/api/v3/userDataStream", app.url),
    };
    let mut req = app
        .client
        .request(method, url)
        .header("X-MBX-APIKEY", api_key);
    if let Some(ip) = from {
        req = req.header("x-forwarded-for", ip);
    }
    read(req.send().await.unwrap()).await
}

async fn open_ws(app: &App, listen_key: &str, from: Option<&str>) -> Result<support::Ws, u16> {
    let mut req = format!("{}/ws/{listen_key}", app.ws_url)
        .into_client_request()
        .unwrap();
    if let Some(ip) = from {
        req.headers_mut()
            .insert("x-forwarded-for", ip.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn a_listen_key_belongs_to_its_api_key() {
    let app =
        support::spawn_with(|c| c.gateway.trusted_proxies = vec!["127.0.0.1".to_owned()]).await;
    app.register("alice@example.com").await;
    let token = app.login("alice@example.com").await;
    let (k1_id, k1) = new_key(&app, &token, json!({})).await;
    let (_, k2) = new_key(&app, &token, json!({})).await;

    // One listenKey per API key; POST again renews the same one.
    let (s, v) = stream_call(&app, Method::POST, &k1, None, None).await;
    assert_eq!(s, 200, "{v}");
    let l1 = v["listenKey"].as_str().unwrap().to_owned();
    let (_, v) = stream_call(&app, Method::POST, &k1, None, None).await;
    assert_eq!(v["listenKey"], l1.as_str());
    let (_, v) = stream_call(&app, Method::POST, &k2, None, None).await;
    let l2 = v["listenKey"].as_str().unwrap().to_owned();
    assert_ne!(l1, l2);

    // Another key of the same user can neither keep it alive nor close it.
    for method in [Method::PUT, Method::DELETE] {
        let (s, v) = stream_call(&app, method, &k2, Some(&l1), None).await;
        assert_eq!((s, v["code"].as_i64()), (400, Some(-1125)), "{v}");
    }
    let (s, v) = stream_call(&app, Method::PUT, &k1, Some(&l1), None).await;
    assert_eq!((s, v), (200, json!({})));

    // Deleting the key ends its listenKey and its open stream at once;
    // the other key's listenKey lives on.
    let mut ws = open_ws(&app, &l1, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, _) = app
        .send(
            Method::DELETE,
            &format!("/api/v1/api-keys/{k1_id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(s, 204);
    let msg = next_json(&mut ws).await;
    assert_eq!(msg["e"], "listenKeyExpired", "{msg}");
    assert_eq!(msg["listenKey"], l1.as_str());
    assert!(open_ws(&app, &l1, None).await.is_err());
    let (s, _) = stream_call(&app, Method::PUT, &k2, Some(&l2), None).await;
    assert_eq!(s, 200);

    // A key that expires: its stream ends when it does.
    let soon = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 2_000;
    let (_, k3) = new_key(&app, &token, json!({"expires_at": soon})).await;
    let (s, v) = stream_call(&app, Method::POST, &k3, None, None).await;
    assert_eq!(s, 200, "{v}");
    let l3 = v["listenKey"].as_str().unwrap().to_owned();
    let mut ws = open_ws(&app, &l3, None).await.unwrap();
    let msg = next_json(&mut ws).await;
    assert_eq!(msg["e"], "listenKeyExpired", "{msg}");
    let (s, v) = stream_call(&app, Method::PUT, &k3, Some(&l3), None).await;
    assert_eq!((s, v["code"].as_i64()), (401, Some(-2015)), "{v}");
}

#[tokio::test]
async fn the_ip_allow_list_holds_for_the_key_header_alone_and_the_websocket() {
    let app =
        support::spawn_with(|c| c.gateway.trusted_proxies = vec!["127.0.0.1".to_owned()]).await;
    app.register("bob@example.com").await;
    let token = app.login("bob@example.com").await;
    let (_, key) = new_key(&app, &token, json!({"ip_allowlist": ["203.0.113.9"]})).await;

    // From elsewhere: refused, whatever the method.
    let (s, v) = stream_call(&app, Method::POST, &key, None, Some("198.51.100.7")).await;
    assert_eq!((s, v["code"].as_i64()), (401, Some(-2015)), "{v}");
    let (s, v) = stream_call(&app, Method::POST, &key, None, Some("203.0.113.9")).await;
    assert_eq!(s, 200, "{v}");
    let listen_key = v["listenKey"].as_str().unwrap().to_owned();
    for method in [Method::PUT, Method::DELETE] {
        let (s, v) = stream_call(&app, method, &key, Some(&listen_key), Some("198.51.100.7")).await;
        assert_eq!((s, v["code"].as_i64()), (401, Some(-2015)), "{v}");
    }
    // The stream itself: only from the allowed address.
    assert_eq!(
        open_ws(&app, &listen_key, Some("198.51.100.7")).await.err(),
        Some(401)
    );
    assert!(
        open_ws(&app, &listen_key, Some("203.0.113.9"))
            .await
            .is_ok()
    );
    let (s, _) = stream_call(
        &app,
        Method::PUT,
        &key,
        Some(&listen_key),
        Some("203.0.113.9"),
    )
    .await;
    assert_eq!(s, 200);
}
