//! Errors of the simulator's own surface: opening a sim dir and the admin commands.
//!
//! In: what went wrong, with the sim dir, file, object or value involved. Out: a
//! [`SimError`] whose summary names the kind of problem and whose help says how to fix it.
//! API calls made through the `Provider` trait never return these; they fail with
//! `ProviderError`, shaped like the real clouds' errors.

use std::path::PathBuf;

/// Something the simulated cloud could not do.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SimError {
    /// Reading or writing a file of the sim dir failed.
    #[error("Cannot {action} {path} in the simulated cloud's directory {dir}")]
    #[diagnostic(
        code(fleet::sim::io),
        help("check that {dir} is a directory you can read and write, or pass another with `--sim-dir`")
    )]
    Io {
        /// The sim dir.
        dir: String,
        /// The file or directory involved.
        path: PathBuf,
        /// What was being done: `read`, `write`, `lock`, …
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file of the sim dir is not what the simulator wrote.
    #[error("Corrupt simulator file {path}")]
    #[diagnostic(
        code(fleet::sim::corrupt),
        help("the file was changed by hand or by a crash: {detail}; delete it, or delete the sim dir {dir} to start from an empty simulated cloud")
    )]
    Corrupt {
        /// The sim dir.
        dir: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// The directory exists, holds files, and is not a simulated cloud.
    #[error("{dir} is not a simulated cloud directory")]
    #[diagnostic(
        code(fleet::sim::not_a_sim_dir),
        help("{dir} already holds other files and no `sim.json`; pass `--sim-dir` a new or empty directory, so the simulator never writes among files it did not make")
    )]
    NotASimDir {
        /// The directory.
        dir: String,
    },

    /// The sim dir was written by a different version of the simulator.
    #[error("Unsupported simulated cloud format {found} in {dir}")]
    #[diagnostic(
        code(fleet::sim::format),
        help("this fleet reads format {expected}; delete {dir} to start from an empty simulated cloud, or use the fleet that made it")
    )]
    UnsupportedFormat {
        /// The sim dir.
        dir: String,
        /// The format found in `sim.json`.
        found: u64,
        /// The format this build reads.
        expected: u64,
    },

    /// No object has this name or id.
    #[error("No simulated object named `{name}`")]
    #[diagnostic(
        code(fleet::sim::not_found),
        help("run `fleet --sim-dir {dir} sim list` to see what exists; pass an object's cloud name or its id")
    )]
    NotFound {
        /// The sim dir.
        dir: String,
        /// The name or id asked for.
        name: String,
    },

    /// Several objects have this name.
    #[error("`{name}` names {count} simulated objects")]
    #[diagnostic(
        code(fleet::sim::ambiguous),
        help("pass one of their ids instead: {ids}")
    )]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// How many matched.
        count: usize,
        /// Their ids, comma-separated.
        ids: String,
    },

    /// `sim set` was given a field the simulator does not have.
    #[error("Unknown field `{field}`")]
    #[diagnostic(
        code(fleet::sim::unknown_field),
        help("the fields are: machine_type, image, disk_type, disk_size_gb, zone, status, label.KEY, metadata.KEY")
    )]
    UnknownField {
        /// The field asked for.
        field: String,
    },

    /// A value that the field, or the real cloud, does not accept.
    #[error("Invalid value `{value}` for {field} of `{name}`")]
    #[diagnostic(code(fleet::sim::invalid_value), help("{help}"))]
    InvalidValue {
        /// The object's name.
        name: String,
        /// The field.
        field: String,
        /// The value given.
        value: String,
        /// Why it is wrong and what would be right.
        help: String,
    },

    /// A zone the catalog does not know.
    #[error("Unknown zone `{zone}`")]
    #[diagnostic(code(fleet::sim::unknown_zone), help("{known}"))]
    UnknownZone {
        /// The zone given.
        zone: String,
        /// The known zones, by cloud.
        known: String,
    },

    /// A machine type the cloud does not sell.
    #[error("Unknown machine type `{machine_type}` on {cloud}")]
    #[diagnostic(
        code(fleet::sim::unknown_machine_type),
        help("{cloud} machine types are: {known}")
    )]
    UnknownMachineType {
        /// The cloud.
        cloud: String,
        /// The machine type given.
        machine_type: String,
        /// The machine types of that cloud.
        known: String,
    },

    /// A machine type that exists but not in this zone's region.
    #[error("Machine type `{machine_type}` is not offered in {zone}")]
    #[diagnostic(
        code(fleet::sim::machine_type_not_offered),
        help("{machine_type} is offered in {offered}; pick a zone there or another machine type")
    )]
    MachineTypeNotOffered {
        /// The machine type.
        machine_type: String,
        /// The zone given.
        zone: String,
        /// Regions where it is offered.
        offered: String,
    },

    /// A GCE instance name that is already taken in that zone.
    #[error("An instance named `{name}` already exists in {zone}")]
    #[diagnostic(
        code(fleet::sim::name_taken),
        help("GCE instance names are unique per zone; pick another name or zone, or remove the existing one with `fleet --sim-dir {dir} sim delete {id}`")
    )]
    NameTaken {
        /// The sim dir.
        dir: String,
        /// The name.
        name: String,
        /// The zone.
        zone: String,
        /// The id of the object that has it.
        id: String,
    },

    /// A name the cloud would refuse.
    #[error("Invalid instance name `{name}`")]
    #[diagnostic(code(fleet::sim::invalid_name), help("{reason}"))]
    InvalidName {
        /// The name.
        name: String,
        /// Why, and what the cloud accepts.
        reason: String,
    },

    /// `stop` or `start` of an instance template.
    #[error("`{name}` is an instance template, not an instance")]
    #[diagnostic(
        code(fleet::sim::not_an_instance),
        help("templates have no run state; stop or start an instance (`fleet --sim-dir {dir} sim list` shows the kind of each object)")
    )]
    NotAnInstance {
        /// The sim dir.
        dir: String,
        /// The name.
        name: String,
    },
}
