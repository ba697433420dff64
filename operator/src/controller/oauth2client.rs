//! The OAuth2Client apply layer: the builders of `reconcile::oauth2client`
//! applied with server-side apply (field manager `tokenplane`), the Redis
//! side effects, the status, and a finalizer, because deleting a client
//! must reach outside Kubernetes (its tokens die, its registration and
//! Redis user go).

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokenplane_api::oauth2client::AuthMethod;
use tokenplane_api::{OAuth2Client, TokenPolicy};

use super::redis_target::target_of;
use super::{Context, unix_now};
use crate::error::Error;
use crate::reconcile::ca::BUNDLE_KEY;
use crate::reconcile::oauth2client::{self, Credentials, Desired, Registered};
use crate::reconcile::redis_password::Credentials as RedisCredentials;
use crate::reconcile::redis_password::rotation;
use crate::reconcile::secret_rotation::{self, Plan, Recorded, SecretStatus};
use crate::reconcile::tokenpolicy;
use crate::reconcile::{Invalid, MANAGED_BY, rfc3339};
use crate::redis::{Nodes, RedisAdmin};

/// Finalizer that holds a deleted client until Redis forgot it.
pub const FINALIZER: &str = "tokenplane.io/redis-cleanup";

/// How often a client is looked at without any change (drift repair).
const RESYNC: std::time::Duration = std::time::Duration::from_secs(300);

impl super::Reconciled for OAuth2Client {
    const FINALIZER: &'static str = FINALIZER;
    const KIND: &'static str = "OAuth2Client";

    async fn apply(&self, ctx: &Context) -> Result<Action, Error> {
        apply(self, ctx).await
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        cleanup(self, ctx).await
    }
}

async fn apply(client: &OAuth2Client, ctx: &Context) -> Result<Action, Error> {
    let namespace = client.namespace().ok_or(Error::NotNamespaced)?;
    let Some(policy) = policy_of(client, ctx, &namespace).await? else {
        return refuse(client, ctx, &oauth2client::policy_not_found(client)).await;
    };
    let target = match target_of(&policy, ctx).await? {
        Ok(target) => target,
        Err(invalid) => return refuse(client, ctx, &invalid).await,
    };
    let redis = target.redis.as_ref();
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let existing = secrets.get_opt(&client.credentials_secret_name()).await?;
    let client_id = OAuth2Client::client_id_for(&client.name_any(), &namespace);
    let nodes = redis.nodes().await?;
    let (registration, hashes) =
        redis.registered(&nodes, &client_id, &oauth2client::agent_user(&client_id)).await?;
    let registered = Registered { registration: registration.as_ref(), password_hashes: hashes.as_deref() };
    let now = unix_now();
    let (mut credentials, plan) =
        credentials_and_plan(client, ctx, existing.as_ref(), &registered, now).await;
    let acl = target.cluster.as_ref().map(|c| &c.spec.acl);
    let (redis_credentials, rotated) =
        rotation::owned(Some(credentials.redis), registered.password_hashes, acl, now, ctx.generate);
    credentials.redis = redis_credentials;
    let mut desired = match oauth2client::desired(client, Some(&policy), &credentials) {
        Ok(desired) => desired,
        Err(invalid) => return refuse(client, ctx, &invalid).await,
    };
    if let Some(plan) = &plan {
        secret_rotation::record(plan, client, &mut desired);
    }
    // Redis before the Secret: a new secret reaches workloads only once
    // issuers accept it, and should the Secret not be written, it keeps the
    // old secret, still registered, so the next reconcile rotates afresh.
    let hashes = credentials.redis.hashes();
    redis.apply_client(&nodes, &desired.registration, &desired.agent_user, &hashes).await?;
    super::apply(&ctx.kube, &desired.secret).await?;
    if let Some(step) = rotated {
        let note = rotation::note(&desired.agent_user.name, step, &credentials.redis);
        super::event(client, ctx, EventType::Normal, step.reason(), &note).await;
    }
    match issuer_bundle(&policy, ctx).await? {
        Some(bundle) => {
            let redis_ca = match &target.cluster {
                Some(_) => target.cluster_ca.as_deref(),
                None => ctx.issuers.redis_tls.as_deref(),
            };
            super::apply(&ctx.kube, &oauth2client::issuer_ca(client, &bundle, redis_ca)).await?
        }
        None => {
            let note = "the policy's cert-manager issuer wrote no ca.crt into its serving Secret (yet): agents of this client cannot verify the issuer with --issuer-ca-file";
            super::event(client, ctx, EventType::Warning, "IssuerCaUnknown", note).await;
        }
    }
    let secret_status = match &plan {
        Some(plan) => Some(secret_status(client, (ctx, redis), &nodes, &desired, plan).await?),
        None => None,
    };
    set_status(client, ctx, Ok(&desired), secret_status.as_ref()).await?;
    let password_at = rotation::owned_wake_at(&credentials.redis, acl, rotated.is_some(), now);
    Ok(Action::requeue(next_look(plan.as_ref(), password_at, now)))
}

/// The credentials to use and, for a confidential client, the plan of its
/// secret; when a rotation is due, the credentials hold the new secret.
async fn credentials_and_plan(
    client: &OAuth2Client,
    ctx: &Context,
    existing: Option<&Secret>,
    registered: &Registered<'_>,
    now: u64,
) -> (Credentials, Option<Plan>) {
    let public = client.spec.token_endpoint_auth_method == AuthMethod::None;
    let fresh = || Credentials {
        client_secret: (!public).then(ctx.generate),
        redis: RedisCredentials::new((ctx.generate)(), now),
    };
    let kept = existing.and_then(|s| oauth2client::existing_credentials(s, public, now));
    let had = kept.is_some();
    let (mut credentials, replaced) = oauth2client::credentials_to_use(kept, registered, now, fresh);
    if replaced {
        let note = "the credentials Secret was edited by hand: new credentials were issued and the edited ones do not work";
        super::event(client, ctx, EventType::Warning, "CredentialsReplaced", note).await;
    }
    let recorded = existing.map(Recorded::of).unwrap_or_default();
    let reused = had && !replaced;
    let plan = secret_rotation::plan(client, &recorded, &credentials, registered.registration, reused, now);
    if plan.as_ref().is_some_and(|p| p.rotate.is_some()) {
        credentials.client_secret = Some((ctx.generate)());
    }
    (credentials, plan)
}

/// Announces a rotation that was just applied, and reads when issuers
/// last accepted the previous secret.
async fn secret_status(
    client: &OAuth2Client,
    (ctx, redis): (&Context, &RedisAdmin),
    nodes: &Nodes,
    desired: &Desired,
    plan: &Plan,
) -> Result<SecretStatus, Error> {
    if let Some(trigger) = plan.rotate {
        let previous = match plan.previous.as_ref().and_then(|p| p.expires_at) {
            Some(at) => format!("works until {}", rfc3339(at)),
            None => "stopped working (no grace period)".to_owned(),
        };
        let note =
            format!("a new client secret was issued {}; the previous one {previous}", trigger.as_str());
        tracing::info!(client_id = %desired.client_id, trigger = trigger.as_str(), "client secret rotated");
        super::event(client, ctx, EventType::Normal, "SecretRotated", &note).await;
    }
    let uses = redis.secret_uses(nodes, &desired.client_id, &desired.registration.secrets).await?;
    let last_used = plan.previous.as_ref().and_then(|p| uses.get(&p.sha256).copied());
    Ok(SecretStatus::of(plan, last_used))
}

/// When to look again: at the resync, or sooner when something is due (the
/// previous secret's expiry, a scheduled rotation).
/// When to look again: the secret's plan or the agent password's rotation
/// wants it (unix seconds), or the resync.
fn next_look(plan: Option<&Plan>, password_at: u64, now: u64) -> std::time::Duration {
    let at = plan.and_then(|p| p.wake_at).unwrap_or(u64::MAX).min(password_at);
    RESYNC.min(std::time::Duration::from_secs(at.saturating_sub(now).max(1)))
}

async fn policy_of(
    client: &OAuth2Client,
    ctx: &Context,
    namespace: &str,
) -> Result<Option<TokenPolicy>, Error> {
    let r = &client.spec.policy_ref;
    let api: Api<TokenPolicy> =
        Api::namespaced(ctx.kube.clone(), r.namespace.as_deref().unwrap_or(namespace));
    Ok(api.get_opt(&r.name).await?)
}

/// The CAs agents must trust for `policy`'s issuer: the operator's, or
/// what cert-manager wrote beside the certificate (`ca.crt`; some issuers,
/// ACME's among them, write none).
async fn issuer_bundle(policy: &TokenPolicy, ctx: &Context) -> Result<Option<String>, Error> {
    if tokenpolicy::cert_manager_issuer(policy, ctx.issuers.cert_manager_issuer.as_ref()).is_none() {
        return Ok(Some(ctx.ca.borrow().bundle()));
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &policy.namespace().unwrap_or_default());
    let serving = secrets.get_opt(&tokenpolicy::serving_secret_name(&policy.name_any())).await?;
    Ok(serving
        .and_then(|s| s.data?.remove(BUNDLE_KEY))
        .and_then(|pem| String::from_utf8(pem.0).ok())
        .filter(|pem| pem.contains("BEGIN CERTIFICATE")))
}

/// An invalid client, or one whose policy or Redis is missing: a
/// condition and an event, nothing applied.
async fn refuse(client: &OAuth2Client, ctx: &Context, invalid: &Invalid) -> Result<Action, Error> {
    let namespace = client.namespace().unwrap_or_default();
    tracing::info!(client = %client.name_any(), %namespace, reason = invalid.reason, "not reconciled: {}", invalid.message);
    super::event(client, ctx, EventType::Warning, invalid.reason, &invalid.message).await;
    set_status(client, ctx, Err(invalid), None).await?;
    Ok(super::after_refusal(invalid))
}

/// The conditions and the public facts, by server-side apply on the
/// status subresource (only the leader gets here).
async fn set_status(
    client: &OAuth2Client,
    ctx: &Context,
    outcome: Result<&Desired, &Invalid>,
    secret: Option<&SecretStatus>,
) -> Result<(), Error> {
    let namespace = client.namespace().ok_or(Error::NotNamespaced)?;
    let api: Api<OAuth2Client> = Api::namespaced(ctx.kube.clone(), &namespace);
    let generation = client.meta().generation;
    let (status, reason, message) = match outcome {
        Ok(_) => {
            ("True", "Reconciled", "credentials Secret, registration and Redis user are in place".to_owned())
        }
        Err(invalid) => ("False", invalid.reason, invalid.message.clone()),
    };
    let previous = client.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let condition = |type_, status, reason, message| {
        super::condition(previous, generation, type_, status == "True", reason, message)
    };
    let mut conditions = vec![condition("Ready", status, reason, message)];
    if let Some(secret) = secret {
        let (status, reason, message) = secret.condition();
        conditions.push(condition(secret_rotation::PREVIOUS_SECRET_IN_USE, status, reason, message));
    }
    let mut patch = json!({
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "OAuth2Client",
        "status": {"observedGeneration": generation, "conditions": conditions},
    });
    if let Ok(desired) = outcome {
        patch["status"]["clientId"] = desired.client_id.clone().into();
        patch["status"]["credentialsSecret"] = client.credentials_secret_name().into();
    }
    if let Some(secret) = secret {
        let times = [
            ("secretIssuedAt", Some(secret.issued_at)),
            ("previousSecretExpiresAt", secret.previous_expires_at),
            ("previousSecretLastUsedAt", secret.previous_last_used_at),
        ];
        for (field, at) in times {
            if let Some(at) = at {
                patch["status"][field] = rfc3339(at).into();
            }
        }
    }
    api.patch_status(&client.name_any(), &PatchParams::apply(MANAGED_BY).force(), &Patch::Apply(patch))
        .await?;
    Ok(())
}

/// Kills the client's tokens and forgets it in its policy's Redis. With
/// its policy or RedisSentinelCluster gone, there is no Redis to reach:
/// the operator's own, unless the cluster is the one that went.
async fn cleanup(client: &OAuth2Client, ctx: &Context) -> Result<Action, Error> {
    let namespace = client.namespace().ok_or(Error::NotNamespaced)?;
    let client_id = OAuth2Client::client_id_for(&client.name_any(), &namespace);
    let redis = match policy_of(client, ctx, &namespace).await? {
        None => ctx.redis.clone(),
        Some(policy) => match target_of(&policy, ctx).await? {
            Ok(target) => target.redis,
            Err(gone) => {
                tracing::info!(%client_id, reason = gone.reason, "nothing to remove from Redis: {}", gone.message);
                return Ok(Action::await_change());
            }
        },
    };
    let nodes = redis.nodes().await?;
    redis.remove_client(&nodes, &client_id, &oauth2client::agent_user(&client_id), unix_now()).await?;
    tracing::info!(%client_id, "client removed: its tokens stopped working, its registration and Redis user are gone");
    Ok(Action::await_change())
}
