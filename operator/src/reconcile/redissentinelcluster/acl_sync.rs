//! The ACL sync. Redis replicates no ACL user, and a node or Sentinel that
//! restarts comes back with only the cluster's role users (its start-up
//! step creates those). The issuers' and agents' users, which the
//! TokenPolicy and OAuth2Client reconciles create, are brought back here,
//! and the users of policies and clients that are gone leave the members
//! that missed their deletion (a partitioned node).

use std::collections::{BTreeMap, BTreeSet};

use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy};

use crate::reconcile::AclUser;
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

/// The managed users of one member's `ACL LIST` (`user NAME on #HASH ... RULES`).
pub fn listed(lines: &[String]) -> BTreeMap<String, Listed> {
    lines
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.nth(1).filter(|_| line.starts_with("user "))?;
            managed(name).then_some(())?;
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

/// A user the cluster should have, and the Secret (namespace, name) in
/// whose `redis_password` its owner keeps the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub user: AclUser,
    pub secret: (String, String),
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
    let mut wanted = Vec::new();
    for policy in &ours {
        let policy_name = policy.metadata.name.as_deref().unwrap_or_default();
        wanted.push(Wanted {
            user: issuer_user(&TokenPolicy::id_for(policy_name, namespace)),
            secret: (namespace.to_owned(), format!("{policy_name}-issuer-redis")),
        });
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
            wanted.push(Wanted {
                user: agent_user(&id),
                secret: (client_ns.to_owned(), client.credentials_secret_name()),
            });
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
    /// `rules` as on a data node; a Sentinel gives every such user the
    /// rules of a Sentinel client.
    Set {
        addr: String,
        sentinel: bool,
        name: String,
        hashes: Vec<String>,
        rules: String,
    },
    Delete {
        addr: String,
        sentinel: bool,
        name: String,
    },
}

/// What brings every member in line with `wanted`. `hashes` holds each
/// wanted user's password hashes as they should be (the master's, else
/// its Secret's); a wanted user without them is left to its own reconcile,
/// which is writing it right now.
pub fn plan(
    wanted: &[Wanted],
    hashes: &BTreeMap<String, BTreeSet<String>>,
    members: &[MemberUsers],
) -> Vec<Step> {
    let names: BTreeSet<&str> = wanted.iter().map(|w| w.user.name.as_str()).collect();
    let mut steps = Vec::new();
    for member in members {
        for w in wanted {
            let Some(want) = hashes.get(&w.user.name).filter(|h| !h.is_empty()) else { continue };
            let current = member.users.get(&w.user.name);
            if current.is_none_or(|c| !c.enabled || c.hashes != *want) {
                steps.push(Step::Set {
                    addr: member.addr.clone(),
                    sentinel: member.sentinel,
                    name: w.user.name.clone(),
                    hashes: want.iter().cloned().collect(),
                    rules: w.user.rules.clone(),
                });
            }
        }
        for name in member.users.keys().filter(|n| !names.contains(n.as_str())) {
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
        let names: Vec<_> = wanted.iter().map(|w| w.user.name.as_str()).collect();
        assert_eq!(names, ["issuer:default.auth", "agent:orders.shop"]);
        assert_eq!(wanted[0].secret, ("auth".into(), "default-issuer-redis".into()));
        assert_eq!(wanted[1].secret, ("shop".into(), "orders-oauth2-credentials".into()));
        assert_eq!(wanted[1].user, agent_user("orders.shop"), "the rules its reconcile sets");
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
        assert_eq!(users.len(), 2, "role users are not the sync's");
        assert_eq!(users["agent:orders.shop"].hashes, BTreeSet::from(["aa".into(), "bb".into()]));
        assert!(users["agent:orders.shop"].enabled);
        assert!(!users["issuer:default.auth"].enabled);
    }

    #[test]
    fn missing_disabled_and_stale_users_are_set_and_unknown_ones_removed() {
        let wanted = vec![
            Wanted { user: issuer_user("default.auth"), secret: ("auth".into(), "s".into()) },
            Wanted { user: agent_user("new.shop"), secret: ("shop".into(), "t".into()) },
        ];
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
            rules: issuer_user("default.auth").rules,
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
