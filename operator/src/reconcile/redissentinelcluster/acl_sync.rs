//! The ACL sync. Redis replicates no ACL user, and a node or Sentinel that
//! restarts comes back with only the cluster's role users (its start-up
//! step creates those, from the role Secrets as they were when it started).
//! Every member is brought in line here: each role user accepts exactly the
//! passwords its Secret holds (a rotation spreads this way), the issuers'
//! and agents' users, which the TokenPolicy and OAuth2Client reconciles
//! create, come back where they were lost, and the users of policies and
//! clients that are gone leave the members that missed their deletion (a
//! partitioned node).

use std::collections::{BTreeMap, BTreeSet};

use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy};

use tokenplane_api::acl::{self, SENTINEL_CLIENT};

use super::{CLUSTER_ROLES, Passwords, roles_on};
use crate::reconcile::oauth2client::agent_user;
use crate::reconcile::tokenpolicy::issuer_user;

/// The users the reconciles of policies and clients make, by their names;
/// the cluster's role users are the start-up step's.
fn managed(name: &str) -> bool {
    name.starts_with("issuer:") || name.starts_with("agent:")
}

/// A user as `ACL LIST` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listed {
    pub enabled: bool,
    /// SHA-256 hex of each password.
    pub hashes: BTreeSet<String>,
}

/// The users of one member's `ACL LIST` (`user NAME on #HASH ... RULES`).
pub fn listed(lines: &[String]) -> BTreeMap<String, Listed> {
    lines
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.nth(1).filter(|_| line.starts_with("user "))?;
            let mut user = Listed::default();
            for word in words {
                match word {
                    "on" => user.enabled = true,
                    "off" => user.enabled = false,
                    _ => {
                        if let Some(hash) = word.strip_prefix('#') {
                            user.hashes.insert(hash.to_owned());
                        }
                    }
                }
            }
            Some((name.to_owned(), user))
        })
        .collect()
}

/// A user the cluster should have: its rules on the data nodes and on the
/// Sentinels (`None`: it has no user on that kind), and its passwords.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub node_rules: Option<String>,
    pub sentinel_rules: Option<String>,
    pub hashes: Hashes,
}

/// Where a wanted user's password hashes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hashes {
    /// A role user's: exactly those of its Secret.
    Role(BTreeSet<String>),
    /// An issuer's or agent's: the master's (its owner's reconcile writes
    /// the master first), else those of its owner's Secret (namespace,
    /// name; the password in `redis_password`).
    Owned(String, String),
}

/// The cluster's role users, as their Secrets say.
pub fn role_users(passwords: &Passwords) -> Vec<Wanted> {
    CLUSTER_ROLES
        .into_iter()
        .filter_map(|role| {
            let credentials = passwords.credentials(role)?;
            Some(Wanted {
                name: acl::username(role).to_owned(),
                node_rules: roles_on(false).any(|r| r == role).then(|| acl::node_rules(role).to_owned()),
                sentinel_rules: roles_on(true)
                    .any(|r| r == role)
                    .then(|| acl::sentinel_rules(role))
                    .flatten()
                    .map(str::to_owned),
                hashes: Hashes::Role(credentials.hashes().into_iter().collect()),
            })
        })
        .collect()
}

/// The issuers of the policies whose `redisRef` names `cluster` and the
/// agents of those policies' clients.
pub fn wanted(
    cluster: &RedisSentinelCluster,
    policies: &[TokenPolicy],
    clients: &[OAuth2Client],
) -> Vec<Wanted> {
    let namespace = cluster.metadata.namespace.as_deref().unwrap_or_default();
    let name = cluster.metadata.name.as_deref();
    let ours: Vec<&TokenPolicy> = policies
        .iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace) && p.spec.redis_ref.as_deref() == name)
        .collect();
    let owned = |user: crate::reconcile::AclUser, secret_ns: &str, secret: String| Wanted {
        name: user.name,
        node_rules: Some(user.rules),
        sentinel_rules: Some(SENTINEL_CLIENT.to_owned()),
        hashes: Hashes::Owned(secret_ns.to_owned(), secret),
    };
    let mut wanted = Vec::new();
    for policy in &ours {
        let policy_name = policy.metadata.name.as_deref().unwrap_or_default();
        let user = issuer_user(&TokenPolicy::id_for(policy_name, namespace));
        wanted.push(owned(user, namespace, format!("{policy_name}-issuer-redis")));
    }
    let ids: BTreeSet<String> = ours
        .iter()
        .map(|p| TokenPolicy::id_for(p.metadata.name.as_deref().unwrap_or_default(), namespace))
        .collect();
    for client in clients {
        let client_ns = client.metadata.namespace.as_deref().unwrap_or_default();
        if ids.contains(&client.spec.policy_ref.policy_id(client_ns)) {
            let id =
                OAuth2Client::client_id_for(client.metadata.name.as_deref().unwrap_or_default(), client_ns);
            wanted.push(owned(agent_user(&id), client_ns, client.credentials_secret_name()));
        }
    }
    wanted
}

/// What one member holds.
#[derive(Clone, Debug)]
pub struct MemberUsers {
    pub addr: String,
    pub sentinel: bool,
    pub users: BTreeMap<String, Listed>,
}

/// One change on one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Set { addr: String, sentinel: bool, name: String, hashes: Vec<String>, rules: String },
    Delete { addr: String, sentinel: bool, name: String },
}

/// What brings every member in line with `wanted`. `hashes` holds each
/// wanted user's password hashes as they should be; a user without them is
/// left to its own reconcile, which is writing it right now.
pub fn plan(
    wanted: &[Wanted],
    hashes: &BTreeMap<String, BTreeSet<String>>,
    members: &[MemberUsers],
) -> Vec<Step> {
    let names: BTreeSet<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
    let mut steps = Vec::new();
    for member in members {
        for w in wanted {
            let rules = if member.sentinel { &w.sentinel_rules } else { &w.node_rules };
            let Some(rules) = rules else { continue };
            let Some(want) = hashes.get(&w.name).filter(|h| !h.is_empty()) else { continue };
            let current = member.users.get(&w.name);
            if current.is_none_or(|c| !c.enabled || c.hashes != *want) {
                steps.push(Step::Set {
                    addr: member.addr.clone(),
                    sentinel: member.sentinel,
                    name: w.name.clone(),
                    hashes: want.iter().cloned().collect(),
                    rules: rules.clone(),
                });
            }
        }
        let leftovers = member.users.keys().filter(|n| managed(n) && !names.contains(n.as_str()));
        for name in leftovers {
            steps.push(Step::Delete {
                addr: member.addr.clone(),
                sentinel: member.sentinel,
                name: name.clone(),
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> RedisSentinelCluster {
        serde_norway::from_str(
            "apiVersion: tokenplane.io/v1alpha1\nkind: RedisSentinelCluster\nmetadata: {name: tokens, namespace: auth}\nspec: {}\n",
        )
        .unwrap()
    }

    fn policy(name: &str, namespace: &str, redis_ref: Option<&str>) -> TokenPolicy {
        let redis_ref = redis_ref.map(|r| format!("redisRef: {r}")).unwrap_or_default();
        serde_norway::from_str(&format!(
            "apiVersion: tokenplane.io/v1alpha1\nkind: TokenPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{{redis_ref}}}\n"
        ))
        .unwrap()
    }

    fn client(name: &str, namespace: &str, policy: &str) -> OAuth2Client {
        serde_norway::from_str(&format!(
            "apiVersion: tokenplane.io/v1alpha1\nkind: OAuth2Client\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec: {{policyRef: {{name: {policy}, namespace: auth}}, audiences: [https://api]}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_cluster_wants_its_policies_issuers_and_their_clients_agents_only() {
        let policies = [
            policy("default", "auth", Some("tokens")),
            policy("other", "auth", Some("elsewhere")),
            policy("plain", "auth", None),
            policy("default", "shop", Some("tokens")),
        ];
        let clients = [client("orders", "shop", "default"), client("batch", "jobs", "other")];
        let wanted = wanted(&cluster(), &policies, &clients);
        let names: Vec<_> = wanted.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["issuer:default.auth", "agent:orders.shop"]);
        assert_eq!(wanted[0].hashes, Hashes::Owned("auth".into(), "default-issuer-redis".into()));
        assert_eq!(wanted[1].hashes, Hashes::Owned("shop".into(), "orders-oauth2-credentials".into()));
        assert_eq!(
            wanted[1].node_rules,
            Some(agent_user("orders.shop").rules),
            "the rules its reconcile sets"
        );
        assert_eq!(wanted[1].sentinel_rules.as_deref(), Some(SENTINEL_CLIENT), "discovery on the Sentinels");
    }

    #[test]
    fn acl_list_lines_give_the_managed_users_their_state_and_hashes() {
        let lines = [
            "user agent:orders.shop on #aa #bb ~auth:client:orders.shop resetchannels -@all +get".to_owned(),
            "user issuer:default.auth off #cc ~auth:* -@all".to_owned(),
            "user operator on #dd ~auth:* -@all +acl|setuser".to_owned(),
            "user default off resetchannels -@all".to_owned(),
        ];
        let users = listed(&lines);
        assert_eq!(users.len(), 4);
        assert_eq!(users["operator"].hashes, BTreeSet::from(["dd".into()]));
        assert_eq!(users["agent:orders.shop"].hashes, BTreeSet::from(["aa".into(), "bb".into()]));
        assert!(users["agent:orders.shop"].enabled);
        assert!(!users["issuer:default.auth"].enabled);
    }

    fn owned(user: crate::reconcile::AclUser) -> Wanted {
        Wanted {
            name: user.name,
            node_rules: Some(user.rules),
            sentinel_rules: Some(SENTINEL_CLIENT.into()),
            hashes: Hashes::Owned("ns".into(), "s".into()),
        }
    }

    #[test]
    fn role_users_accept_what_their_secrets_hold_on_the_members_that_have_them() {
        let mut passwords = Passwords::default().completed(|| "pw".into(), 0);
        let backup = passwords.0.get_mut("backup").unwrap();
        backup.next = Some("next".into());
        let roles = role_users(&passwords);
        assert_eq!(roles.len(), CLUSTER_ROLES.len());
        let backup = roles.iter().find(|w| w.name == "backup").unwrap();
        assert_eq!(backup.node_rules.as_deref(), Some(acl::BACKUP));
        assert_eq!(
            backup.sentinel_rules.as_deref(),
            Some(SENTINEL_CLIENT),
            "the backup job finds the master through the Sentinels"
        );
        let both = BTreeSet::from([acl::password_hash("pw"), acl::password_hash("next")]);
        assert_eq!(backup.hashes, Hashes::Role(both));
        let sentinel = roles.iter().find(|w| w.name == "sentinel").unwrap();
        assert_eq!(sentinel.node_rules.as_deref(), Some(acl::SENTINEL_ON_NODE));
        assert_eq!(sentinel.sentinel_rules.as_deref(), Some(acl::SENTINEL_ON_SENTINEL));
    }

    #[test]
    fn missing_disabled_and_stale_users_are_set_and_unknown_ones_removed() {
        let wanted = vec![owned(issuer_user("default.auth")), owned(agent_user("new.shop"))];
        let hashes = BTreeMap::from([("issuer:default.auth".to_owned(), BTreeSet::from(["h1".to_owned()]))]);
        let listed = |enabled, hash: &str| Listed { enabled, hashes: BTreeSet::from([hash.to_owned()]) };
        let member = |addr: &str, sentinel, users: Vec<(&str, Listed)>| MemberUsers {
            addr: addr.into(),
            sentinel,
            users: users.into_iter().map(|(n, l)| (n.to_owned(), l)).collect(),
        };
        let members = [
            member("in-line", false, vec![("issuer:default.auth", listed(true, "h1"))]),
            member("restarted", false, vec![]),
            member("behind", true, vec![("issuer:default.auth", listed(true, "h0"))]),
            member("disabled", false, vec![("issuer:default.auth", listed(false, "h1"))]),
            member("partitioned", false, vec![("agent:gone.shop", listed(true, "h9"))]),
        ];
        let steps = plan(&wanted, &hashes, &members);
        let set = |addr: &str, sentinel| Step::Set {
            addr: addr.into(),
            sentinel,
            name: "issuer:default.auth".into(),
            hashes: vec!["h1".into()],
            rules: if sentinel { SENTINEL_CLIENT.into() } else { issuer_user("default.auth").rules },
        };
        assert_eq!(
            steps,
            [
                set("restarted", false),
                set("behind", true),
                set("disabled", false),
                set("partitioned", false),
                Step::Delete { addr: "partitioned".into(), sentinel: false, name: "agent:gone.shop".into() },
            ],
            "agent:new.shop has no password anywhere yet: its reconcile is making it"
        );
    }
}
