//! Measures client round trips against an in-process server: point SELECT latency on one
//! connection and `UPDATE … WHERE id = k` throughput over four.
//!
//! ```sh
//! cargo run --release -p hindsight-primary --example roundtrip
//! ```

use std::time::{Duration, Instant};

use hindsight_primary::client::{Client, ConnectOptions};
use hindsight_primary::config::ServerConfig;
use hindsight_primary::Server;

const ROWS: i64 = 10_000;
const SELECTS: usize = 20_000;
const UPDATE_SECONDS: u64 = 3;
const CONNECTIONS: usize = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let config = ServerConfig::from_toml(
        &std::env::var("ROUNDTRIP_CONFIG")
            .unwrap_or_else(|_| "listen = \"127.0.0.1:0\"\n[auth]\nadmin = \"bench\"\n".into()),
    )?;
    let server = Server::start(dir.path(), config).await?;
    let addr = server.local_addr();
    let options = ConnectOptions { password: "bench".into(), ..ConnectOptions::default() };
    let mut client = Client::connect(addr, options.clone()).await?;
    client.query("CREATE TABLE t (id BIGINT PRIMARY KEY, n BIGINT)").await?;
    let values: Vec<String> = (0..ROWS).map(|i| format!("({i}, 0)")).collect();
    client.query(&format!("INSERT INTO t VALUES {}", values.join(","))).await?;

    let mut latencies = Vec::with_capacity(SELECTS);
    for i in 0..SELECTS {
        let sql = format!("SELECT n FROM t WHERE id = {}", i as i64 % ROWS);
        let started = Instant::now();
        client.query(&sql).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!("point SELECT: p50 {:?}  p99 {:?}  max {:?}", pct(0.5), pct(0.99), pct(1.0));

    let deadline = Instant::now() + Duration::from_secs(UPDATE_SECONDS);
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let mut client = Client::connect(addr, options.clone()).await?;
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut k = c as i64;
            while Instant::now() < deadline {
                client
                    .query(&format!("UPDATE t SET n = n + 1 WHERE id = {}", k % ROWS))
                    .await
                    .expect("update");
                k += CONNECTIONS as i64;
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await?;
    }
    println!("UPDATE over {CONNECTIONS} connections: {:.0}/s", total as f64 / UPDATE_SECONDS as f64);
    server.shutdown().await;
    Ok(())
}
