//! gitlab-runner's config.toml keys, by section, and how it reads their values, so a misspelt
//! key is an error instead of a line the runner silently ignores, and a wrong value an error
//! instead of a runner that refuses its config or exits.
//!
//! In: a section path (`runners.docker`) and a key. Out: whether gitlab-runner knows it, the
//! closest key it does know, and the value's [`Kind`] (integer with its minimum, boolean,
//! Go duration, enum, URL, …). Source: gitlab-runner's advanced-configuration reference
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

/// What gitlab-runner reads a key's value as, from its config reference and the Go types of
/// its config structs (a type error there makes gitlab-runner refuse the whole file).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// A TOML integer of at least `min`.
    Int { min: i64 },
    /// A number (a TOML integer loads into a Go float too).
    Float,
    /// A TOML boolean.
    Bool,
    /// A TOML string.
    Str,
    /// A Go duration string (`time.ParseDuration`: `30m0s`, `1h`, `90s`); a bare integer would
    /// load as nanoseconds.
    Duration,
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// An `http://` or `https://` URL with a host.
    Url,
    /// A list of strings.
    StrList,
    /// One of these strings, or a list of them.
    EnumOrList(&'static [&'static str]),
    /// A string holding `%s`, where docker-machine puts each machine's unique part.
    MachineName,
}

/// Executors gitlab-runner has.
pub(crate) const EXECUTORS: &[&str] = &[
    "shell",
    "ssh",
    "parallels",
    "virtualbox",
    "docker",
    "docker-windows",
    "docker+machine",
    "docker-autoscaler",
    "instance",
    "kubernetes",
    "custom",
];

const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error", "fatal", "panic"];
const LOG_FORMATS: &[&str] = &["runner", "text", "json"];
const SHELLS: &[&str] = &["bash", "sh", "powershell", "pwsh"];
const PULL_POLICIES: &[&str] = &["always", "never", "if-not-present"];
const CACHE_TYPES: &[&str] = &["s3", "gcs", "azure"];
const CONNECTOR_PROTOCOLS: &[&str] = &["ssh", "winrm"];

/// How gitlab-runner reads `key` in section `path`; `None` for keys whose value fleet does not
/// check (free-form sections, times, nested tables).
pub(crate) fn kind(path: &str, key: &str) -> Option<Kind> {
    use Kind::*;
    let kind = match (path, key) {
        ("", "concurrent") => Int { min: 1 },
        ("", "check_interval" | "shutdown_timeout") => Int { min: 0 },
        ("", "log_level") => Enum(LOG_LEVELS),
        ("", "log_format") => Enum(LOG_FORMATS),
        ("", "connection_max_age") => Duration,
        ("", "listen_address" | "sentry_dsn") => Str,
        ("session_server", "session_timeout") => Int { min: 0 },
        ("session_server", _) => Str,
        ("runners", "url" | "clone_url") => Url,
        ("runners", "executor") => Enum(EXECUTORS),
        ("runners", "shell") => Enum(SHELLS),
        ("runners", "request_concurrency") => Int { min: 1 },
        (
            "runners",
            "id"
            | "limit"
            | "output_limit"
            | "unhealthy_requests_limit"
            | "job_status_final_update_retry_limit",
        ) => Int { min: 0 },
        ("runners", "unhealthy_interval") => Duration,
        ("runners", "debug_trace_disabled") => Bool,
        ("runners", "environment") => StrList,
        (
            "runners",
            "name"
            | "token"
            | "tls-ca-file"
            | "tls-cert-file"
            | "tls-key-file"
            | "builds_dir"
            | "cache_dir"
            | "pre_get_sources_script"
            | "post_get_sources_script"
            | "pre_clone_script"
            | "post_clone_script"
            | "pre_build_script"
            | "post_build_script",
        ) => Str,
        (
            "runners.docker",
            "privileged"
            | "services_privileged"
            | "disable_cache"
            | "disable_entrypoint_overwrite"
            | "oom_kill_disable"
            | "tls_verify"
            | "enable_ipv6",
        ) => Bool,
        (
            "runners.docker",
            "shm_size" | "cpu_shares" | "wait_for_services_timeout" | "network_mtu",
        ) => Int { min: 0 },
        ("runners.docker", "oom_score_adjust") => Int { min: -1000 },
        ("runners.docker", "pull_policy" | "allowed_pull_policies") => EnumOrList(PULL_POLICIES),
        (
            "runners.docker",
            "allowed_images"
            | "allowed_privileged_images"
            | "allowed_services"
            | "allowed_privileged_services"
            | "cap_add"
            | "cap_drop"
            | "devices"
            | "device_cgroup_rules"
            | "dns"
            | "dns_search"
            | "extra_hosts"
            | "group_add"
            | "links"
            | "security_opt"
            | "volumes"
            | "volumes_from",
        ) => StrList,
        (
            "runners.docker",
            "image"
            | "helper_image"
            | "helper_image_flavor"
            | "host"
            | "hostname"
            | "memory"
            | "memory_swap"
            | "memory_reservation"
            | "network_mode"
            | "runtime"
            | "isolation"
            | "cpus"
            | "cpuset_cpus"
            | "cpuset_mems"
            | "gpus"
            | "user"
            | "userns_mode"
            | "tls_cert_path"
            | "volume_driver"
            | "mac_address"
            | "cache_dir",
        ) => Str,
        ("runners.cache", "Type") => Enum(CACHE_TYPES),
        ("runners.cache", "Shared") => Bool,
        ("runners.cache", "MaxUploadedArchiveSize") => Int { min: 0 },
        ("runners.cache", "Path") => Str,
        ("runners.cache.s3", "Insecure" | "DualStack" | "Accelerate" | "PathStyle") => Bool,
        ("runners.cache.s3" | "runners.cache.gcs" | "runners.cache.azure", _) => Str,
        (
            "runners.machine" | "runners.machine.autoscaling",
            "IdleCount" | "IdleCountMin" | "IdleTime" | "MaxGrowthRate" | "MaxBuilds"
            | "OffPeakIdleCount" | "OffPeakIdleTime",
        ) => Int { min: 0 },
        ("runners.machine" | "runners.machine.autoscaling", "IdleScaleFactor") => Float,
        ("runners.machine", "MachineOptions" | "OffPeakPeriods") => StrList,
        ("runners.machine.autoscaling", "Periods") => StrList,
        ("runners.machine", "MachineName") => MachineName,
        ("runners.machine", "MachineDriver" | "OffPeakTimezone") => Str,
        ("runners.machine.autoscaling", "Timezone") => Str,
        (
            "runners.autoscaler",
            "capacity_per_instance"
            | "max_instances"
            | "max_use_count"
            | "shutdown_deletion_retries"
            | "failure_threshold",
        ) => Int { min: 0 },
        (
            "runners.autoscaler",
            "delete_instances_on_shutdown" | "log_internal_ip" | "log_external_ip",
        ) => Bool,
        (
            "runners.autoscaler",
            "update_interval"
            | "update_interval_when_expecting"
            | "deletion_retry_interval"
            | "shutdown_deletion_interval",
        ) => Duration,
        ("runners.autoscaler", "plugin" | "instance_ready_command") => Str,
        ("runners.autoscaler.policy", "idle_count" | "scale_factor_limit") => Int { min: 0 },
        ("runners.autoscaler.policy", "idle_time") => Duration,
        ("runners.autoscaler.policy", "scale_factor") => Float,
        ("runners.autoscaler.policy", "preemptive_mode") => Bool,
        ("runners.autoscaler.policy", "periods") => StrList,
        ("runners.autoscaler.policy", "timezone") => Str,
        ("runners.autoscaler.connector_config", "protocol") => Enum(CONNECTOR_PROTOCOLS),
        ("runners.autoscaler.connector_config", "protocol_port") => Int { min: 0 },
        ("runners.autoscaler.connector_config", "keepalive" | "timeout") => Duration,
        ("runners.autoscaler.connector_config", "use_static_credentials" | "use_external_addr") => {
            Bool
        }
        ("runners.autoscaler.connector_config", _) => Str,
        ("runners.custom_build_dir", "enabled") => Bool,
        _ => return None,
    };
    Some(kind)
}

/// Whether `text` is a duration as Go's `time.ParseDuration` reads it, and not negative.
pub(crate) fn is_go_duration(text: &str) -> bool {
    if text == "0" {
        return true;
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let number_length = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let number = &rest[..number_length];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[number_length..];
        let Some(unit) = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .into_iter()
            .find(|unit| rest.starts_with(unit))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// Whether `text` is a URL gitlab-runner can reach: an `http` or `https` scheme and a host.
pub(crate) fn is_url(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    matches!(scheme, "http" | "https")
        && !host.is_empty()
        && !host.starts_with(':')
        && !host.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_as_go_reads_them() {
        for good in ["0", "30m0s", "1h", "90s", "1.5h", "300ms", "2h45m"] {
            assert!(is_go_duration(good), "{good}");
        }
        for bad in [
            "",
            "15",
            "every 15 seconds",
            "forever",
            "-1s",
            "1d",
            "s",
            "1.2.3s",
        ] {
            assert!(!is_go_duration(bad), "{bad}");
        }
    }

    #[test]
    fn urls_need_a_scheme_and_a_host() {
        assert!(is_url("https://git.gfz.de/"));
        assert!(is_url("http://127.0.0.1:8080"));
        for bad in [
            "git.gfz.de",
            "https://",
            "ftp://git.gfz.de",
            "https:///path",
        ] {
            assert!(!is_url(bad), "{bad}");
        }
    }
}
