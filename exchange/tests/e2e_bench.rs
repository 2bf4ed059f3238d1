//! `exchange bench` against the real services: a short run places orders,
//! sees them settle through the private WebSocket and prints its figures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Command;

use support::{ADMIN_TOKEN, BIN, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_places_orders_and_sees_them_settle() {
    let c = Cluster::start().await;
    let out = tokio::task::spawn_blocking({
        let (url, ws) = (c.url.clone(), c.ws_url.clone());
        move || {
            Command::new(&*BIN)
                .args([
                    "bench",
                    "--gateway",
                    &url,
                    "--ws",
                    &ws,
                    "--admin-token",
                    ADMIN_TOKEN,
                ])
                .args([
                    "--users",
                    "4",
                    "--duration",
                    "3",
                    "--setup",
                    "--settle-timeout",
                    "20",
                ])
                .output()
                .expect("run exchange bench")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "bench failed: {stdout}\n{stderr}");
    assert!(stdout.contains("via the private WebSocket"), "{stdout}");
    let count = |prefix: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"));
        line[prefix.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let accepted = count("accepted: ");
    let settled = count("settled:  ");
    assert!(accepted > 10, "{stdout}");
    // Crossing pairs: all but the few orders resting at the end fill.
    assert!(settled + 4 >= accepted, "{stdout}");
    assert!(stdout.contains("errors: none"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_without_a_private_websocket_polls_a_sample() {
    let c = Cluster::start().await;
    let out = tokio::task::spawn_blocking({
        let url = c.url.clone();
        move || {
            // Nothing listens on port 9 (discard): the bench falls back to polling.
            Command::new(&*BIN)
                .args(["bench", "--gateway", &url, "--ws", "ws://127.0.0.1:9"])
                .args([
                    "--admin-token",
                    ADMIN_TOKEN,
                    "--users",
                    "2",
                    "--duration",
                    "2",
                ])
                .args(["--setup", "--settle-timeout", "20"])
                .output()
                .expect("run exchange bench")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(out.status.success(), "bench failed: {stdout}\n{stderr}");
    assert!(
        stdout.contains("via polling GET /api/v1/orders/{id}"),
        "{stdout}"
    );
    assert!(stdout.contains("sampled orders seen filled"), "{stdout}");
}
