//! The OAuth2Client apply layer: the builders of `reconcile::oauth2client`
//! applied with server-side apply (field manager `tokenplane`), the Redis
//! side effects, the status, and a finalizer, because deleting a client
//! must reach outside Kubernetes (its tokens die, its registration and
//! Redis user go).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokenplane_api::oauth2client::AuthMethod;
use tokenplane_api::{OAuth2Client, TokenPolicy};

use super::{Context, Error, unix_now};
use crate::reconcile::oauth2client::{self, Credentials, Desired, Registered};
use crate::reconcile::{Invalid, MANAGED_BY};

/// Finalizer that holds a deleted client until Redis forgot it.
pub const FINALIZER: &str = "tokenplane.io/redis-cleanup";

/// How often a client is looked at without any change (drift repair).
const RESYNC: std::time::Duration = std::time::Duration::from_secs(300);

pub async fn reconcile(client: Arc<OAuth2Client>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = client.namespace().ok_or(Error::NotNamespaced)?;
    let api: Api<OAuth2Client> = Api::namespaced(ctx.kube.clone(), &namespace);
    finalizer(&api, FINALIZER, client, |event| async {
        match event {
            finalizer::Event::Apply(client) => apply(&client, &ctx).await,
            finalizer::Event::Cleanup(client) => cleanup(&client, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(client: &OAuth2Client, ctx: &Context) -> Result<Action, Error> {
    let namespace = client.namespace().ok_or(Error::NotNamespaced)?;
    let policy = policy_of(client, ctx, &namespace).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let public = client.spec.token_endpoint_auth_method == AuthMethod::None;
    let existing = secrets.get_opt(&client.credentials_secret_name()).await?;
    let client_id = OAuth2Client::client_id_for(&client.name_any(), &namespace);
    let nodes = ctx.redis.nodes().await?;
    let (registration, hashes) =
        ctx.redis.registered(&nodes, &client_id, &oauth2client::agent_user(&client_id)).await?;
    let registered = Registered { registration: registration.as_ref(), password_hashes: hashes.as_deref() };
    let fresh =
        || Credentials { client_secret: (!public).then(ctx.generate), redis_password: (ctx.generate)() };
    let existing = existing.as_ref().and_then(|s| oauth2client::existing_credentials(s, public));
    let (credentials, replaced) = oauth2client::credentials_to_use(existing, &registered, unix_now(), fresh);
    if replaced {
        let note = "the credentials Secret was edited by hand: new credentials were issued and the edited ones do not work";
        super::warn(client, ctx, "CredentialsReplaced", note).await;
    }
    let desired = match oauth2client::desired(client, policy.as_ref(), &credentials) {
        Ok(desired) => desired,
        Err(invalid) => {
            tracing::info!(client = %client.name_any(), %namespace, reason = invalid.reason, "not reconciled: {}", invalid.message);
            super::warn(client, ctx, invalid.reason, &invalid.message).await;
            set_status(client, ctx, Err(&invalid)).await?;
            return Ok(Action::await_change());
        }
    };
    super::apply(&ctx.kube, &desired.secret).await?;
    let password = credentials.redis_password.as_str();
    ctx.redis.apply_client(&nodes, &desired.registration, &desired.agent_user, &[password]).await?;
    set_status(client, ctx, Ok(&desired)).await?;
    Ok(Action::requeue(RESYNC))
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

/// The `Ready` condition and the public facts, by server-side apply on the
/// status subresource (only the leader gets here).
async fn set_status(
    client: &OAuth2Client,
    ctx: &Context,
    outcome: Result<&Desired, &Invalid>,
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
    let ready = super::condition(previous, generation, "Ready", status == "True", reason, message);
    let mut patch = json!({
        "apiVersion": "tokenplane.io/v1alpha1",
        "kind": "OAuth2Client",
        "status": {"observedGeneration": generation, "conditions": [ready]},
    });
    if let Ok(desired) = outcome {
        patch["status"]["clientId"] = desired.client_id.clone().into();
        patch["status"]["credentialsSecret"] = client.credentials_secret_name().into();
    }
    api.patch_status(&client.name_any(), &PatchParams::apply(MANAGED_BY).force(), &Patch::Apply(patch))
        .await?;
    Ok(())
}

async fn cleanup(client: &OAuth2Client, ctx: &Context) -> Result<Action, Error> {
    let namespace = client.namespace().ok_or(Error::NotNamespaced)?;
    let client_id = OAuth2Client::client_id_for(&client.name_any(), &namespace);
    let nodes = ctx.redis.nodes().await?;
    ctx.redis.remove_client(&nodes, &client_id, &oauth2client::agent_user(&client_id), unix_now()).await?;
    tracing::info!(%client_id, "client removed: its tokens stopped working, its registration and Redis user are gone");
    Ok(Action::await_change())
}
