//! gitlab-runner's config.toml keys, by section, so a misspelt key is an error instead of a
//! line the runner silently ignores.
//!
//! In: a section path (`runners.docker`) and a key. Out: whether gitlab-runner knows it, and
//! the closest key it does know. Source: gitlab-runner's advanced-configuration reference
//! (global section, `[session_server]`, `[[runners]]`, `[runners.docker]`, `[runners.cache]`,
//! `[runners.machine]`, `[runners.autoscaler]`). Sections whose keys are free-form (plugin
//! configuration, sysctls, feature flags) or that fleet does not model (kubernetes, custom)
//! accept any key.

/// What a section accepts.
pub(crate) enum Section {
    /// Only these keys.
    Keys(&'static [&'static str]),
    /// Any key.
    Free,
}

const GLOBAL: &[&str] = &[
    "concurrent",
    "log_level",
    "log_format",
    "check_interval",
    "sentry_dsn",
    "connection_max_age",
    "listen_address",
    "shutdown_timeout",
    "session_server",
    "runners",
];

const SESSION_SERVER: &[&str] = &["listen_address", "advertise_address", "session_timeout"];

const RUNNERS: &[&str] = &[
    "name",
    "url",
    "id",
    "token",
    "token_obtained_at",
    "token_expires_at",
    "tls-ca-file",
    "tls-cert-file",
    "tls-key-file",
    "limit",
    "executor",
    "shell",
    "builds_dir",
    "cache_dir",
    "clone_url",
    "environment",
    "pre_get_sources_script",
    "post_get_sources_script",
    "pre_clone_script",
    "post_clone_script",
    "pre_build_script",
    "post_build_script",
    "output_limit",
    "unhealthy_requests_limit",
    "unhealthy_interval",
    "request_concurrency",
    "debug_trace_disabled",
    "job_status_final_update_retry_limit",
    "referees",
    "custom_build_dir",
    "feature_flags",
    "docker",
    "cache",
    "machine",
    "autoscaler",
    "kubernetes",
    "custom",
    "ssh",
    "parallels",
    "virtualbox",
    "shell_executor",
];

const DOCKER: &[&str] = &[
    "allowed_images",
    "allowed_privileged_images",
    "allowed_pull_policies",
    "allowed_services",
    "allowed_privileged_services",
    "cache_dir",
    "cap_add",
    "cap_drop",
    "cpuset_cpus",
    "cpuset_mems",
    "cpu_shares",
    "cpus",
    "devices",
    "device_cgroup_rules",
    "disable_cache",
    "disable_entrypoint_overwrite",
    "dns",
    "dns_search",
    "extra_hosts",
    "gpus",
    "group_add",
    "helper_image",
    "helper_image_flavor",
    "host",
    "hostname",
    "image",
    "links",
    "memory",
    "memory_swap",
    "memory_reservation",
    "network_mode",
    "network_mtu",
    "oom_kill_disable",
    "oom_score_adjust",
    "privileged",
    "services_privileged",
    "pull_policy",
    "runtime",
    "isolation",
    "security_opt",
    "shm_size",
    "sysctls",
    "tls_cert_path",
    "tls_verify",
    "user",
    "userns_mode",
    "ulimit",
    "volumes",
    "volumes_from",
    "volume_driver",
    "wait_for_services_timeout",
    "container_labels",
    "services",
    "services_tmpfs",
    "tmpfs",
    "mac_address",
    "enable_ipv6",
    "log_options",
];

const DOCKER_SERVICES: &[&str] = &["name", "alias", "entrypoint", "command", "environment"];

const CACHE: &[&str] = &[
    "Type",
    "Path",
    "Shared",
    "MaxUploadedArchiveSize",
    "s3",
    "gcs",
    "azure",
];

const CACHE_S3: &[&str] = &[
    "ServerAddress",
    "AccessKey",
    "SecretKey",
    "SessionToken",
    "BucketName",
    "BucketLocation",
    "Insecure",
    "AuthenticationType",
    "ServerSideEncryption",
    "ServerSideEncryptionKeyID",
    "DualStack",
    "Accelerate",
    "PathStyle",
    "RoleARN",
    "UploadRoleARN",
];

const CACHE_GCS: &[&str] = &["CredentialsFile", "AccessID", "PrivateKey", "BucketName"];

const CACHE_AZURE: &[&str] = &[
    "AccountName",
    "AccountKey",
    "ContainerName",
    "StorageDomain",
];

const MACHINE: &[&str] = &[
    "IdleCount",
    "IdleCountMin",
    "IdleScaleFactor",
    "IdleTime",
    "MaxGrowthRate",
    "MaxBuilds",
    "MachineDriver",
    "MachineName",
    "MachineOptions",
    "OffPeakPeriods",
    "OffPeakTimezone",
    "OffPeakIdleCount",
    "OffPeakIdleTime",
    "autoscaling",
];

const MACHINE_AUTOSCALING: &[&str] = &[
    "Periods",
    "Timezone",
    "IdleCount",
    "IdleCountMin",
    "IdleScaleFactor",
    "IdleTime",
];

const AUTOSCALER: &[&str] = &[
    "plugin",
    "capacity_per_instance",
    "max_use_count",
    "max_instances",
    "delete_instances_on_shutdown",
    "instance_ready_command",
    "update_interval",
    "update_interval_when_expecting",
    "deletion_retry_interval",
    "shutdown_deletion_interval",
    "shutdown_deletion_retries",
    "failure_threshold",
    "log_internal_ip",
    "log_external_ip",
    "plugin_config",
    "connector_config",
    "policy",
    "vm_isolation",
    "state_storage",
];

const AUTOSCALER_CONNECTOR: &[&str] = &[
    "os",
    "arch",
    "protocol",
    "protocol_port",
    "username",
    "password",
    "key_path",
    "use_static_credentials",
    "keepalive",
    "timeout",
    "use_external_addr",
];

const AUTOSCALER_POLICY: &[&str] = &[
    "periods",
    "timezone",
    "idle_count",
    "idle_time",
    "scale_factor",
    "scale_factor_limit",
    "preemptive_mode",
];

const CUSTOM_BUILD_DIR: &[&str] = &["enabled"];

/// The keys of a section, by its dotted path (`""` is the global section; arrays of tables
/// such as `[[runners]]` use the same path as a table).
pub(crate) fn section(path: &str) -> Section {
    match path {
        "" => Section::Keys(GLOBAL),
        "session_server" => Section::Keys(SESSION_SERVER),
        "runners" => Section::Keys(RUNNERS),
        "runners.docker" => Section::Keys(DOCKER),
        "runners.docker.services" => Section::Keys(DOCKER_SERVICES),
        "runners.cache" => Section::Keys(CACHE),
        "runners.cache.s3" => Section::Keys(CACHE_S3),
        "runners.cache.gcs" => Section::Keys(CACHE_GCS),
        "runners.cache.azure" => Section::Keys(CACHE_AZURE),
        "runners.machine" => Section::Keys(MACHINE),
        "runners.machine.autoscaling" => Section::Keys(MACHINE_AUTOSCALING),
        "runners.autoscaler" => Section::Keys(AUTOSCALER),
        "runners.autoscaler.connector_config" => Section::Keys(AUTOSCALER_CONNECTOR),
        "runners.autoscaler.policy" => Section::Keys(AUTOSCALER_POLICY),
        "runners.custom_build_dir" => Section::Keys(CUSTOM_BUILD_DIR),
        _ => Section::Free,
    }
}

/// How a section is written in config.toml, for messages.
pub(crate) fn header(path: &str) -> String {
    match path {
        "" => "the global section".to_string(),
        "runners" => "[[runners]]".to_string(),
        "runners.machine.autoscaling" => "[[runners.machine.autoscaling]]".to_string(),
        "runners.autoscaler.policy" => "[[runners.autoscaler.policy]]".to_string(),
        "runners.docker.services" => "[[runners.docker.services]]".to_string(),
        other => format!("[{other}]"),
    }
}
