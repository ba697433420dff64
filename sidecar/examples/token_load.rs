//! Token load for the benchmarks, in phases run as separate processes so a
//! script can measure a server over one phase alone:
//!
//! - `fetch`: gets `--count` access tokens from the issuer at URL
//!   (client_credentials, Basic auth) and writes them to `--tokens`, one a line;
//! - `revoke`: revokes every token of `--tokens` at the issuer at URL
//!   (`POST /oauth2/revoke`);
//! - `validate`: has the agent at URL validate every token of `--tokens`
//!   (`POST /v1/validate`, bearer).
//!
//! `revoke` and `validate` send each token once, over `--connections`
//! concurrent keep-alive connections, and print `RESULT ok=.. non200=..
//! seconds=.. per_second=.. p50_us=.. p99_us=..`. The client is `CLIENT_ID`
//! / `CLIENT_SECRET` from the environment. Any answer but 200, or any
//! transport error, fails the run (exit status 1).
//!
//! ```text
//! CLIENT_ID=demo.default CLIENT_SECRET=... token_load fetch http://127.0.0.1:8080 --tokens /tmp/t
//! CLIENT_ID=demo.default CLIENT_SECRET=... token_load revoke http://127.0.0.1:8080 --tokens /tmp/t
//! token_load validate http://127.0.0.1:8081 --tokens /tmp/t
//! ```

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(about = "Gets access tokens, then revokes or validates them under load")]
struct Args {
    /// Which phase to run.
    phase: Phase,
    /// The issuer's base URL, such as http://127.0.0.1:8080.
    url: String,
    /// File of tokens: written by `fetch`, read by `revoke`.
    #[arg(long)]
    tokens: PathBuf,
    /// How many tokens `fetch` gets.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Concurrent requests, each on its own keep-alive connection.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Client id (client_secret_basic), for `fetch` and `revoke`.
    #[arg(long, env = "CLIENT_ID", hide_env_values = true, default_value = "")]
    client_id: String,
    /// Client secret.
    #[arg(long, env = "CLIENT_SECRET", hide_env_values = true, default_value = "")]
    client_secret: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Fetch,
    Revoke,
    Validate,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    ok: usize,
    /// Status and body of the first failure, and how many failed.
    first_failure: Option<String>,
    failed: usize,
    /// Latency of every request, in microseconds.
    latencies: Vec<u32>,
    tokens: Vec<String>,
}

/// Runs `total` requests over `connections` workers; `request(i)` makes the
/// i-th and returns its status and body.
async fn drive<F, Fut>(total: usize, connections: usize, request: F) -> (Tally, Duration)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = reqwest::Result<(reqwest::StatusCode, String)>>,
{
    let next = Rc::new(AtomicUsize::new(0));
    let request = Rc::new(request);
    let started = Instant::now();
    let workers = (0..connections).map(|_| {
        let (next, request) = (next.clone(), request.clone());
        async move {
            let mut tally =
                Tally { latencies: Vec::with_capacity(total / connections + 1), ..Tally::default() };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return tally;
                }
                let sent = Instant::now();
                let outcome = request(i).await;
                tally.latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                match outcome {
                    Ok((reqwest::StatusCode::OK, body)) => {
                        tally.ok += 1;
                        tally.tokens.push(body);
                    }
                    Ok((status, body)) => {
                        tally.failed += 1;
                        tally.first_failure.get_or_insert_with(|| format!("{status}: {body}"));
                    }
                    Err(e) => {
                        tally.failed += 1;
                        tally.first_failure.get_or_insert_with(|| format!("request failed: {e}"));
                    }
                }
            }
        }
    });
    let tallies = futures::future::join_all(workers).await;
    let elapsed = started.elapsed();
    let mut all = Tally::default();
    for t in tallies {
        all.ok += t.ok;
        all.failed += t.failed;
        all.first_failure = all.first_failure.or(t.first_failure);
        all.latencies.extend(t.latencies);
        all.tokens.extend(t.tokens);
    }
    (all, elapsed)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(10))
        .build()?;
    let base = args.url.trim_end_matches('/');
    let (id, secret) = (args.client_id.as_str(), args.client_secret.as_str());

    match args.phase {
        Phase::Fetch => {
            let url = format!("{base}/oauth2/token");
            let (tally, elapsed) = drive(args.count, args.connections, |_| {
                let call = http
                    .post(&url)
                    .basic_auth(id, Some(secret))
                    .form(&[("grant_type", "client_credentials")])
                    .send();
                async move {
                    let reply = call.await?;
                    let status = reply.status();
                    let body = reply.text().await?;
                    Ok((status, body))
                }
            })
            .await;
            if let Some(failure) = tally.first_failure {
                bail!("{} of {} token requests failed; first: {failure}", tally.failed, args.count);
            }
            let mut out = String::with_capacity(tally.ok * 512);
            for body in &tally.tokens {
                let reply: serde_json::Value =
                    serde_json::from_str(body).context("token reply is not JSON")?;
                let token = reply["access_token"].as_str().context("no access_token in the token reply")?;
                out.push_str(token);
                out.push('\n');
            }
            std::fs::write(&args.tokens, out)
                .with_context(|| format!("cannot write {}", args.tokens.display()))?;
            eprintln!(
                "token_load: {} tokens in {:.2} s written to {}",
                tally.ok,
                elapsed.as_secs_f64(),
                args.tokens.display()
            );
        }
        Phase::Revoke | Phase::Validate => {
            let text = std::fs::read_to_string(&args.tokens)
                .with_context(|| format!("cannot read {}", args.tokens.display()))?;
            let tokens: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            anyhow::ensure!(!tokens.is_empty(), "no tokens in {}", args.tokens.display());
            let (revoke_url, validate_url) = (format!("{base}/oauth2/revoke"), format!("{base}/v1/validate"));
            let (mut tally, elapsed) = drive(tokens.len(), args.connections, |i| {
                let call = match args.phase {
                    Phase::Revoke => {
                        http.post(&revoke_url).basic_auth(id, Some(secret)).form(&[("token", tokens[i])])
                    }
                    _ => http.post(&validate_url).bearer_auth(tokens[i]),
                }
                .send();
                async move {
                    let reply = call.await?;
                    let status = reply.status();
                    // Only a failure's body is worth keeping.
                    let body = if status == reqwest::StatusCode::OK {
                        reply.bytes().await?;
                        String::new()
                    } else {
                        reply.text().await?
                    };
                    Ok((status, body))
                }
            })
            .await;
            tally.latencies.sort_unstable();
            let seconds = elapsed.as_secs_f64();
            println!(
                "RESULT ok={} non200={} seconds={seconds:.3} per_second={:.0} p50_us={} p99_us={}",
                tally.ok,
                tally.failed,
                tally.ok as f64 / seconds,
                percentile(&tally.latencies, 50.0),
                percentile(&tally.latencies, 99.0),
            );
            if let Some(failure) = tally.first_failure {
                bail!("{} of {} requests failed; first: {failure}", tally.failed, tokens.len());
            }
        }
    }
    Ok(())
}
