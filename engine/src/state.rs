//! The state store: locks, the apply journal and plan history — never the fleet's state,
//! which is discovered from the cloud.
//!
//! In: a fleet name and who is asking. Out: a [`LockGuard`] held for the length of an apply,
//! and an append-only journal of what apply did. [`LocalStore`] keeps both in a directory;
//! its lock is an OS file lock, so a killed process releases it and never blocks the next
//! apply.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
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
    #[error("fleet `{fleet}` is locked by another apply: pid {} on {} since {} UTC ({})", holder.pid, holder.host, holder.since, holder.command)]
    #[diagnostic(
        code(fleet::state::locked),
        help("wait for that apply to finish; if that process is gone the lock frees itself (it is an OS file lock), so run again")
    )]
    Locked {
        /// The fleet.
        fleet: String,
        /// Who holds it.
        holder: LockInfo,
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

    /// The journal file of a fleet.
    pub fn journal_path(&self, fleet: &str) -> PathBuf {
        self.dir.join("journal").join(format!("{fleet}.jsonl"))
    }
}

struct LocalLock {
    file: File,
    previous: Option<LockInfo>,
}

impl LockGuard for LocalLock {
    fn took_over_from(&self) -> Option<&LockInfo> {
        self.previous.as_ref()
    }
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        // Clear the holder first so a clean release is told apart from a killed holder.
        let _ = self.file.set_len(0);
        let _ = FileExt::unlock(&self.file);
    }
}

impl StateStore for LocalStore {
    fn lock(&self, fleet: &str, me: &LockInfo) -> Result<Box<dyn LockGuard>, StateError> {
        let path = self.dir.join("locks").join(format!("{fleet}.lock"));
        let io = |action, source| StateError::Io {
            action,
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("open", e))?;
        let mut held = String::new();
        let acquired = file.try_lock_exclusive().map_err(|e| io("lock", e))?;
        file.read_to_string(&mut held).map_err(|e| io("read", e))?;
        let previous = serde_json::from_str::<LockInfo>(&held).ok();
        if !acquired {
            return Err(StateError::Locked {
                fleet: fleet.to_string(),
                holder: previous.unwrap_or_else(|| LockInfo {
                    pid: 0,
                    host: "unknown".to_string(),
                    command: "unknown".to_string(),
                    since: "unknown".to_string(),
                }),
            });
        }
        file.set_len(0).map_err(|e| io("write", e))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| io("write", e))?;
        let text = serde_json::to_string(me).unwrap_or_default();
        file.write_all(text.as_bytes())
            .map_err(|e| io("write", e))?;
        file.flush().map_err(|e| io("write", e))?;
        Ok(Box::new(LocalLock { file, previous }))
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
        file.write_all(line.as_bytes())
            .map_err(|source| StateError::Io {
                action: "append to",
                path: self.path.clone(),
                source,
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

    #[test]
    fn second_lock_names_the_holder_and_release_frees_it() {
        let dir = std::env::temp_dir().join(format!("fleet-state-test-{}", std::process::id()));
        let store = LocalStore::open(&dir).unwrap();
        let first = store
            .lock("f", &LockInfo::current("fleet apply a"))
            .unwrap();
        let Err(StateError::Locked { holder, .. }) =
            store.lock("f", &LockInfo::current("fleet apply b"))
        else {
            panic!("second lock was granted")
        };
        assert_eq!(holder.command, "fleet apply a");
        assert_eq!(holder.pid, std::process::id());
        drop(first);
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
    fn utc_now_is_a_date() {
        let now = utc_now();
        assert_eq!(now.len(), 19);
        assert!(now.starts_with("20"));
    }
}
