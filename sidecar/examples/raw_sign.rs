//! The floor of what a token costs to sign, for hack/bench.sh: one aws-lc-rs
//! Ed25519 signature over a JWS signing input as long as the sample
//! client's access token's, with the key parsed once, repeated for the
//! given seconds on one thread. Prints `RESULT ok=<signatures>
//! cpu_us=<CPU time of the loop>`, the CPU time from /proc/self/schedstat
//! (time on a CPU, hypervisor steal excluded, as in /proc/PID/stat).
//!
//! `taskset -c 0 target/release/examples/raw_sign 5`

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_lc_rs::signature::Ed25519KeyPair;

/// Signing input of the issuer's EdDSA access token for the sample client:
/// the token (468 bytes) without its `.` and 86-byte signature.
const SIGNING_INPUT_LEN: usize = 381;

/// Nanoseconds this process has spent on a CPU.
fn cpu_ns() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/schedstat").context("cannot read /proc/self/schedstat")?;
    let first = stat.split_whitespace().next().context("empty /proc/self/schedstat")?;
    first.parse().context("unreadable /proc/self/schedstat")
}

fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::args().nth(1).context("usage: raw_sign SECONDS")?.parse()?;
    let key = Ed25519KeyPair::generate().context("key generation")?;
    let input = vec![b'e'; SIGNING_INPUT_LEN];
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = cpu_ns()?;
    let mut signatures = 0u64;
    while Instant::now() < until {
        for _ in 0..100 {
            black_box(key.sign(black_box(&input)));
        }
        signatures += 100;
    }
    let used = cpu_ns()? - start;
    println!("RESULT ok={signatures} cpu_us={:.0}", used as f64 / 1000.0);
    Ok(())
}
