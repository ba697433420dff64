//! The cleanup CronJob: `tokenplane-sidecar cleanup` on the spec's
//! schedule, as the cleanup user, on the Sentinels and master and nothing
//! else. Two runs at once would be harmless (each member is removed once),
//! but one at a time keeps the load on Redis predictable.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokenplane_api::RedisSentinelCluster;
use tokenplane_api::acl::username;
use tokenplane_api::redis::AclRole;

use super::users::PASSWORD;
use super::workloads::{TOKENPLANE_UID, resources, sentinels};
use super::{Environment, Names, labels, meta};
use crate::reconcile::pod::{pod_security, read_only_mount, restricted, secret_volume};

const CREDENTIALS_MOUNT: &str = "/var/run/tokenplane/cleanup";

pub(super) fn cron_job(rsc: &RedisSentinelCluster, env: &Environment, names: &Names) -> CronJob {
    let labels = labels(&names.cluster, "cleanup");
    let user = username(AclRole::Cleanup);
    let password = format!("{CREDENTIALS_MOUNT}/{PASSWORD}");
    let args = [
        "cleanup",
        "--redis-sentinels",
        &sentinels(names),
        "--redis-master",
        &rsc.spec.master_name,
        "--redis-username",
        user,
        "--redis-password-file",
        &password,
        "--redis-sentinel-username",
        user,
        "--redis-sentinel-password-file",
        &password,
        "--log-format",
        "json",
    ];
    let container = Container {
        name: "cleanup".into(),
        image: Some(env.tokenplane_image.clone()),
        args: Some(args.into_iter().map(str::to_owned).collect()),
        resources: Some(resources("10m", "16Mi", "64Mi")),
        security_context: Some(restricted(TOKENPLANE_UID)),
        volume_mounts: Some(vec![read_only_mount("credentials", CREDENTIALS_MOUNT)]),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("OnFailure".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security(TOKENPLANE_UID)),
        volumes: Some(vec![secret_volume("credentials", names.role_secret(AclRole::Cleanup))]),
        ..PodSpec::default()
    };
    CronJob {
        metadata: meta(rsc, format!("{}-redis-cleanup", names.cluster), &labels),
        spec: Some(CronJobSpec {
            schedule: rsc.spec.cleanup.schedule.clone(),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(1),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: None,
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    active_deadline_seconds: Some(600),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..ObjectMeta::default() }),
                        spec: Some(pod),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    }
}
