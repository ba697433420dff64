//! The CronJobs: cleanup (`tokenplane-sidecar cleanup` on
//! `spec.cleanup.schedule`) and, with `spec.backup`, backup
//! (`tokenplane-sidecar backup` into a volume of its own). Each runs as its
//! role's user, on the Sentinels and the master and nothing else, one run
//! at a time.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSpec,
    PodTemplateSpec, Volume, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokenplane_api::RedisSentinelCluster;
use tokenplane_api::acl::username;
use tokenplane_api::redis::{AclRole, Backup};

use super::tls::TLS_MOUNT;
use super::users::PASSWORD;
use super::workloads::{TOKENPLANE_UID, ca_file, resources, sentinels};
use super::{Environment, Names, labels, meta};
use crate::reconcile::pod::{mount, pod_security, read_only_mount, restricted, secret_volume};

const CREDENTIALS_MOUNT: &str = "/var/run/tokenplane/credentials";
const BACKUP_MOUNT: &str = "/backup";

pub(super) fn cleanup(rsc: &RedisSentinelCluster, env: &Environment, names: &Names) -> CronJob {
    let job =
        Job { role: AclRole::Cleanup, schedule: &rsc.spec.cleanup.schedule, args: vec![], volume: None };
    cron_job(rsc, env, names, job)
}

/// The backup volume and CronJob, with `spec.backup`.
pub(super) fn backup(
    rsc: &RedisSentinelCluster,
    env: &Environment,
    names: &Names,
    backup: &Backup,
) -> (PersistentVolumeClaim, CronJob) {
    let claim_name = format!("{}-redis-backup", names.cluster);
    let claim = PersistentVolumeClaim {
        metadata: meta(rsc, claim_name.clone(), &labels(&names.cluster, "backup")),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".into(), backup.size.clone())])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    let volume = Volume {
        name: "backup".into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name, read_only: None }),
        ..Volume::default()
    };
    let args =
        ["--out-dir", BACKUP_MOUNT, "--retain", &backup.retain.to_string()].map(str::to_owned).to_vec();
    let job = Job { role: AclRole::Backup, schedule: &backup.schedule, args, volume: Some(volume) };
    (claim, cron_job(rsc, env, names, job))
}

/// What one CronJob runs: `tokenplane-sidecar <role>` as the role's user.
struct Job<'a> {
    role: AclRole,
    schedule: &'a str,
    args: Vec<String>,
    /// A volume mounted read-write at `BACKUP_MOUNT`.
    volume: Option<Volume>,
}

fn cron_job(rsc: &RedisSentinelCluster, env: &Environment, names: &Names, job: Job<'_>) -> CronJob {
    let component = username(job.role);
    let labels = labels(&names.cluster, component);
    let password = format!("{CREDENTIALS_MOUNT}/{PASSWORD}");
    let mut args: Vec<String> = [
        component,
        "--redis-sentinels",
        &sentinels(rsc, names),
        "--redis-master",
        &rsc.spec.master_name,
        "--redis-username",
        component,
        "--redis-password-file",
        &password,
        "--redis-sentinel-username",
        component,
        "--redis-sentinel-password-file",
        &password,
        "--log-format",
        "json",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(job.args);
    let mut mounts = vec![read_only_mount("credentials", CREDENTIALS_MOUNT)];
    let mut volumes = vec![secret_volume("credentials", names.role_secret(job.role))];
    if let Some(secret) = super::tls::secret_name(rsc, names) {
        args.extend(["--redis-tls".into(), "--redis-ca-file".into(), ca_file()]);
        mounts.push(read_only_mount("tls", TLS_MOUNT));
        volumes.push(secret_volume("tls", secret));
    }
    if let Some(volume) = job.volume {
        mounts.push(mount(&volume.name, BACKUP_MOUNT));
        volumes.push(volume);
    }
    let container = Container {
        name: component.into(),
        image: Some(env.tokenplane_image.clone()),
        args: Some(args),
        resources: Some(resources("10m", "16Mi", "64Mi")),
        security_context: Some(restricted(TOKENPLANE_UID)),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("OnFailure".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(pod_security(TOKENPLANE_UID)),
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    CronJob {
        metadata: meta(rsc, format!("{}-redis-{component}", names.cluster), &labels),
        spec: Some(CronJobSpec {
            schedule: job.schedule.to_owned(),
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
