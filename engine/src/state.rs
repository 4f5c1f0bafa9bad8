//! The state store: locks, the apply journal and plan history — never the fleet's state,
//! which is discovered from the cloud.
//!
//! In: a fleet name and who is asking. Out: a [`LockGuard`] held for the length of an apply,
//! and an append-only journal of what apply did. [`LocalStore`] keeps both in a directory;
//! its lock is an OS file lock, so a killed process releases it and never blocks the next
//! apply. Who holds the lock is written beside it, in a file replaced whole (written to a
//! temporary file, then renamed), so nobody ever reads half of it; the locked file itself is
//! never renamed over, which would break the lock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// The command, e.g. `fleet apply fleets/distribution.yaml`.
    pub command: String,
    /// When it was taken, UTC, `YYYY-MM-DD HH:MM:SS`.
    pub since: String,
}

impl LockInfo {
    /// Describes the current process.
    pub fn current(command: impl Into<String>) -> LockInfo {
        LockInfo {
            pid: std::process::id(),
            host: fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".to_string()),
            command: command.into(),
            since: utc_now(),
        }
    }
}

/// State-store errors.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StateError {
    /// Someone else is applying this fleet.
    #[error("fleet `{fleet}` is locked by another apply: {}", describe_holder(holder.as_ref()))]
    #[diagnostic(
        code(fleet::state::locked),
        help("wait for that apply to finish; if that process is gone the lock frees itself (it is an OS file lock), so run again")
    )]
    Locked {
        /// The fleet.
        fleet: String,
        /// Who holds it, when it has written that down already.
        holder: Option<LockInfo>,
    },
    /// An earlier write to the journal failed; nothing more is written after it.
    #[error("the journal is not written to after an earlier failure ({earlier})")]
    #[diagnostic(code(fleet::state::journal_broken))]
    JournalBroken {
        /// The earlier failure.
        earlier: String,
    },
    /// The store could not be read or written.
    #[error("state store: cannot {action} {}", path.display())]
    #[diagnostic(
        code(fleet::state::io),
        help("check that the state directory exists and is writable (`--state-dir`)")
    )]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn describe_holder(holder: Option<&LockInfo>) -> String {
    match holder {
        Some(holder) => format!(
            "pid {} on {} since {} UTC ({})",
            holder.pid, holder.host, holder.since, holder.command
        ),
        None => "its holder is unknown (it has just taken the lock and not yet written who it is)"
            .to_string(),
    }
}

/// A held lock; released on drop.
pub trait LockGuard: Send {
    /// If the lock was left by a process that died without releasing it, who that was.
    fn took_over_from(&self) -> Option<&LockInfo>;
}

/// An append-only record of what an apply did.
pub trait Journal: Send + Sync {
    /// Appends one JSON object as a line.
    ///
    /// # Errors
    /// When the journal cannot be written.
    fn append(&self, entry: &serde_json::Value) -> Result<(), StateError>;
}

/// Where locks and journals live.
pub trait StateStore: Send + Sync {
    /// Takes the apply lock of a fleet, failing at once if another process holds it.
    ///
    /// # Errors
    /// [`StateError::Locked`] naming the holder; [`StateError::Io`].
    fn lock(&self, fleet: &str, me: &LockInfo) -> Result<Box<dyn LockGuard>, StateError>;

    /// Opens the journal of a fleet for appending.
    ///
    /// # Errors
    /// [`StateError::Io`].
    fn journal(&self, fleet: &str) -> Result<Box<dyn Journal>, StateError>;
}

/// A state store in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    /// Uses `dir`, creating it when needed.
    ///
    /// # Errors
    /// [`StateError::Io`] when it cannot be created.
    pub fn open(dir: &Path) -> Result<LocalStore, StateError> {
        for sub in ["locks", "journal"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| StateError::Io {
                action: "create",
                path,
                source,
            })?;
        }
        Ok(LocalStore {
            dir: dir.to_path_buf(),
        })
    }

    /// The file naming who holds the lock of a fleet.
    pub fn holder_path(&self, fleet: &str) -> PathBuf {
        self.dir.join("locks").join(format!("{fleet}.holder.json"))
    }

    /// The journal file of a fleet.
    pub fn journal_path(&self, fleet: &str) -> PathBuf {
        self.dir.join("journal").join(format!("{fleet}.jsonl"))
    }
}

struct LocalLock {
    /// Carries the OS lock; its content is not used.
    file: File,
    /// Who holds the lock, written whole by rename.
    holder: PathBuf,
    previous: Option<LockInfo>,
}

impl LockGuard for LocalLock {
    fn took_over_from(&self) -> Option<&LockInfo> {
        self.previous.as_ref()
    }
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        // Remove the holder first, so a clean release is told apart from a killed holder.
        let _ = fs::remove_file(&self.holder);
        let _ = FileExt::unlock(&self.file);
    }
}

/// Reads who holds a lock; `None` when nobody wrote it, or when it names a process of this
/// host that is gone (its details were left by a killed apply, and whoever holds the lock now
/// has not written theirs yet).
fn read_holder(path: &Path) -> Option<LockInfo> {
    let text = fs::read_to_string(path).ok()?;
    let holder: LockInfo = serde_json::from_str(&text).ok()?;
    let here = LockInfo::current("");
    if holder.host == here.host
        && holder.pid != here.pid
        && !Path::new(&format!("/proc/{}", holder.pid)).exists()
    {
        return None;
    }
    Some(holder)
}

/// Writes a file whole: to a temporary file beside it, then renamed over it, so a reader sees
/// the old content or the new, never a part.
fn write_whole(path: &Path, text: &str) -> std::io::Result<()> {
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    match written.and_then(|()| fs::rename(&temporary, path)) {
        Ok(()) => Ok(()),
        Err(error) => {
            let _ = fs::remove_file(&temporary);
            Err(error)
        }
    }
}

impl StateStore for LocalStore {
    fn lock(&self, fleet: &str, me: &LockInfo) -> Result<Box<dyn LockGuard>, StateError> {
        let path = self.dir.join("locks").join(format!("{fleet}.lock"));
        let holder = self.holder_path(fleet);
        let io = |action, path: &Path, source| StateError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("open", &path, e))?;
        let acquired = file
            .try_lock_exclusive()
            .map_err(|e| io("lock", &path, e))?;
        if !acquired {
            return Err(StateError::Locked {
                fleet: fleet.to_string(),
                holder: read_holder(&holder),
            });
        }
        // Details left behind under a free lock are those of an apply that was killed.
        let previous = fs::read_to_string(&holder)
            .ok()
            .and_then(|text| serde_json::from_str::<LockInfo>(&text).ok());
        let text = serde_json::to_string(me).unwrap_or_default();
        write_whole(&holder, &text).map_err(|e| io("write", &holder, e))?;
        Ok(Box::new(LocalLock {
            file,
            holder,
            previous,
        }))
    }

    fn journal(&self, fleet: &str) -> Result<Box<dyn Journal>, StateError> {
        let path = self.journal_path(fleet);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| StateError::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        Ok(Box::new(LocalJournal {
            file: std::sync::Mutex::new(file),
            path,
        }))
    }
}

struct LocalJournal {
    file: std::sync::Mutex<File>,
    path: PathBuf,
}

impl Journal for LocalJournal {
    fn append(&self, entry: &serde_json::Value) -> Result<(), StateError> {
        let mut line = serde_json::to_string(entry).unwrap_or_default();
        line.push('\n');
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let length = file.metadata().map(|m| m.len()).ok();
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|source| {
                // A line written in part (a full disk) is cut off again: the journal keeps
                // whole lines only.
                if let Some(length) = length {
                    let _ = file.set_len(length);
                }
                StateError::Io {
                    action: "append to",
                    path: self.path.clone(),
                    source,
                }
            })
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS`.
pub fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fleet-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// Holds the OS lock of a fleet directly, as an apply does in the moment between taking the
    /// lock and writing who it is.
    fn hold_os_lock(store: &LocalStore, fleet: &str) -> File {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(store.dir.join("locks").join(format!("{fleet}.lock")))
            .unwrap();
        assert!(file.try_lock_exclusive().unwrap());
        file
    }

    fn refusal(store: &LocalStore) -> (Option<LockInfo>, String) {
        match store.lock("f", &LockInfo::current("fleet apply b")) {
            Err(error @ StateError::Locked { .. }) => {
                let text = error.to_string();
                let StateError::Locked { holder, .. } = error else {
                    unreachable!()
                };
                (holder, text)
            }
            Err(other) => panic!("not a refusal: {other}"),
            Ok(_) => panic!("second lock was granted"),
        }
    }

    #[test]
    fn second_lock_names_the_holder_and_release_frees_it() {
        let dir = scratch("names");
        let store = LocalStore::open(&dir).unwrap();
        let first = store
            .lock("f", &LockInfo::current("fleet apply a"))
            .unwrap();
        let (holder, text) = refusal(&store);
        let holder = holder.expect("the holder is named");
        assert_eq!(holder.command, "fleet apply a");
        assert_eq!(holder.pid, std::process::id());
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
        assert!(
            !store.holder_path("f").exists(),
            "a clean release removes the holder"
        );
        let again = store
            .lock("f", &LockInfo::current("fleet apply c"))
            .unwrap();
        assert!(
            again.took_over_from().is_none(),
            "a clean release leaves no holder behind"
        );
        drop(again);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_half_written_holder_is_unknown_never_pid_0() {
        let dir = scratch("torn");
        let store = LocalStore::open(&dir).unwrap();
        let _held = hold_os_lock(&store, "f");
        // The holder's details, cut off mid-way.
        let whole = serde_json::to_string(&LockInfo::current("fleet apply a")).unwrap();
        fs::write(store.holder_path("f"), &whole[..whole.len() / 2]).unwrap();
        let (holder, text) = refusal(&store);
        assert_eq!(holder, None);
        assert!(!text.contains("pid 0"), "{text}");
        assert!(text.contains("unknown"), "{text}");
        // Not written at all yet.
        fs::remove_file(store.holder_path("f")).unwrap();
        let (holder, text) = refusal(&store);
        assert_eq!(holder, None);
        assert!(!text.contains("pid 0"), "{text}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn details_left_by_a_killed_apply_do_not_name_the_new_holder() {
        let dir = scratch("stale");
        let store = LocalStore::open(&dir).unwrap();
        // A process of this host that has exited left its details; someone else holds the
        // lock now and has not written theirs yet.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_pid = gone.id();
        gone.wait().unwrap();
        let mut left = LockInfo::current("fleet apply killed");
        left.pid = gone_pid;
        fs::write(
            store.holder_path("f"),
            serde_json::to_string(&left).unwrap(),
        )
        .unwrap();
        let held = hold_os_lock(&store, "f");
        let (holder, text) = refusal(&store);
        assert_eq!(holder, None, "{text}");
        // Once the lock is free, the next apply takes it over and says from whom.
        drop(held);
        let next = store
            .lock("f", &LockInfo::current("fleet apply c"))
            .unwrap();
        assert_eq!(next.took_over_from().map(|h| h.pid), Some(gone_pid));
        drop(next);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_journal_line_that_cannot_be_written_is_an_error_naming_the_file() {
        let dir = scratch("journal");
        let store = LocalStore::open(&dir).unwrap();
        // A full disk.
        std::os::unix::fs::symlink("/dev/full", store.journal_path("f")).unwrap();
        let journal = store.journal("f").unwrap();
        let error = journal
            .append(&serde_json::json!({"event": "started"}))
            .unwrap_err();
        let text = crate::apply::with_causes(&error);
        assert!(text.contains("f.jsonl"), "{text}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn utc_now_is_a_date() {
        let now = utc_now();
        assert_eq!(now.len(), 19);
        assert!(now.starts_with("20"));
    }
}
