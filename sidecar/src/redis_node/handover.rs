//! `redis-node hand-over`: the preStop step of a data node. When the pod
//! going away is the master, it asks the Sentinels for a failover and waits
//! until they name another master, so a deleted or evicted master leaves
//! while a replica that holds every acknowledged write takes over, instead
//! of going dark for the Sentinels' `down-after` first.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokenplane_api::redis::AclRole;

use super::Addr;
use super::config::{Users, UsersError};
use super::discover::{self, Login, Reach, Role};

#[derive(Clone, Debug)]
pub struct HandOver {
    pub me: Addr,
    pub sentinels: Vec<Addr>,
    pub master_name: String,
    pub users_dir: PathBuf,
    /// Replicas, besides this node, the new master must have before this
    /// one goes (the cluster's `min-replicas-to-write`): the Sentinels
    /// reconfigure replicas one at a time, and this node is one of them.
    pub min_replicas: usize,
    /// How long to wait for the Sentinels to name another master and for
    /// its replicas; keep it under the pod's termination grace period.
    pub timeout: Duration,
    pub reach: Reach,
}

/// What the step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandedOver {
    /// This node is not the master: nothing to hand over.
    NotMaster,
    /// The Sentinels promoted this node.
    To(Addr),
}

#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("no Sentinel of {0:?} answered: the master leaves without a failover")]
    NoSentinel(Vec<Addr>),
    #[error("no Sentinel accepted the failover ({0}): the master leaves without one")]
    Refused(String),
    #[error("the Sentinels still name this node master after {0:?}: it leaves without a failover")]
    TimedOut(Duration),
    #[error(
        "the new master {master} has {attached} of the {wanted} other replicas it needs after {waited:?}: \
         this node leaves anyway, and writes wait for a replica"
    )]
    FewReplicas { master: Addr, attached: usize, wanted: usize, waited: Duration },
}

impl HandOver {
    pub async fn run(&self) -> Result<HandedOver, HandOverError> {
        let users = Users::load(&self.users_dir)?;
        let login = users.login(AclRole::Replication, &self.reach)?;
        let monitor = users.login(AclRole::Monitor, &self.reach)?;
        let answers = discover::sentinel_answers(&self.sentinels, &self.master_name, &login).await;
        match discover::majority(&answers) {
            None => return Err(HandOverError::NoSentinel(self.sentinels.clone())),
            Some(master) if !master.same(&self.me) => return Ok(HandedOver::NotMaster),
            Some(_) => {}
        }
        // Writes stop first: one the old master took after a replica was
        // promoted would be acknowledged by a replica not yet moved over,
        // then dropped when it resyncs from the new master.
        let started = Instant::now();
        self.pause_writes(&login, true).await;
        let handed = self.fail_over(&login, &monitor, started).await;
        if handed.is_err() {
            // Still the master: it serves until it stops, and the Sentinels
            // fail over when it is gone.
            self.pause_writes(&login, false).await;
        }
        handed
    }

    /// `CLIENT PAUSE WRITE` for the whole hand-over, or `CLIENT UNPAUSE`.
    async fn pause_writes(&self, login: &Login<'_>, pause: bool) {
        let asked = async {
            let mut conn = discover::connect(&self.me, login).await?;
            let mut cmd = redis::cmd("CLIENT");
            match pause {
                true => cmd.arg("PAUSE").arg(self.timeout.as_millis() as u64).arg("WRITE"),
                false => cmd.arg("UNPAUSE"),
            };
            cmd.query_async::<()>(&mut conn).await
        };
        if let Err(e) = asked.await {
            tracing::warn!(me = %self.me, pause, error = %e, "could not pause or resume writes");
        }
    }

    async fn fail_over(
        &self,
        login: &Login<'_>,
        monitor: &Login<'_>,
        started: Instant,
    ) -> Result<HandedOver, HandOverError> {
        let replicas = self.caught_up(monitor, started).await?;
        self.ask_for_failover(login, &replicas, started).await?;
        let master = loop {
            let answers = discover::sentinel_answers(&self.sentinels, &self.master_name, login).await;
            if let Some(master) = discover::majority(&answers).filter(|m| !m.same(&self.me)) {
                break master.clone();
            }
            if started.elapsed() >= self.timeout {
                return Err(HandOverError::TimedOut(self.timeout));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        loop {
            let attached = match discover::role(&master, monitor).await {
                Some(Role::Master { replicas, .. }) => {
                    replicas.iter().filter(|(r, _)| !r.same(&self.me)).count()
                }
                _ => 0,
            };
            if attached >= self.min_replicas {
                tracing::info!(me = %self.me, to = %master, took = ?started.elapsed(), "master handed over");
                return Ok(HandedOver::To(master));
            }
            if started.elapsed() >= self.timeout {
                let (wanted, waited) = (self.min_replicas, started.elapsed());
                return Err(HandOverError::FewReplicas { master, attached, wanted, waited });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// This master's replicas, once every one holds all it wrote.
    async fn caught_up(&self, monitor: &Login<'_>, started: Instant) -> Result<Vec<Addr>, HandOverError> {
        loop {
            if let Some(Role::Master { offset, replicas }) = discover::role(&self.me, monitor).await
                && replicas.iter().all(|(_, acked)| *acked >= offset)
            {
                return Ok(replicas.into_iter().map(|(addr, _)| addr).collect());
            }
            if started.elapsed() >= self.timeout {
                return Err(HandOverError::TimedOut(self.timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `SENTINEL FAILOVER` on the first Sentinel that takes it and knows
    /// every replica of this master (it only moves the replicas it knows:
    /// one it has not discovered yet would stay behind this node, and be
    /// cut off when it goes); one already under way counts. Asked again
    /// until the timeout: Sentinels learn replicas within seconds.
    async fn ask_for_failover(
        &self,
        login: &Login<'_>,
        replicas: &[Addr],
        started: Instant,
    ) -> Result<(), HandOverError> {
        loop {
            let mut last = String::from("no Sentinel reachable");
            for addr in discover::resolve(&self.sentinels, login).await {
                let known =
                    discover::known_replicas(&addr, &self.master_name, login).await.unwrap_or_default();
                if let Some(unknown) = replicas.iter().find(|r| !known.iter().any(|k| k.same(r))) {
                    last = format!("{addr} does not know the replica {unknown} yet");
                    continue;
                }
                let asked = async {
                    let mut conn = discover::connect(&addr, login).await?;
                    let mut failover = redis::cmd("SENTINEL");
                    failover.arg("failover").arg(&self.master_name).query_async::<()>(&mut conn).await
                };
                match asked.await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.code() == Some("INPROG") => return Ok(()),
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            if started.elapsed() >= self.timeout {
                return Err(HandOverError::Refused(last));
            }
            tracing::info!(last = %last, "no Sentinel took the failover yet");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
