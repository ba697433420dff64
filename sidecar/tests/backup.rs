//! `tokenplane-sidecar backup` as the CronJob runs it, as the backup user
//! with exactly its role's rules, and the restore docs/redis.md describes:
//! the snapshot loaded by a fresh redis-server holds every key.

mod support;

use std::time::Duration;

use tokenplane_api::acl;

const BACKUP_PASSWORD: &str = "backup-password-0123456789abcdefghijklm";

#[tokio::test]
async fn a_snapshot_restores_every_key_and_only_the_newest_are_kept() {
    let cluster = support::redis::cluster().await;
    cluster.add_user("backup", BACKUP_PASSWORD, acl::BACKUP).await.unwrap();
    let master = cluster.master_addr().await.unwrap();
    let mut admin = cluster.admin_connection(&master).await.unwrap();
    let mut seed = redis::pipe();
    for i in 0..500 {
        seed.set(format!("auth:client:c{i}"), format!("record {i}")).ignore();
    }
    seed.zadd("auth:revoked", "jti-1", 4_000_000_000u64).ignore();
    let () = seed.query_async(&mut admin).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("backups");
    std::fs::create_dir(&out).unwrap();
    let run = || {
        let mut cmd = support::redis::job(&cluster, "backup", ("backup", BACKUP_PASSWORD), dir.path());
        cmd.arg("--out-dir").arg(&out).args(["--retain", "2"]);
        cmd.output()
    };
    for _ in 0..3 {
        let done = run().await.unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
        // Snapshots are named by the second they were taken.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let mut kept: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "the newest two of three: {kept:?}");
    assert_eq!(cluster.acl_denials().await.unwrap(), Vec::<String>::new(), "the backup rules are enough");

    // Restore: the newest snapshot as dump.rdb of a node without an AOF.
    let restored = tempfile::tempdir().unwrap();
    std::fs::copy(kept.last().unwrap(), restored.path().join("dump.rdb")).unwrap();
    let port = tokenplane_testkit::free_port().unwrap();
    let mut server = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--appendonly", "no", "--save", ""])
        .arg("--dir")
        .arg(restored.path())
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = loop {
        if let Ok(c) = client.get_multiplexed_async_connection().await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let size: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert_eq!(size, 501);
    let record: String = redis::cmd("GET").arg("auth:client:c499").query_async(&mut conn).await.unwrap();
    assert_eq!(record, "record 499");
    server.start_kill().unwrap();
}
