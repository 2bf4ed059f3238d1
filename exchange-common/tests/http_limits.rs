//! The public listeners' limits (`exchange_common::listen`) on real
//! sockets: slowloris connections are cut at the header-read timeout, one
//! address cannot open more than its cap (WebSockets included) while
//! another host is still served, idle connections are closed, and shutdown
//! still lets a request in flight finish.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use axum::routing::{get, post};
use exchange_common::Shutdown;
use exchange_common::listen::{Limits, serve_limited};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const HOST_A: &str = "127.0.0.1";
/// Another host: Linux routes all of 127.0.0.0/8 to the loopback device.
const HOST_B: &str = "127.0.0.2";

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(|mut socket| async move {
        // Hold the socket until the client goes.
        while let Some(Ok(_)) = socket.recv().await {}
    })
}

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/body", post(|body: String| async move { body }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "slow ok"
            }),
        )
        .route("/ws", get(ws))
}

struct Server {
    addr: SocketAddr,
    shutdown: Shutdown,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(header: Duration, idle: Duration, per_ip: u32) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let limits = Limits {
        header_read_timeout: header,
        idle_timeout: idle,
        connections_per_ip_max: per_ip,
        uncapped: Arc::new([]),
    };
    let done = tokio::spawn(serve_limited(
        listener,
        router(),
        shutdown.clone(),
        Duration::from_secs(2),
        limits,
        "test",
    ));
    Server {
        addr,
        shutdown,
        done,
    }
}

/// A TCP connection to `to` from the local address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the server closed `conn` within `within` (EOF or reset).
async fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0_u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // Bytes (an error response): keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends a whole GET on `conn` and returns the status line.
async fn get_on(conn: &mut TcpStream, path: &str) -> String {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0_u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed before an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

async fn get_from(from: &str, to: SocketAddr, path: &str) -> String {
    let mut conn = connect_from(from, to).await;
    get_on(&mut conn, path).await
}

#[tokio::test]
async fn slowloris_from_one_host_is_cut_and_capped_while_another_host_is_served() {
    let header = Duration::from_millis(700);
    let cap = 6;
    let s = start(header, Duration::from_secs(30), cap).await;

    // One host opens its whole cap of connections and sends headers a
    // byte at a time, never finishing them (and never idle).
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..cap {
        let mut c = connect_from(HOST_A, s.addr).await;
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").await.unwrap();
        slow.push(c);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            for c in &mut slow {
                // Writes fail once the server has closed: that is the point.
                let _ = c.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slow
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // (b) Above the cap, that host's next connection is closed at once.
    let mut refused = connect_from(HOST_A, s.addr).await;
    assert!(
        closed_within(&mut refused, Duration::from_millis(300)).await,
        "a connection above the per-address cap was not closed at once"
    );

    // (c) Another host is served normally meanwhile.
    assert_eq!(get_from(HOST_B, s.addr, "/").await, "HTTP/1.1 200 OK");

    // (a) The slow connections are closed at the header-read timeout
    // although bytes keep arriving.
    let mut slow = trickle.await.unwrap();
    for c in &mut slow {
        assert!(
            closed_within(c, Duration::from_millis(500)).await,
            "a slowloris connection outlived the header-read timeout"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= header && took < header + Duration::from_millis(1500),
        "cut after {took:?}"
    );
    drop(slow);

    // Their slots are given back: the first host is served again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get_from(HOST_A, s.addr, "/").await, "HTTP/1.1 200 OK");
    s.shutdown.trigger();
    s.done.await.unwrap().unwrap();
}

/// A WebSocket handshake on `conn`; returns the status line.
async fn ws_handshake(conn: &mut TcpStream) -> String {
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0_u8; 512];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn open_websockets_count_against_the_per_address_cap() {
    let cap = 3;
    let s = start(Duration::from_millis(300), Duration::from_secs(30), cap).await;
    let mut sockets = Vec::new();
    for _ in 0..cap {
        let mut c = connect_from(HOST_A, s.addr).await;
        assert_eq!(
            ws_handshake(&mut c).await,
            "HTTP/1.1 101 Switching Protocols"
        );
        sockets.push(c);
    }
    // Upgraded sockets send no request head: the header timeout is not
    // theirs, and they stay open (and counted) past it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut refused = connect_from(HOST_A, s.addr).await;
    assert!(
        closed_within(&mut refused, Duration::from_millis(300)).await,
        "open WebSockets were not counted"
    );
    assert_eq!(get_from(HOST_B, s.addr, "/").await, "HTTP/1.1 200 OK");
    for c in &mut sockets {
        assert!(!closed_within(c, Duration::from_millis(10)).await);
    }
    // One closes: its slot is free again.
    drop(sockets.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get_from(HOST_A, s.addr, "/").await, "HTTP/1.1 200 OK");
    s.shutdown.trigger();
}

#[tokio::test]
async fn idle_and_stalled_connections_are_closed() {
    let header = Duration::from_millis(400);
    let idle = Duration::from_millis(600);
    let s = start(header, idle, 16).await;

    // A keep-alive connection with no next request: closed at the header
    // timeout after its response.
    let mut kept = connect_from(HOST_A, s.addr).await;
    assert_eq!(get_on(&mut kept, "/").await, "HTTP/1.1 200 OK");
    assert!(!closed_within(&mut kept, header / 2).await);
    assert!(
        closed_within(&mut kept, header).await,
        "idle keep-alive kept"
    );

    // A request whose body stalls: closed at the idle timeout.
    let mut stalled = connect_from(HOST_A, s.addr).await;
    stalled
        .write_all(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
        .await
        .unwrap();
    assert!(!closed_within(&mut stalled, idle / 2).await);
    assert!(
        closed_within(&mut stalled, idle + Duration::from_millis(400)).await,
        "a stalled body was not cut at the idle timeout"
    );
    s.shutdown.trigger();
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_and_refuses_new_ones() {
    let s = start(Duration::from_secs(5), Duration::from_secs(5), 16).await;
    let addr = s.addr;
    let in_flight = tokio::spawn(async move { get_from(HOST_A, addr, "/slow").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.shutdown.trigger();
    assert_eq!(in_flight.await.unwrap(), "HTTP/1.1 200 OK");
    tokio::time::timeout(Duration::from_secs(2), s.done)
        .await
        .expect("serve returns once its connections are done")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}
