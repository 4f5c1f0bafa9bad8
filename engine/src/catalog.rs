//! Built-in facts about the clouds: machine types, their CPU architecture, and where they
//! are offered.
//!
//! In: a cloud, a machine type, a zone. Out: whether that combination exists and, when it
//! does not, what would. Used by validation (so a fleet file is checked before any API call)
//! and by the simulator (so it refuses what the real cloud would refuse).
//!
//! The table is a curated subset: the machine types and zones fleet's users run. Sources:
//! GCE machine-family and regions-and-zones documentation (T2A is offered only in
//! us-central1, europe-west4 and asia-southeast1 and cannot run 32-bit Arm code), EC2
//! instance-type documentation (Graviton2 `m6g` runs AArch32 user space, hence armv7 builds).

use crate::provider::Cloud;

/// A CPU architecture that runner jobs build for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// x86-64.
    Amd64,
    /// 64-bit Arm.
    Arm64,
    /// 32-bit Arm (Raspberry Pi packages).
    Armv7,
}

impl Arch {
    /// Every architecture.
    pub const ALL: [Arch; 3] = [Arch::Amd64, Arch::Arm64, Arch::Armv7];

    /// The name used in fleet files.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::Armv7 => "armv7",
        }
    }

    /// Parses `amd64`, `arm64` or `armv7`.
    pub fn parse(text: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|arch| arch.as_str() == text)
    }
}

/// One machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineType {
    /// Which cloud sells it.
    pub cloud: Cloud,
    /// Its name.
    pub name: &'static str,
    /// vCPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// The architectures its CPUs run, native first.
    pub runs: &'static [Arch],
    /// Regions where it is offered; `None` for every region in the catalog.
    pub regions: Option<&'static [&'static str]>,
    /// A note shown when it cannot run an architecture.
    pub arch_note: Option<&'static str>,
}

impl MachineType {
    /// Whether this type can run jobs built for `arch`.
    pub fn runs(&self, arch: Arch) -> bool {
        self.runs.contains(&arch)
    }

    /// Whether this type is offered in `region`.
    pub fn offered_in(&self, region: &str) -> bool {
        self.regions.is_none_or(|regions| regions.contains(&region))
    }
}

const X86: &[Arch] = &[Arch::Amd64];
const GRAVITON2: &[Arch] = &[Arch::Arm64, Arch::Armv7];
const AMPERE_T2A: &[Arch] = &[Arch::Arm64];
const T2A_REGIONS: &[&str] = &["us-central1", "europe-west4", "asia-southeast1"];
const T2A_NOTE: &str = "GCP T2A (Ampere Altra) machines do not support the 32-bit Arm instruction set; build armv7 on AWS Graviton (m6g) instead";

const fn gce(name: &'static str, vcpus: u32, memory_mib: u32) -> MachineType {
    MachineType {
        cloud: Cloud::Gcp,
        name,
        vcpus,
        memory_mib,
        runs: X86,
        regions: None,
        arch_note: None,
    }
}

const fn t2a(name: &'static str, vcpus: u32) -> MachineType {
    MachineType {
        cloud: Cloud::Gcp,
        name,
        vcpus,
        memory_mib: vcpus * 4096,
        runs: AMPERE_T2A,
        regions: Some(T2A_REGIONS),
        arch_note: Some(T2A_NOTE),
    }
}

const fn ec2(
    name: &'static str,
    vcpus: u32,
    memory_mib: u32,
    runs: &'static [Arch],
) -> MachineType {
    MachineType {
        cloud: Cloud::Aws,
        name,
        vcpus,
        memory_mib,
        runs,
        regions: None,
        arch_note: None,
    }
}

/// Every machine type fleet knows.
pub const MACHINE_TYPES: &[MachineType] = &[
    gce("e2-small", 2, 2048),
    gce("e2-medium", 2, 4096),
    gce("e2-standard-2", 2, 8192),
    gce("e2-standard-4", 4, 16384),
    gce("n1-standard-1", 1, 3840),
    gce("n1-standard-2", 2, 7680),
    gce("n1-standard-4", 4, 15360),
    gce("n1-standard-8", 8, 30720),
    gce("n1-highcpu-8", 8, 7372),
    gce("n1-highcpu-16", 16, 14746),
    gce("n1-highcpu-32", 32, 29491),
    gce("n2-standard-2", 2, 8192),
    gce("n2-standard-4", 4, 16384),
    gce("n2-standard-8", 8, 32768),
    gce("n2d-standard-8", 8, 32768),
    gce("c2-standard-30", 30, 122880),
    t2a("t2a-standard-1", 1),
    t2a("t2a-standard-2", 2),
    t2a("t2a-standard-4", 4),
    t2a("t2a-standard-8", 8),
    t2a("t2a-standard-16", 16),
    t2a("t2a-standard-32", 32),
    t2a("t2a-standard-48", 48),
    ec2("t3.micro", 2, 1024, X86),
    ec2("t3.medium", 2, 4096, X86),
    ec2("t3.large", 2, 8192, X86),
    ec2("m5.large", 2, 8192, X86),
    ec2("m5.xlarge", 4, 16384, X86),
    ec2("m5.2xlarge", 8, 32768, X86),
    ec2("c5.2xlarge", 8, 16384, X86),
    ec2("c5.4xlarge", 16, 32768, X86),
    ec2("m6g.large", 2, 8192, GRAVITON2),
    ec2("m6g.xlarge", 4, 16384, GRAVITON2),
    ec2("m6g.2xlarge", 8, 32768, GRAVITON2),
    ec2("m6g.4xlarge", 16, 65536, GRAVITON2),
    ec2("c6g.2xlarge", 8, 16384, GRAVITON2),
];

/// Zones fleet knows, by cloud and region.
pub const ZONES: &[(Cloud, &str, &[&str])] = &[
    (
        Cloud::Gcp,
        "us-east1",
        &["us-east1-b", "us-east1-c", "us-east1-d"],
    ),
    (
        Cloud::Gcp,
        "us-central1",
        &[
            "us-central1-a",
            "us-central1-b",
            "us-central1-c",
            "us-central1-f",
        ],
    ),
    (
        Cloud::Gcp,
        "europe-west4",
        &["europe-west4-a", "europe-west4-b", "europe-west4-c"],
    ),
    (
        Cloud::Gcp,
        "asia-southeast1",
        &[
            "asia-southeast1-a",
            "asia-southeast1-b",
            "asia-southeast1-c",
        ],
    ),
    (
        Cloud::Aws,
        "us-east-1",
        &[
            "us-east-1a",
            "us-east-1b",
            "us-east-1c",
            "us-east-1d",
            "us-east-1f",
        ],
    ),
    (
        Cloud::Aws,
        "us-east-2",
        &["us-east-2a", "us-east-2b", "us-east-2c"],
    ),
    (
        Cloud::Aws,
        "eu-central-1",
        &["eu-central-1a", "eu-central-1b", "eu-central-1c"],
    ),
];

/// Looks up a machine type by cloud and name.
pub fn machine_type(cloud: Cloud, name: &str) -> Option<&'static MachineType> {
    MACHINE_TYPES
        .iter()
        .find(|machine| machine.cloud == cloud && machine.name == name)
}

/// The machine types of one cloud.
pub fn machine_types(cloud: Cloud) -> impl Iterator<Item = &'static MachineType> {
    MACHINE_TYPES
        .iter()
        .filter(move |machine| machine.cloud == cloud)
}

/// The cloud and region a zone belongs to.
pub fn zone(zone: &str) -> Option<(Cloud, &'static str)> {
    ZONES
        .iter()
        .find(|(_, _, zones)| zones.contains(&zone))
        .map(|(cloud, region, _)| (*cloud, *region))
}

/// The zones of one cloud.
pub fn zones(cloud: Cloud) -> impl Iterator<Item = &'static str> {
    ZONES
        .iter()
        .filter(move |(zone_cloud, _, _)| *zone_cloud == cloud)
        .flat_map(|(_, _, zones)| zones.iter().copied())
}

/// The regions of one cloud.
pub fn regions(cloud: Cloud) -> impl Iterator<Item = &'static str> {
    ZONES
        .iter()
        .filter(move |(zone_cloud, _, _)| *zone_cloud == cloud)
        .map(|(_, region, _)| *region)
}

/// The regions where a machine type is offered, for help text.
pub fn offered_regions(machine: &MachineType) -> Vec<&'static str> {
    regions(machine.cloud)
        .filter(|region| machine.offered_in(region))
        .collect()
}
