//! `redis-node start`: where this pod belongs in the cluster, decided from
//! what the Sentinels and the other nodes say, then its final file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokenplane_api::redis::AclRole;

use super::Addr;
use super::config::{self, SentinelSetup, Users, UsersError};
use super::discover::{self, Login, Reach, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A data node (redis-server).
    Node,
    Sentinel,
}

/// Where the pod was placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Master,
    ReplicaOf(Addr),
    /// A Sentinel, monitoring this master.
    Monitoring(Addr),
}

/// Everything `start` is told.
#[derive(Clone, Debug)]
pub struct Start {
    pub kind: Kind,
    /// The operator's file, without secrets.
    pub template: PathBuf,
    /// The file Redis or Sentinel runs with.
    pub out: PathBuf,
    pub users_dir: PathBuf,
    /// This pod's stable name and port, as its peers reach it.
    pub me: Addr,
    /// The Sentinels; a name may resolve to several (a headless Service).
    pub sentinels: Vec<Addr>,
    /// Every data node.
    pub nodes: Vec<Addr>,
    pub master_name: String,
    /// The master of a cluster that has none yet.
    pub first_master: Addr,
    pub quorum: u32,
    /// How long a data node waits for the Sentinels before it decides from
    /// the nodes alone, and for a failover it must not pre-empt.
    pub wait: Duration,
    pub reach: Reach,
    /// Where to copy this binary, for the Redis container's preStop.
    pub copy_self_to: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error("cannot read the template {file}: {source}")]
    Template { file: PathBuf, source: std::io::Error },
    #[error("cannot write {file}: {source}; the directory must be a writable volume")]
    Write { file: PathBuf, source: std::io::Error },
    #[error("cannot copy this binary to {file}: {source}")]
    CopySelf { file: PathBuf, source: std::io::Error },
    #[error("master name {0:?}: use 1 to 64 letters, digits, '-', '_' or '.'")]
    MasterName(String),
    #[error(
        "the Sentinels still name this node ({me}) master, it keeps no data (appendonly no) and other \
         nodes hold some: serving now as an empty master would wipe them. Waited {waited:?} for the \
         Sentinels to fail over; check that a majority of them is up (they need {quorum} to agree)"
    )]
    WouldWipe { me: Addr, waited: Duration, quorum: u32 },
}

impl Start {
    /// Decides this pod's place and writes its file.
    pub async fn run(&self) -> Result<Place, StartError> {
        if !tokenplane_api::redis::valid_master_name(&self.master_name) {
            return Err(StartError::MasterName(self.master_name.clone()));
        }
        let users = Users::load(&self.users_dir)?;
        let template = std::fs::read_to_string(&self.template)
            .map_err(|source| StartError::Template { file: self.template.clone(), source })?;
        let login = users.login(AclRole::Monitor, &self.reach)?;
        let (place, conf) = match self.kind {
            Kind::Node => {
                let place = self.node_place(&template, &login).await?;
                let master = match &place {
                    Place::ReplicaOf(m) => Some(m),
                    _ => None,
                };
                let conf = config::node_config(&template, &self.me, master, &users)?;
                (place, conf)
            }
            Kind::Sentinel => {
                let master = self.sentinel_master(&login).await;
                let previous = std::fs::read_to_string(&self.out).unwrap_or_default();
                let setup = SentinelSetup {
                    master_name: &self.master_name,
                    master: &master,
                    quorum: self.quorum,
                    myid: config::myid(&previous),
                };
                let conf = config::sentinel_config(&template, &self.me, &setup, &users)?;
                (Place::Monitoring(master), conf)
            }
        };
        write_private(&self.out, &conf)?;
        if let Some(to) = &self.copy_self_to {
            copy_self(to)?;
        }
        tracing::info!(me = %self.me, place = ?place, file = %self.out.display(), "configuration written");
        Ok(place)
    }

    /// A data node follows the master most Sentinels name. It serves as
    /// master only if they name it and it has its data (or nobody has any),
    /// or if no Sentinel answers within `wait` and the nodes make it so.
    async fn node_place(&self, template: &str, login: &Login<'_>) -> Result<Place, StartError> {
        let persistent = template.lines().any(|l| l.trim() == "appendonly yes");
        let started = Instant::now();
        loop {
            let answers = discover::sentinel_answers(&self.sentinels, &self.master_name, login).await;
            match discover::majority(&answers) {
                Some(master) if !master.same(&self.me) => return Ok(Place::ReplicaOf(master.clone())),
                Some(_) if persistent || !self.peers_hold_data(login).await => return Ok(Place::Master),
                Some(_) if started.elapsed() >= self.wait => {
                    return Err(StartError::WouldWipe {
                        me: self.me.clone(),
                        waited: started.elapsed(),
                        quorum: self.quorum,
                    });
                }
                Some(_) => tracing::info!(
                    me = %self.me,
                    "the Sentinels still name this empty node master while others hold data: waiting for their failover"
                ),
                None if started.elapsed() >= self.wait => return Ok(self.place_by_nodes(login).await),
                None => tracing::info!(sentinels = answers.len(), "no Sentinel answers yet"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether another node holds any of the replication stream.
    async fn peers_hold_data(&self, login: &Login<'_>) -> bool {
        for node in self.nodes.iter().filter(|n| !n.same(&self.me)) {
            if discover::replication_offset(node, login).await.is_some_and(|offset| offset > 0) {
                return true;
            }
        }
        false
    }

    /// Without the Sentinels: a node that says it is master, else the
    /// first master of a new cluster.
    async fn place_by_nodes(&self, login: &Login<'_>) -> Place {
        match self.running_master(login).await {
            Some(master) if !master.same(&self.me) => Place::ReplicaOf(master),
            _ if self.first_master.same(&self.me) => Place::Master,
            _ => Place::ReplicaOf(self.first_master.clone()),
        }
    }

    async fn running_master(&self, login: &Login<'_>) -> Option<Addr> {
        for node in self.nodes.iter().filter(|n| !n.same(&self.me)) {
            if matches!(discover::role(node, login).await, Some(Role::Master { .. })) {
                return Some(node.clone());
            }
        }
        None
    }

    /// A Sentinel monitors the master its peers name; with no peer up (a
    /// new cluster, or every Sentinel restarted), the node that says it is
    /// master, else the first master.
    async fn sentinel_master(&self, login: &Login<'_>) -> Addr {
        let answers = discover::sentinel_answers(&self.sentinels, &self.master_name, login).await;
        if let Some(master) = discover::majority(&answers) {
            return master.clone();
        }
        self.running_master(login).await.unwrap_or_else(|| self.first_master.clone())
    }
}

/// This binary at `to`, runnable by the pod's user.
fn copy_self(to: &Path) -> Result<(), StartError> {
    let failed = |source| StartError::CopySelf { file: to.to_owned(), source };
    let me = std::env::current_exe().map_err(failed)?;
    let tmp = to.with_extension("tmp");
    std::fs::copy(&me, &tmp).map_err(failed)?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o550)).map_err(failed)?;
    std::fs::rename(&tmp, to).map_err(failed)
}

/// Writes `text` readable by this user only, replacing `file` at once.
fn write_private(file: &Path, text: &str) -> Result<(), StartError> {
    let failed = |source| StartError::Write { file: file.to_owned(), source };
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(failed)?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(failed)?;
    std::fs::rename(&tmp, file).map_err(failed)
}
