//! The TokenPolicy apply layer: the builders of `reconcile::tokenpolicy`
//! applied in an order that never leaves a token unverifiable (keys Secret
//! first, then Redis, then the issuer), the status with each key's state,
//! and a finalizer, because a deleted policy's record and issuer user live
//! in Redis.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokenplane_api::signing::KeyPair;
use tokenplane_api::tokenpolicy::KeyStatus;
use tokenplane_api::{OAuth2Client, RedisSentinelCluster, TokenPolicy};

use super::redis_target::target_of;
use super::{Context, unix_now};
use crate::error::Error;
use crate::reconcile::redis_password::rotation::{self, Step};
use crate::reconcile::redis_password::{Credentials, OWNED_KEYS};
use crate::reconcile::tokenpolicy::{self, Desired, Inputs, Keys, Rotation, Serving, ServingInputs};
use crate::reconcile::{Invalid, MANAGED_BY, rfc3339};
use crate::redis::{Nodes, RedisAdmin};

/// Finalizer that holds a deleted policy until Redis forgot it.
pub const FINALIZER: &str = "tokenplane.io/policy-cleanup";

/// The longest a policy goes unexamined (drift repair, heartbeats).
const RESYNC: Duration = Duration::from_secs(300);

impl super::Reconciled for TokenPolicy {
    const FINALIZER: &'static str = FINALIZER;
    const KIND: &'static str = "TokenPolicy";

    async fn apply(&self, ctx: &Context) -> Result<Action, Error> {
        apply(self, ctx).await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        cleanup(self, ctx).await
    }
}

async fn apply(policy: &TokenPolicy, ctx: &Context) -> Result<Action, Error> {
    let namespace = policy.namespace().ok_or(Error::NotNamespaced)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let now = unix_now();
    let keys = match Keys::read(secrets.get_opt(&policy.keys_secret_name()).await?.as_ref(), now) {
        Ok(keys) => keys,
        Err(invalid) => return refuse(policy, ctx, &invalid).await,
    };
    let serving = secrets.get_opt(&tokenpolicy::serving_secret_name(&policy.name_any())).await?;
    let cas = ctx.ca.borrow().clone();
    let clients = clients_of(policy, ctx).await?;
    let target = match target_of(policy, ctx).await? {
        Ok(target) => target,
        Err(invalid) => return refuse(policy, ctx, &invalid).await,
    };
    let redis = target.redis.as_ref();
    let nodes = redis.nodes().await?;
    let heartbeats = redis.heartbeats(&nodes).await?;
    let user = tokenpolicy::issuer_user(&TokenPolicy::id_for(&policy.name_any(), &namespace));
    let (credentials, rotated) =
        issuer_credentials(policy, (ctx, redis), (&secrets, &nodes), (&user, target.cluster.as_ref()), now)
            .await?;
    let algorithm = policy.spec.signing.algorithm;
    let new_key = || {
        let key = KeyPair::generate(algorithm).expect("the system can generate keys");
        (key.thumbprint(), key.to_pem().into_bytes())
    };
    let inputs = Inputs {
        policy,
        keys,
        heartbeats: &heartbeats,
        clients: &clients,
        cluster: target.cluster.as_ref(),
        cluster_ca: target.cluster_ca.as_deref(),
        issuer_redis: &credentials,
        env: &ctx.issuers,
        serving: ServingInputs {
            cas: &cas,
            existing: serving.as_ref(),
            lifetime: ctx.ca_settings.leaf_lifetime,
        },
        now,
    };
    let desired = match tokenpolicy::desired(inputs, new_key) {
        Ok(desired) => desired,
        Err(invalid) => return refuse(policy, ctx, &invalid).await,
    };
    publish(&desired, (ctx, redis), &nodes, &credentials).await?;
    if let Some(step) = rotated {
        let note = rotation::note(&user.name, step, &credentials);
        super::event(policy, ctx, EventType::Normal, step.reason(), &note).await;
    }
    if let Some(kid) = &desired.rotation.compromised {
        let ids: Vec<String> =
            clients.iter().map(|c| OAuth2Client::client_id_for(&c.name_any(), &namespace_of(c))).collect();
        redis.revoke_clients(&nodes, &ids, now).await?;
        let note = format!(
            "key {kid} was marked compromised: it left the JWKS, a new key signs, and every token of the policy's {} clients issued before now was revoked",
            ids.len()
        );
        super::event(policy, ctx, EventType::Warning, "KeyCompromised", &note).await;
    }
    if desired.rotation.forced {
        let note = format!(
            "a new signing key was promoted after the propagation timeout although {} verifiers never reported it",
            desired.rotation.lagging.len()
        );
        super::event(policy, ctx, EventType::Warning, "KeyPromotedBeforePropagation", &note).await;
    }
    set_status(policy, ctx, Ok(&desired)).await?;
    let acl = target.cluster.as_ref().map(|c| &c.spec.acl);
    let password_at = rotation::owned_wake_at(&credentials, acl, rotated.is_some(), now);
    let next_at = desired.rotation.next_at.min(desired.serving_renew_at).min(password_at);
    let wake = Duration::from_secs(next_at.saturating_sub(now).max(1));
    Ok(Action::requeue(wake.min(RESYNC)))
}

/// Writes what the issuers and verifiers need, in an order where each step
/// only ever adds a key before it is used: the keys Secret (the issuers'
/// mount), Redis (their user, the record, the JWKS), then the objects.
async fn publish(
    desired: &Desired,
    (ctx, redis): (&Context, &RedisAdmin),
    nodes: &Nodes,
    credentials: &Credentials,
) -> Result<(), Error> {
    super::apply(&ctx.kube, &desired.keys_secret).await?;
    let published = (&desired.record, desired.jwks.as_str());
    let hashes = credentials.hashes();
    redis.apply_policy(nodes, &desired.policy_id, published, &desired.issuer_user, &hashes).await?;
    super::apply(&ctx.kube, &desired.issuer_secret).await?;
    match &desired.serving {
        Serving::Secret(secret) => super::apply(&ctx.kube, secret).await?,
        Serving::Certificate(certificate) => {
            super::apply_dynamic(&ctx.kube, certificate, &tokenpolicy::certificate_resource()).await?;
        }
    }
    super::apply(&ctx.kube, &desired.jwks_config_map).await?;
    super::apply(&ctx.kube, &desired.service).await?;
    super::apply(&ctx.kube, &desired.deployment).await?;
    super::apply(&ctx.kube, &desired.pdb).await?;
    super::apply(&ctx.kube, &desired.hpa).await?;
    for netpol in &desired.network_policies {
        super::apply(&ctx.kube, netpol).await?;
    }
    Ok(())
}

fn namespace_of(client: &OAuth2Client) -> String {
    client.namespace().unwrap_or_default()
}

/// The OAuth2Clients that name this policy, in any namespace.
async fn clients_of(policy: &TokenPolicy, ctx: &Context) -> Result<Vec<OAuth2Client>, Error> {
    let id = TokenPolicy::id_for(&policy.name_any(), &policy.namespace().unwrap_or_default());
    let all = Api::<OAuth2Client>::all(ctx.kube.clone()).list(&ListParams::default()).await?;
    Ok(all.items.into_iter().filter(|c| c.spec.policy_ref.policy_id(&namespace_of(c)) == id).collect())
}

/// The issuer user's passwords: those in its Secret while Redis agrees (or
/// has no such user yet), else a fresh one: a hand-set value is not
/// adopted. On a RedisSentinelCluster, with the rotation step due at `now`.
async fn issuer_credentials(
    policy: &TokenPolicy,
    (ctx, redis): (&Context, &RedisAdmin),
    (secrets, nodes): (&Api<Secret>, &Nodes),
    (user, cluster): (&crate::reconcile::AclUser, Option<&RedisSentinelCluster>),
    now: u64,
) -> Result<(Credentials, Option<Step>), Error> {
    let secret = secrets.get_opt(&format!("{}-issuer-redis", policy.name_any())).await?;
    let kept = secret.and_then(|s| Credentials::read(&s, &OWNED_KEYS, now));
    let hashes = redis.password_hashes(nodes, user).await?;
    let acl = cluster.map(|c| &c.spec.acl);
    Ok(rotation::owned(kept, hashes.as_deref(), acl, now, ctx.generate))
}

/// An invalid policy or keys Secret: a condition and an event, nothing applied.
async fn refuse(policy: &TokenPolicy, ctx: &Context, invalid: &Invalid) -> Result<Action, Error> {
    tracing::info!(policy = %policy.name_any(), reason = invalid.reason, "not reconciled: {}", invalid.message);
    super::event(policy, ctx, EventType::Warning, invalid.reason, &invalid.message).await;
    set_status(policy, ctx, Err(invalid)).await?;
    Ok(super::after_refusal(invalid))
}

fn key_statuses(policy: &TokenPolicy, rotation: &Rotation) -> Vec<KeyStatus> {
    rotation
        .keys
        .iter()
        .map(|k| KeyStatus {
            kid: k.kid.clone(),
            algorithm: policy.spec.signing.algorithm,
            state: k.state,
            since: rfc3339(k.since),
        })
        .collect()
}

/// `Ready`, `Reconciling` (a new key waits for verifiers) and `Degraded`
/// (a verifier cannot check the signing key), the keys, the next rotation
/// and who lags, by server-side apply on the status (only the leader gets here).
async fn set_status(
    policy: &TokenPolicy,
    ctx: &Context,
    outcome: Result<&Desired, &Invalid>,
) -> Result<(), Error> {
    let namespace = policy.namespace().ok_or(Error::NotNamespaced)?;
    let api: Api<TokenPolicy> = Api::namespaced(ctx.kube.clone(), &namespace);
    let generation = policy.meta().generation;
    let previous = policy.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let condition = |type_, status, reason, message| {
        super::condition(previous, generation, type_, status, reason, message)
    };
    let mut status = json!({"observedGeneration": generation});
    match outcome {
        Err(invalid) => {
            status["conditions"] =
                json!([condition("Ready", false, invalid.reason, invalid.message.clone())]);
        }
        Ok(d) => {
            let r = &d.rotation;
            let waiting = !r.lagging.is_empty();
            let reconciling = if waiting {
                condition(
                    "Reconciling",
                    true,
                    "KeyPropagating",
                    format!("{} verifiers do not hold the next key yet", r.lagging.len()),
                )
            } else {
                condition("Reconciling", false, "Idle", "no key waits for verifiers".into())
            };
            let degraded = if r.behind.is_empty() {
                condition(
                    "Degraded",
                    false,
                    "VerifiersCurrent",
                    "every live verifier holds the signing key".into(),
                )
            } else {
                condition(
                    "Degraded",
                    true,
                    "VerifiersBehind",
                    format!(
                        "{} live verifiers do not hold the signing key and reject new tokens",
                        r.behind.len()
                    ),
                )
            };
            let ready =
                condition("Ready", true, "Reconciled", "keys, issuer and Redis records are in place".into());
            let mut lagging = r.lagging.clone();
            lagging.extend(r.behind.iter().filter(|b| !r.lagging.contains(b)).cloned());
            status["conditions"] = json!([ready, reconciling, degraded]);
            status["issuerUrl"] = d.issuer_url.clone().into();
            status["activeKeyId"] = r.active().into();
            status["keys"] = json!(key_statuses(policy, r));
            status["nextRotationAt"] = rfc3339(r.next_rotation_at).into();
            status["laggingVerifiers"] = json!(lagging);
        }
    }
    let patch = json!({"apiVersion": "tokenplane.io/v1alpha1", "kind": "TokenPolicy", "status": status});
    api.patch_status(&policy.name_any(), &PatchParams::apply(MANAGED_BY).force(), &Patch::Apply(patch))
        .await?;
    Ok(())
}

/// Forgets the policy in its Redis; a RedisSentinelCluster that is gone
/// took its users and records with it.
async fn cleanup(policy: &TokenPolicy, ctx: &Context) -> Result<Action, Error> {
    let policy_id = TokenPolicy::id_for(&policy.name_any(), &policy.namespace().unwrap_or_default());
    let redis = match target_of(policy, ctx).await? {
        Ok(target) => target.redis,
        Err(gone) => {
            tracing::info!(%policy_id, reason = gone.reason, "nothing to remove from Redis: {}", gone.message);
            return Ok(Action::await_change());
        }
    };
    let nodes = redis.nodes().await?;
    redis.remove_policy(&nodes, &policy_id, &tokenpolicy::issuer_user(&policy_id)).await?;
    tracing::info!(%policy_id, "policy removed from Redis: its record, JWKS and issuer user are gone");
    Ok(Action::await_change())
}
