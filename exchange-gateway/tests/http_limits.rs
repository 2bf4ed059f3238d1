//! The gateway's public ports run with the listener limits: unauthenticated
//! private WebSockets count against the per-address cap (and outlive the
//! header-read timeout while waiting for their auth message), a further
//! connection from that address is closed at once, and another host is
//! still served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

mod support;

async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends `request` and returns the status line of the answer, or `None`
/// when the server closed the connection without one.
async fn exchange(conn: &mut TcpStream, request: &str) -> Option<String> {
    let _ = conn.write_all(request.as_bytes()).await;
    let mut got = Vec::new();
    let mut buf = [0_u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            Ok(_) => return None,
            Err(_) => panic!("no answer and no close within 3 s"),
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .map(str::to_owned)
}

const WS_HANDSHAKE: &str = "GET /ws/private HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test]
async fn unauthenticated_private_websockets_count_against_the_per_address_cap() {
    let cap = 8;
    let app = support::spawn_with(|c| {
        c.http.header_read_timeout = Duration::from_millis(400);
        c.http.connections_per_ip_max = cap;
    })
    .await;
    let ws_addr: SocketAddr = app.ws_url.trim_start_matches("ws://").parse().unwrap();
    let mut sockets = Vec::new();
    for _ in 0..cap {
        let mut c = connect_from("127.0.0.1", ws_addr).await;
        assert_eq!(
            exchange(&mut c, WS_HANDSHAKE).await.as_deref(),
            Some("HTTP/1.1 101 Switching Protocols")
        );
        sockets.push(c);
    }
    // Past the header-read timeout the sockets (no auth message sent yet)
    // are still open and still counted.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut refused = connect_from("127.0.0.1", ws_addr).await;
    assert_eq!(exchange(&mut refused, HEALTH).await, None);
    let mut other = connect_from("127.0.0.2", ws_addr).await;
    assert_eq!(
        exchange(&mut other, HEALTH).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    drop(sockets);
}
