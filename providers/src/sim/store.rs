//! The simulated cloud's state on disk, shared by every process that opens one sim dir.
//!
//! In: objects, idempotency-token records and API-call counts to keep. Out: the same, read
//! back consistently, fast enough for 10,000 objects.
//!
//! Layout of a sim dir:
//!
//! ```text
//! sim.json                       format version and a note that this is a simulator
//! sim.lock                       fs4 lock: exclusive to change anything, shared to list;
//!                                holds the generation, a counter bumped by every change
//! objects/<cloud>/instances/     one JSON file per instance, named after its id
//! objects/<cloud>/templates/     one JSON file per template
//! tokens/<cloud>/<sha256>.json   idempotency token -> id and the object's last record
//! secrets/<cloud>/<id>.json      a machine's secret (simulated Secret Manager): labels and
//!                                its latest version's value, mode 0600 like every file
//! clock.json                     list calls answered so far, per cloud (the sim's clock)
//! stats.json                     API calls by operation, summed over processes
//! ```
//!
//! Time in the simulator is counted in instance list calls, not seconds, so a test can step
//! through states exactly: an object records the clock when it was made (`born`) and when
//! its deletion began (`deleted_at`), and what a list call shows is derived from those and
//! the clock ([`super::api`] decides what each state looks like).
//!
//! Every change happens in a [`Txn`]: under the in-process mutex and the exclusive file lock,
//! files are written to a temporary name and renamed into place, so a crash leaves each file
//! either old or new. Each process keeps a decoded copy of all objects, tagged with the
//! generation it was read at; it is patched in place by this process's own changes and
//! re-read only when another process changed the dir.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind as IoErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use fleet_engine::provider::{Cloud, LiveResource, ObjectKind};
use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::SimError;

/// The on-disk format this build reads and writes.
pub(crate) const FORMAT: u64 = 1;

const NOTE: &str = "This directory is fleet's embedded simulated cloud. Nothing in it exists in \
any real cloud; delete the directory to start from an empty simulated cloud.";

/// An object as kept on disk: what the cloud reports, plus the token that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredObject {
    /// What `discover` returns.
    pub(crate) resource: LiveResource,
    /// The idempotency token of the create call that made it; none for unmanaged objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) token: Option<String>,
    /// The cloud's list clock when it was made (0 for objects of older sim dirs: long ago).
    #[serde(default)]
    pub(crate) born: u64,
    /// The list clock when its deletion began (EC2 instances stay listed, shutting down and
    /// then terminated, for a few list calls); `None` while it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deleted_at: Option<u64>,
}

impl StoredObject {
    /// A new object, made when the clock showed `born`.
    pub(crate) fn new(resource: LiveResource, token: Option<String>, born: u64) -> StoredObject {
        StoredObject {
            resource,
            token,
            born,
            deleted_at: None,
        }
    }
}

/// One secret of the simulated Secret Manager: where a simulated GCE machine's secret value
/// lives, so that its metadata (what `fleet sim` shows) holds only references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SimSecret {
    /// Its resource name, `projects/P/secrets/ID`.
    pub(crate) resource: String,
    /// Its labels (`fleet`, `fleet-kind`, `fleet-digest`).
    pub(crate) labels: BTreeMap<String, String>,
    /// How many versions were added.
    pub(crate) versions: u64,
    /// The latest version's value.
    pub(crate) value: String,
}

/// What one idempotency token made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenRecord {
    /// The token itself, for people reading the file.
    pub(crate) token: String,
    /// The id of the object it made (updated when an admin move changes a GCE id).
    pub(crate) id: String,
    /// The object as last known: as made, or as it was when deleted.
    pub(crate) record: LiveResource,
    /// Whether the object has been deleted since. Only sim dirs of older versions hold such
    /// records: now a token is forgotten when its object vanishes (the simulator's model of
    /// a token expiring), so a record whose object is missing means a crash between writing
    /// the token and the object: the create did not happen and may be done again.
    #[serde(default)]
    pub(crate) deleted: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct SimFile {
    format: u64,
    simulated: bool,
    note: String,
}

/// All objects of the sim dir as of one generation.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    generation: u64,
    objects: BTreeMap<(Cloud, String), StoredObject>,
}

impl Snapshot {
    /// Every object, keyed by cloud and id.
    pub(crate) fn objects(&self) -> impl Iterator<Item = &StoredObject> {
        self.objects.values()
    }
}

struct Local {
    lock_file: File,
    cache: Option<Snapshot>,
}

/// One sim dir, opened by this process.
pub(crate) struct Store {
    dir: PathBuf,
    dir_display: String,
    local: Mutex<Local>,
}

/// The kind of object an id names, from its shape.
pub(crate) fn kind_of_id(cloud: Cloud, id: &str) -> Option<ObjectKind> {
    match cloud {
        Cloud::Gcp if id.starts_with("global/instanceTemplates/") => {
            Some(ObjectKind::InstanceTemplate)
        }
        Cloud::Gcp if id.starts_with("zones/") && id.contains("/instances/") => {
            Some(ObjectKind::Instance)
        }
        Cloud::Aws if id.starts_with("lt-") => Some(ObjectKind::InstanceTemplate),
        Cloud::Aws if id.starts_with("i-") => Some(ObjectKind::Instance),
        _ => None,
    }
}

/// A file name for an id: `/` becomes `~`, anything outside `[A-Za-z0-9._-]` becomes `%XX`.
fn file_name_of_id(id: &str) -> String {
    let mut name = String::with_capacity(id.len() + 5);
    for byte in id.bytes() {
        match byte {
            b'/' => name.push('~'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => name.push(byte as char),
            // A leading dot would hide the file from listings, which skip temporary files.
            b'.' if !name.is_empty() => name.push('.'),
            _ => name.push_str(&format!("%{byte:02X}")),
        }
    }
    name.push_str(".json");
    name
}

fn kind_dir(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Instance => "instances",
        ObjectKind::InstanceTemplate => "templates",
    }
}

/// Hex of the SHA-256 of some parts, separated so that `("ab", "c")` and `("a", "bc")` differ.
pub(crate) fn sha256_hex(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl Store {
    /// Opens `dir`, creating the layout when the directory is new or empty.
    pub(crate) fn open(dir: &Path) -> Result<Store, SimError> {
        let dir_display = dir.display().to_string();
        let io = |path: &Path, action: &'static str| {
            let dir_display = dir_display.clone();
            let path = path.to_path_buf();
            move |source| SimError::Io {
                dir: dir_display,
                path,
                action,
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io(dir, "create"))?;
        let lock_path = dir.join("sim.lock");
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path, "open"))?;
        let store = Store {
            dir: dir.to_path_buf(),
            dir_display,
            local: Mutex::new(Local {
                lock_file,
                cache: None,
            }),
        };
        {
            let local = store.lock_local();
            let _lock = FileLock::exclusive(&store, &local.lock_file)?;
            store.init_layout()?;
        }
        Ok(store)
    }

    /// The directory as the user gave it, for messages.
    pub(crate) fn dir_display(&self) -> &str {
        &self.dir_display
    }

    fn lock_local(&self) -> MutexGuard<'_, Local> {
        // A panic while holding the mutex leaves at worst a stale cache, which the
        // generation check catches; the files themselves are always whole.
        self.local.lock().unwrap_or_else(|poison| {
            let mut local = poison.into_inner();
            local.cache = None;
            local
        })
    }

    pub(crate) fn io_error(
        &self,
        path: &Path,
        action: &'static str,
        source: std::io::Error,
    ) -> SimError {
        SimError::Io {
            dir: self.dir_display.clone(),
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    fn corrupt(&self, path: &Path, detail: impl ToString) -> SimError {
        SimError::Corrupt {
            dir: self.dir_display.clone(),
            path: path.to_path_buf(),
            detail: detail.to_string(),
        }
    }

    fn init_layout(&self) -> Result<(), SimError> {
        let sim_path = self.dir.join("sim.json");
        match fs::read(&sim_path) {
            Ok(bytes) => {
                let file: SimFile = serde_json::from_slice(&bytes)
                    .map_err(|error| self.corrupt(&sim_path, error))?;
                if file.format != FORMAT {
                    return Err(SimError::UnsupportedFormat {
                        dir: self.dir_display.clone(),
                        found: file.format,
                        expected: FORMAT,
                    });
                }
            }
            Err(error) if error.kind() == IoErrorKind::NotFound => {
                // Never spread the layout among someone else's files.
                let entries = fs::read_dir(&self.dir)
                    .map_err(|error| self.io_error(&self.dir, "list", error))?;
                for entry in entries {
                    let entry = entry.map_err(|error| self.io_error(&self.dir, "list", error))?;
                    // `state/` is where the fleet CLI keeps its state next to the
                    // simulator by default, and may be made first.
                    if entry.file_name() != "sim.lock" && entry.file_name() != "state" {
                        return Err(SimError::NotASimDir {
                            dir: self.dir_display.clone(),
                        });
                    }
                }
                let file = SimFile {
                    format: FORMAT,
                    simulated: true,
                    note: NOTE.to_owned(),
                };
                self.write_json(&sim_path, &file)?;
            }
            Err(error) => return Err(self.io_error(&sim_path, "read", error)),
        }
        for cloud in Cloud::ALL {
            for kind in [ObjectKind::Instance, ObjectKind::InstanceTemplate] {
                let path = self
                    .dir
                    .join("objects")
                    .join(cloud.as_str())
                    .join(kind_dir(kind));
                fs::create_dir_all(&path).map_err(|error| self.io_error(&path, "create", error))?;
            }
            let path = self.dir.join("tokens").join(cloud.as_str());
            fs::create_dir_all(&path).map_err(|error| self.io_error(&path, "create", error))?;
            let path = self.dir.join("secrets").join(cloud.as_str());
            fs::create_dir_all(&path).map_err(|error| self.io_error(&path, "create", error))?;
        }
        Ok(())
    }

    fn object_path(&self, cloud: Cloud, id: &str) -> Option<PathBuf> {
        let kind = kind_of_id(cloud, id)?;
        Some(
            self.dir
                .join("objects")
                .join(cloud.as_str())
                .join(kind_dir(kind))
                .join(file_name_of_id(id)),
        )
    }

    fn token_path(&self, cloud: Cloud, token: &str) -> PathBuf {
        self.dir
            .join("tokens")
            .join(cloud.as_str())
            .join(format!("{}.json", sha256_hex(&[token])))
    }

    /// The file of a secret; its id is `[A-Za-z0-9_-]` only, a file name as it is.
    fn secret_path(&self, cloud: Cloud, resource: &str) -> PathBuf {
        let id = resource.rsplit('/').next().unwrap_or(resource);
        self.dir.join("secrets").join(cloud.as_str()).join(format!(
            "{}.json",
            file_name_of_id(id).trim_end_matches(".json")
        ))
    }

    /// Every secret of `cloud`, by resource name.
    #[cfg(test)]
    pub(crate) fn secrets(&self, cloud: Cloud) -> Result<BTreeMap<String, SimSecret>, SimError> {
        let mut local = self.lock_local();
        let local = &mut *local;
        let _lock = FileLock::shared(self, &local.lock_file)?;
        let folder = self.dir.join("secrets").join(cloud.as_str());
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(error) if error.kind() == IoErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(error) => return Err(self.io_error(&folder, "list", error)),
        };
        let mut out = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|error| self.io_error(&folder, "list", error))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            if let Some(secret) = self.read_json::<SimSecret>(&entry.path())? {
                out.insert(secret.resource.clone(), secret);
            }
        }
        Ok(out)
    }

    fn stats_path(&self) -> PathBuf {
        self.dir.join("stats.json")
    }

    fn clock_path(&self) -> PathBuf {
        self.dir.join("clock.json")
    }

    /// The list clocks, under a lock the caller holds.
    fn read_clocks(&self) -> Result<BTreeMap<Cloud, u64>, SimError> {
        Ok(self.read_json(&self.clock_path())?.unwrap_or_default())
    }

    /// The list clock of `cloud` now, under the shared lock.
    pub(crate) fn clock(&self, cloud: Cloud) -> Result<u64, SimError> {
        let mut local = self.lock_local();
        let local = &mut *local;
        let _lock = FileLock::shared(self, &local.lock_file)?;
        Ok(self.read_clocks()?.get(&cloud).copied().unwrap_or(0))
    }

    /// Reads a JSON file; `None` when it does not exist.
    fn read_json<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<T>, SimError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| self.corrupt(path, error)),
            Err(error) if error.kind() == IoErrorKind::NotFound => Ok(None),
            Err(error) => Err(self.io_error(path, "read", error)),
        }
    }

    /// Writes a file atomically: a temporary file in the same directory, renamed over it.
    fn write_bytes(&self, path: &Path, bytes: &[u8]) -> Result<(), SimError> {
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        // Owner only: an object may hold the secret values an apply delivered to it.
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)
        }
        .map_err(|error| self.io_error(&temporary, "create", error))?;
        file.write_all(bytes)
            .map_err(|error| self.io_error(&temporary, "write", error))?;
        drop(file);
        fs::rename(&temporary, path).map_err(|error| self.io_error(path, "replace", error))
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), SimError> {
        let mut bytes =
            serde_json::to_vec_pretty(value).map_err(|error| self.corrupt(path, error))?;
        bytes.push(b'\n');
        self.write_bytes(path, &bytes)
    }

    /// The generation kept in the lock file; the caller holds the lock. It lives there, and
    /// not in a file of its own, because every change writes it: one write in place through
    /// the open handle is the cheapest durable counter there is.
    fn read_generation(&self, lock_file: &File) -> Result<u64, SimError> {
        let mut text = String::new();
        let mut reader = lock_file;
        reader
            .seek(SeekFrom::Start(0))
            .and_then(|_| reader.read_to_string(&mut text))
            .map_err(|error| self.io_error(&self.dir.join("sim.lock"), "read", error))?;
        // An empty lock file is a new sim dir. Anything unreadable counts as 0, which at
        // worst makes a process re-read the objects once.
        Ok(text.trim().parse().unwrap_or(0))
    }

    fn write_generation(&self, lock_file: &File, generation: u64) -> Result<(), SimError> {
        let mut writer = lock_file;
        // Fixed width, so each write covers the last one and no truncation is needed.
        writer
            .seek(SeekFrom::Start(0))
            .and_then(|_| writer.write_all(format!("{generation:020}\n").as_bytes()))
            .map_err(|error| self.io_error(&self.dir.join("sim.lock"), "write", error))
    }

    /// Reads every object file. Files are independent, so two threads halve the time on a
    /// large dir.
    fn load_all(&self, generation: u64) -> Result<Snapshot, SimError> {
        let mut paths = Vec::new();
        for cloud in Cloud::ALL {
            for kind in [ObjectKind::Instance, ObjectKind::InstanceTemplate] {
                let folder = self
                    .dir
                    .join("objects")
                    .join(cloud.as_str())
                    .join(kind_dir(kind));
                let entries = match fs::read_dir(&folder) {
                    Ok(entries) => entries,
                    Err(error) if error.kind() == IoErrorKind::NotFound => continue,
                    Err(error) => return Err(self.io_error(&folder, "list", error)),
                };
                for entry in entries {
                    let entry = entry.map_err(|error| self.io_error(&folder, "list", error))?;
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    if !name.starts_with('.') && name.ends_with(".json") {
                        paths.push((cloud, entry.path()));
                    }
                }
            }
        }
        let read_part =
            |part: &[(Cloud, PathBuf)]| -> Result<Vec<(Cloud, StoredObject)>, SimError> {
                let mut objects = Vec::with_capacity(part.len());
                for (cloud, path) in part {
                    // A file removed between listing and reading was deleted: skip it.
                    if let Some(object) = self.read_json::<StoredObject>(path)? {
                        objects.push((*cloud, object));
                    }
                }
                Ok(objects)
            };
        let parts: Vec<Result<Vec<(Cloud, StoredObject)>, SimError>> = if paths.len() < 512 {
            vec![read_part(&paths)]
        } else {
            let middle = paths.len() / 2;
            let (first, second) = paths.split_at(middle);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| read_part(second));
                let mine = read_part(first);
                vec![
                    mine,
                    other
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                ]
            })
        };
        let mut snapshot = Snapshot {
            generation,
            objects: BTreeMap::new(),
        };
        for part in parts {
            for (cloud, object) in part? {
                snapshot
                    .objects
                    .insert((cloud, object.resource.id.clone()), object);
            }
        }
        Ok(snapshot)
    }

    /// Runs `read` on a consistent view of all objects, under the shared file lock.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&Snapshot) -> T) -> Result<T, SimError> {
        let mut local = self.lock_local();
        let local = &mut *local;
        let _lock = FileLock::shared(self, &local.lock_file)?;
        let generation = self.read_generation(&local.lock_file)?;
        if local.cache.as_ref().map(|cache| cache.generation) != Some(generation) {
            local.cache = Some(self.load_all(generation)?);
        }
        let snapshot = local.cache.as_ref().expect("the cache was just filled");
        Ok(read(snapshot))
    }

    /// One object by id, from this process's copy when it is current, else from its file.
    pub(crate) fn get(&self, cloud: Cloud, id: &str) -> Result<Option<StoredObject>, SimError> {
        let mut local = self.lock_local();
        let local = &mut *local;
        let _lock = FileLock::shared(self, &local.lock_file)?;
        let generation = self.read_generation(&local.lock_file)?;
        match &local.cache {
            Some(cache) if cache.generation == generation => {
                Ok(cache.objects.get(&(cloud, id.to_owned())).cloned())
            }
            _ => match self.object_path(cloud, id) {
                Some(path) => self.read_json(&path),
                None => Ok(None),
            },
        }
    }

    /// Runs `change` under the exclusive file lock. Whatever it writes is visible to other
    /// processes when it returns.
    pub(crate) fn write<T, E: From<SimError>>(
        &self,
        change: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut local = self.lock_local();
        let local = &mut *local;
        let _lock = FileLock::exclusive(self, &local.lock_file)?;
        let generation = self.read_generation(&local.lock_file)?;
        if local.cache.as_ref().map(|cache| cache.generation) != Some(generation) {
            // Stale: drop it now, re-read lazily only if the change needs every object.
            local.cache = None;
        }
        let mut txn = Txn {
            store: self,
            lock_file: &local.lock_file,
            cache: &mut local.cache,
            generation,
            bumped: false,
        };
        change(&mut txn)
    }

    /// Adds `counts` to `stats.json`.
    pub(crate) fn merge_stats(&self, counts: &BTreeMap<String, u64>) -> Result<(), SimError> {
        if counts.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let path = txn.store.stats_path();
            let mut totals: BTreeMap<String, u64> = txn.store.read_json(&path)?.unwrap_or_default();
            for (operation, count) in counts {
                *totals.entry(operation.clone()).or_default() += count;
            }
            txn.store.write_json(&path, &totals)
        })
    }

    /// The counts in `stats.json`.
    pub(crate) fn read_stats(&self) -> Result<BTreeMap<String, u64>, SimError> {
        let mut local = self.lock_local();
        let local = &mut *local;
        let _lock = FileLock::shared(self, &local.lock_file)?;
        Ok(self.read_json(&self.stats_path())?.unwrap_or_default())
    }
}

/// One change to the sim dir, under the exclusive lock.
pub(crate) struct Txn<'a> {
    store: &'a Store,
    lock_file: &'a File,
    cache: &'a mut Option<Snapshot>,
    generation: u64,
    bumped: bool,
}

impl Txn<'_> {
    /// Records that the dir changes, once per transaction, before the first write: a crash
    /// after it at worst makes other processes re-read an unchanged dir.
    fn bump(&mut self) -> Result<(), SimError> {
        if !self.bumped {
            let next = self.generation + 1;
            self.store.write_generation(self.lock_file, next)?;
            if let Some(cache) = self.cache.as_mut() {
                cache.generation = next;
            }
            self.generation = next;
            self.bumped = true;
        }
        Ok(())
    }

    /// One object by id.
    pub(crate) fn get(&self, cloud: Cloud, id: &str) -> Result<Option<StoredObject>, SimError> {
        if let Some(cache) = self.cache.as_ref() {
            return Ok(cache.objects.get(&(cloud, id.to_owned())).cloned());
        }
        match self.store.object_path(cloud, id) {
            Some(path) => self.store.read_json(&path),
            None => Ok(None),
        }
    }

    /// Every object, read from disk if this process's copy is stale.
    pub(crate) fn snapshot(&mut self) -> Result<&Snapshot, SimError> {
        if self.cache.is_none() {
            *self.cache = Some(self.store.load_all(self.generation)?);
        }
        Ok(self.cache.as_ref().expect("the cache was just filled"))
    }

    /// Writes an object, replacing any with its id.
    pub(crate) fn put(&mut self, object: &StoredObject) -> Result<(), SimError> {
        let cloud = object.resource.cloud;
        let Some(path) = self.store.object_path(cloud, &object.resource.id) else {
            return Err(self.store.corrupt(
                &self.store.dir,
                format!("`{}` is not a {cloud} object id", object.resource.id),
            ));
        };
        self.bump()?;
        self.store.write_json(&path, object)?;
        if let Some(cache) = self.cache.as_mut() {
            cache
                .objects
                .insert((cloud, object.resource.id.clone()), object.clone());
        }
        Ok(())
    }

    /// The list clock of `cloud`: how many instance list calls it has answered.
    pub(crate) fn clock(&self, cloud: Cloud) -> Result<u64, SimError> {
        Ok(self.store.read_clocks()?.get(&cloud).copied().unwrap_or(0))
    }

    /// Advances the list clock of `cloud` by one and returns its value before. It lives in a
    /// file of its own and does not bump the generation: a list call changes no object, so
    /// other processes keep their copies.
    pub(crate) fn tick(&mut self, cloud: Cloud) -> Result<u64, SimError> {
        let mut clocks = self.store.read_clocks()?;
        let now = clocks.get(&cloud).copied().unwrap_or(0);
        clocks.insert(cloud, now + 1);
        self.store.write_json(&self.store.clock_path(), &clocks)?;
        Ok(now)
    }

    /// Removes an object for good, and forgets the token that made it: a create with that
    /// token makes a new object (the simulator's model of a token expiring once what it made
    /// has vanished).
    pub(crate) fn remove(&mut self, object: &StoredObject) -> Result<(), SimError> {
        let cloud = object.resource.cloud;
        let Some(path) = self.store.object_path(cloud, &object.resource.id) else {
            return Ok(());
        };
        self.bump()?;
        if let Some(token) = &object.token {
            let token_path = self.store.token_path(cloud, token);
            match fs::remove_file(&token_path) {
                Ok(()) => {}
                Err(error) if error.kind() == IoErrorKind::NotFound => {}
                Err(error) => return Err(self.store.io_error(&token_path, "remove", error)),
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == IoErrorKind::NotFound => {}
            Err(error) => return Err(self.store.io_error(&path, "remove", error)),
        }
        if let Some(cache) = self.cache.as_mut() {
            cache.objects.remove(&(cloud, object.resource.id.clone()));
        }
        Ok(())
    }

    /// Gives an object a new id (an admin moving a GCE instance to another zone): the old
    /// file goes, the new one comes, and the token that made it follows it.
    pub(crate) fn change_id(
        &mut self,
        old_id: &str,
        object: &StoredObject,
    ) -> Result<(), SimError> {
        let cloud = object.resource.cloud;
        self.bump()?;
        if let Some(token) = &object.token {
            if let Some(mut record) = self.token(cloud, token)? {
                record.id = object.resource.id.clone();
                record.record = object.resource.clone();
                self.put_token(cloud, &record)?;
            }
        }
        self.put(object)?;
        if let Some(path) = self.store.object_path(cloud, old_id) {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == IoErrorKind::NotFound => {}
                Err(error) => return Err(self.store.io_error(&path, "remove", error)),
            }
        }
        if let Some(cache) = self.cache.as_mut() {
            cache.objects.remove(&(cloud, old_id.to_owned()));
        }
        Ok(())
    }

    /// A secret by resource name.
    pub(crate) fn secret(
        &self,
        cloud: Cloud,
        resource: &str,
    ) -> Result<Option<SimSecret>, SimError> {
        self.store
            .read_json(&self.store.secret_path(cloud, resource))
    }

    /// Writes a secret (files are the owner's only, like every file of the sim dir).
    pub(crate) fn put_secret(&mut self, cloud: Cloud, secret: &SimSecret) -> Result<(), SimError> {
        self.store
            .write_json(&self.store.secret_path(cloud, &secret.resource), secret)
    }

    /// Deletes a secret; one already gone counts as deleted.
    pub(crate) fn remove_secret(&mut self, cloud: Cloud, resource: &str) -> Result<(), SimError> {
        let path = self.store.secret_path(cloud, resource);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == IoErrorKind::NotFound => Ok(()),
            Err(error) => Err(self.store.io_error(&path, "remove", error)),
        }
    }

    /// What a token made, if it was seen before.
    pub(crate) fn token(&self, cloud: Cloud, token: &str) -> Result<Option<TokenRecord>, SimError> {
        self.store.read_json(&self.store.token_path(cloud, token))
    }

    /// Records what a token made.
    pub(crate) fn put_token(&mut self, cloud: Cloud, record: &TokenRecord) -> Result<(), SimError> {
        self.bump()?;
        self.store
            .write_json(&self.store.token_path(cloud, &record.token), record)
    }
}

/// An fs4 lock on `sim.lock`, released on drop.
struct FileLock<'a> {
    file: &'a File,
}

impl<'a> FileLock<'a> {
    fn exclusive(store: &Store, file: &'a File) -> Result<FileLock<'a>, SimError> {
        FileExt::lock_exclusive(file)
            .map_err(|error| store.io_error(&store.dir.join("sim.lock"), "lock", error))?;
        Ok(FileLock { file })
    }

    fn shared(store: &Store, file: &'a File) -> Result<FileLock<'a>, SimError> {
        FileExt::lock_shared(file)
            .map_err(|error| store.io_error(&store.dir.join("sim.lock"), "lock", error))?;
        Ok(FileLock { file })
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // Closing the file would release the lock too; the file stays open for the next call.
        let _ = FileExt::unlock(self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_of_ids_are_distinct_and_visible() {
        assert_eq!(
            file_name_of_id("zones/us-east1-c/instances/runner-1"),
            "zones~us-east1-c~instances~runner-1.json"
        );
        assert_eq!(file_name_of_id(".hidden"), "%2Ehidden.json");
        assert_ne!(file_name_of_id("a/b"), file_name_of_id("a~b"));
    }
}
