//! `tokenplane-sidecar cleanup` as the CronJob runs it: the real binary, as
//! the cleanup user with exactly its role's rules, on a real Sentinel
//! cluster, twice at once.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use tokenplane_api::{acl, storage};

const CLEANUP_PASSWORD: &str = "cleanup-password-0123456789abcdefghijkl";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn expired_index_members_are_pruned_once_and_live_ones_kept() {
    let cluster = support::redis::cluster().await;
    cluster.add_user("cleanup", CLEANUP_PASSWORD, acl::CLEANUP).await.unwrap();
    let master = cluster.master_addr().await.unwrap();
    let mut admin = cluster.admin_connection(&master).await.unwrap();
    let (past, future) = (now() - 100, now() + 3600);
    let mut seed = redis::pipe();
    for i in 0..1000 {
        seed.zadd(storage::REVOKED, format!("old-{i}"), past).ignore();
    }
    for i in 0..10 {
        seed.zadd(storage::REVOKED, format!("live-{i}"), future).ignore();
    }
    for f in 0..60 {
        let key = storage::family_access(&format!("fam{f}"));
        seed.zadd(&key, "expired", past).ignore().zadd(&key, "live", future).ignore();
    }
    // Not an index: left alone whatever its name.
    seed.set("auth:family:odd:access", "a string").ignore();
    let () = seed.query_async(&mut admin).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let mut cmd = support::redis::job(&cluster, "cleanup", ("cleanup", CLEANUP_PASSWORD), dir.path());
        cmd.args(["--batch", "7"]);
        cmd.output()
    };
    let (a, b) = tokio::join!(run(), run());
    let (a, b) = (a.unwrap(), b.unwrap());
    let logs = format!("{}\n{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert!(a.status.success() && b.status.success(), "{logs}");

    let revoked: Vec<String> =
        redis::cmd("ZRANGE").arg(storage::REVOKED).arg(0).arg(-1).query_async(&mut admin).await.unwrap();
    assert_eq!(revoked.len(), 10, "only the live revocations stay");
    assert!(revoked.iter().all(|m| m.starts_with("live-")));
    for f in 0..60 {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(storage::family_access(&format!("fam{f}")))
            .arg(0)
            .arg(-1)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(members, ["live"]);
    }
    let odd: String = redis::cmd("GET").arg("auth:family:odd:access").query_async(&mut admin).await.unwrap();
    assert_eq!(odd, "a string");
    // Two runs at once: each member was removed by one of them.
    let total = |field: &str| -> u64 {
        logs.lines()
            .filter_map(|l| l.split(&format!("{field}=")).nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!((total("revoked"), total("family_members")), (1000, 60), "{logs}");
    assert_eq!(cluster.acl_denials().await.unwrap(), Vec::<String>::new(), "the cleanup rules are enough");
}
