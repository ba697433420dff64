//! The final configuration files, as pure functions of the template, the
//! pod's identity, the master and the users.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokenplane_api::acl::{self, DEFAULT_OFF};
use tokenplane_api::redis::AclRole;

use super::Addr;
use super::discover::{Login, Reach};

/// A user as mounted: its password where this pod logs in with it, and the
/// hashes of every password it accepts.
#[derive(Clone, PartialEq, Eq)]
struct User {
    role: AclRole,
    password: Option<String>,
    hashes: Vec<String>,
}

/// The users a pod creates, read from its users directory: `<user>` holds
/// a password, `<user>.sha256` the hash of one, and `<user>.also.sha256`
/// (empty but while a rotation overlaps) the hash of another it accepts.
#[derive(Clone, Default)]
pub struct Users(BTreeMap<String, User>);

/// Never prints a password.
impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// What one file of the users directory gives a user.
enum Entry {
    Password(String),
    Hash(String),
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read the users directory {dir}: {source}; mount the role Secrets there")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("cannot read {file}: {source}")]
    File { file: PathBuf, source: std::io::Error },
    #[error("{file}: {user:?} is not a role of a RedisSentinelCluster")]
    UnknownUser { file: PathBuf, user: String },
    #[error(
        "{file}: a password must be printable ASCII without spaces (it goes into a configuration line); \
         regenerate the role Secret"
    )]
    BadPassword { file: PathBuf },
    #[error("{file}: not a SHA-256 in lowercase hex")]
    BadHash { file: PathBuf },
    #[error("no password for the {0} user in the users directory: it is needed to log in")]
    Missing(&'static str),
}

impl Users {
    pub fn load(dir: &Path) -> Result<Self, UsersError> {
        let entries = std::fs::read_dir(dir).map_err(|source| UsersError::Dir { dir: dir.into(), source })?;
        let mut users: BTreeMap<String, User> = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| UsersError::Dir { dir: dir.into(), source })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Kubernetes' projected volumes keep their data behind `..` links.
            if name.starts_with("..") {
                continue;
            }
            let file = entry.path();
            let text = std::fs::read_to_string(&file)
                .map_err(|source| UsersError::File { file: file.clone(), source })?;
            let text = text.strip_suffix('\n').unwrap_or(&text).to_owned();
            let (user, entry) = match name
                .strip_suffix(".also.sha256")
                .or_else(|| name.strip_suffix(".sha256"))
            {
                Some(user) if text.is_empty() && name.ends_with(".also.sha256") => (user.to_owned(), None),
                Some(user) => {
                    let ok = text.len() == 64
                        && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                    ok.then_some(()).ok_or_else(|| UsersError::BadHash { file: file.clone() })?;
                    (user.to_owned(), Some(Entry::Hash(text)))
                }
                None => {
                    let ok = !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
                    ok.then_some(()).ok_or_else(|| UsersError::BadPassword { file: file.clone() })?;
                    (name, Some(Entry::Password(text)))
                }
            };
            let role =
                acl::role_named(&user).ok_or_else(|| UsersError::UnknownUser { file, user: user.clone() })?;
            let known = users.entry(user).or_insert(User { role, password: None, hashes: Vec::new() });
            match entry {
                Some(Entry::Password(p)) => {
                    known.hashes.push(acl::password_hash(&p));
                    known.password = Some(p);
                }
                Some(Entry::Hash(h)) => known.hashes.push(h),
                None => {}
            }
        }
        for user in users.values_mut() {
            user.hashes.sort();
            user.hashes.dedup();
        }
        Ok(Self(users))
    }

    /// The password of `role`'s user, when mounted.
    pub fn password(&self, role: AclRole) -> Result<&str, UsersError> {
        self.0
            .get(acl::username(role))
            .and_then(|u| u.password.as_deref())
            .ok_or(UsersError::Missing(acl::username(role)))
    }

    /// How to log in as `role`'s user, with its mounted password.
    pub(super) fn login<'a>(&'a self, role: AclRole, reach: &'a Reach) -> Result<Login<'a>, UsersError> {
        Ok(Login { username: acl::username(role), password: self.password(role)?, reach })
    }

    /// `user` directives for every user, with `rules` of its role; users
    /// whose role has none here are left out.
    fn directives(&self, rules: impl Fn(AclRole) -> Option<&'static str>) -> String {
        let mut out = format!("user default {DEFAULT_OFF}\n");
        for (name, user) in &self.0 {
            let Some(rules) = rules(user.role) else { continue };
            let hashes: Vec<String> = user.hashes.iter().map(|h| format!("#{h}")).collect();
            out.push_str(&format!("user {name} on {} {rules}\n", hashes.join(" ")));
        }
        out
    }
}

/// A data node's redis.conf: the template, then what this pod adds.
pub fn node_config(
    template: &str,
    me: &Addr,
    master: Option<&Addr>,
    users: &Users,
) -> Result<String, UsersError> {
    let mut conf = format!(
        "{template}\n# Added by tokenplane-sidecar redis-node start.\n\
         replica-announce-ip {}\n\
         replica-announce-port {}\n\
         masterauth {}\n",
        me.host,
        me.port,
        users.password(AclRole::Replication)?,
    );
    if let Some(master) = master {
        conf.push_str(&format!("replicaof {} {}\n", master.host, master.port));
    }
    conf.push_str(&users.directives(|role| Some(acl::node_rules(role))));
    Ok(conf)
}

/// What a Sentinel's file needs besides the template.
pub struct SentinelSetup<'a> {
    pub master_name: &'a str,
    pub master: &'a Addr,
    pub quorum: u32,
    /// The id of this Sentinel from its previous file, kept so that its
    /// peers see the same Sentinel come back.
    pub myid: Option<&'a str>,
}

/// A Sentinel's sentinel.conf: `sentinel monitor` first (the template's
/// per-master settings need it), the template, then what this pod adds.
pub fn sentinel_config(
    template: &str,
    me: &Addr,
    setup: &SentinelSetup<'_>,
    users: &Users,
) -> Result<String, UsersError> {
    let name = setup.master_name;
    let password = users.password(AclRole::Sentinel)?;
    let mut conf = format!(
        "sentinel monitor {name} {} {} {}\n{template}\n# Added by tokenplane-sidecar redis-node start.\n\
         sentinel announce-ip {}\n\
         sentinel announce-port {}\n\
         sentinel auth-pass {name} {password}\n\
         sentinel sentinel-pass {password}\n",
        setup.master.host, setup.master.port, setup.quorum, me.host, me.port,
    );
    if let Some(id) = setup.myid {
        conf.push_str(&format!("sentinel myid {id}\n"));
    }
    conf.push_str(&users.directives(acl::sentinel_rules));
    Ok(conf)
}

/// The `sentinel myid` of an existing sentinel.conf, if it is a well-formed one.
pub fn myid(existing: &str) -> Option<&str> {
    existing
        .lines()
        .find_map(|l| l.strip_prefix("sentinel myid "))
        .map(str::trim)
        .filter(|id| id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(files: &[(&str, &str)]) -> Result<Users, UsersError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Users::load(dir.path())
    }

    #[test]
    fn a_node_announces_itself_follows_its_master_and_creates_its_users() {
        let hash = acl::password_hash("op-pw");
        let users = users(&[("replication", "repl-pw\n"), ("operator.sha256", &hash), ("monitor", "mon-pw")])
            .unwrap();
        let me = Addr::parse("r-1.r.ns.svc.cluster.local:6379").unwrap();
        let master = Addr::parse("r-0.r.ns.svc.cluster.local:6379").unwrap();
        let conf = node_config("port 6379", &me, Some(&master), &users).unwrap();
        let lines: Vec<&str> = conf.lines().collect();
        for line in [
            "port 6379",
            "replica-announce-ip r-1.r.ns.svc.cluster.local",
            "masterauth repl-pw",
            "replicaof r-0.r.ns.svc.cluster.local 6379",
            "user default off resetkeys resetchannels -@all",
        ] {
            assert!(lines.contains(&line), "{line:?} in\n{conf}");
        }
        assert!(conf.contains(&format!("user operator on #{hash} {}", acl::OPERATOR)));
        assert!(conf.contains(&format!(
            "user monitor on #{} {}",
            acl::password_hash("mon-pw"),
            acl::MONITOR
        )));
        assert!(!conf.contains("op-pw") && !conf.contains("mon-pw"), "only hashes of the users' passwords");
        assert!(!node_config("", &me, None, &users).unwrap().contains("replicaof"));
    }

    #[test]
    fn while_a_rotation_overlaps_a_user_accepts_both_passwords() {
        let next = acl::password_hash("next-pw");
        let users = users(&[
            ("replication", "repl-pw"),
            ("replication.also.sha256", &next),
            ("operator.sha256", &acl::password_hash("op-pw")),
            ("operator.also.sha256", ""),
        ])
        .unwrap();
        let me = Addr::parse("r-1.r.ns.svc.cluster.local:6379").unwrap();
        let conf = node_config("", &me, None, &users).unwrap();
        let mut both = [acl::password_hash("repl-pw"), next].map(|h| format!("#{h}"));
        both.sort();
        assert!(
            conf.contains(&format!("user replication on {} {}", both.join(" "), acl::REPLICATION)),
            "{conf}"
        );
        assert!(conf.contains("masterauth repl-pw"), "it logs in with its current password");
        assert!(
            conf.contains(&format!("user operator on #{} {}", acl::password_hash("op-pw"), acl::OPERATOR)),
            "an empty also-file adds nothing: {conf}"
        );
    }

    #[test]
    fn a_sentinel_monitors_first_and_keeps_its_id() {
        let users = users(&[("sentinel", "s-pw"), ("monitor", "m-pw")]).unwrap();
        let me = Addr::parse("s-0.s.ns.svc.cluster.local:26379").unwrap();
        let master = Addr::parse("r-0.r.ns.svc.cluster.local:6379").unwrap();
        let id = "a".repeat(40);
        let setup = SentinelSetup { master_name: "tp", master: &master, quorum: 2, myid: Some(&id) };
        let conf = sentinel_config("sentinel down-after-milliseconds tp 5000", &me, &setup, &users).unwrap();
        assert!(conf.starts_with("sentinel monitor tp r-0.r.ns.svc.cluster.local 6379 2\n"), "{conf}");
        for line in
            ["sentinel auth-pass tp s-pw", "sentinel sentinel-pass s-pw", &format!("sentinel myid {id}")]
        {
            assert!(conf.lines().any(|l| l == line), "{line:?} in\n{conf}");
        }
        assert!(conf.contains(&format!(
            "user monitor on #{} {}",
            acl::password_hash("m-pw"),
            acl::SENTINEL_CLIENT
        )));
        assert_eq!(myid(&conf), Some(id.as_str()));
        assert_eq!(myid("sentinel myid short"), None);
    }

    #[test]
    fn a_bad_users_directory_is_a_clear_error() {
        assert!(matches!(users(&[("root", "pw")]), Err(UsersError::UnknownUser { .. })));
        assert!(matches!(users(&[("monitor", "pw with space")]), Err(UsersError::BadPassword { .. })));
        assert!(matches!(
            users(&[("monitor", "pw\nuser evil on nopass +@all")]),
            Err(UsersError::BadPassword { .. })
        ));
        assert!(matches!(users(&[("operator.sha256", "abc")]), Err(UsersError::BadHash { .. })));
        assert!(matches!(users(&[("monitor.also.sha256", "xyz")]), Err(UsersError::BadHash { .. })));
        let no_replication = users(&[("monitor", "pw")]).unwrap();
        let me = Addr::parse("h:1").unwrap();
        let err = node_config("", &me, None, &no_replication).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no password for the replication user in the users directory: it is needed to log in"
        );
        assert!(matches!(Users::load(Path::new("/nonexistent/users")), Err(UsersError::Dir { .. })));
    }
}
