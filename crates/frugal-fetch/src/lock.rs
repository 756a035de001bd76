//! Keeping concurrent fetches of one model from stepping on each other.
//!
//! Within a process a mutex serializes the slow path of `fetch` (tests
//! often fetch the same model from several threads). Across processes a
//! lock file `<model dir>/.lock`, created exclusively and holding the
//! owner's pid, does the same; a lock whose owner is gone (on Linux,
//! checked through `/proc`) or that is very old is taken over.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::FetchError;

static IN_PROCESS: Mutex<()> = Mutex::new(());

/// Serialize fetches within this process.
pub(crate) fn in_process() -> MutexGuard<'static, ()> {
    // A panic while holding the lock leaves nothing to repair: every
    // write goes to a temporary name first.
    IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where owner liveness cannot be checked, a lock this old is stale.
const STALE_AFTER: Duration = Duration::from_secs(6 * 3600);
const POLL: Duration = Duration::from_millis(250);

/// An exclusive lock file, removed on drop.
#[derive(Debug)]
pub(crate) struct DirLock {
    path: PathBuf,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl DirLock {
    /// Take `<dir>/.lock`, waiting while another live process holds it.
    /// `waiting` is called once if we have to wait.
    pub(crate) fn acquire(dir: &Path, mut waiting: impl FnMut(&Path)) -> Result<Self, FetchError> {
        let path = dir.join(".lock");
        let mut announced = false;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(DirLock { path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if is_stale(&path) {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    if !announced {
                        waiting(&path);
                        announced = true;
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => {
                    return Err(FetchError::Io {
                        context: format!("creating lock {}", path.display()),
                        source: e,
                    })
                }
            }
        }
    }
}

fn is_stale(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string(path) else {
        // Vanished (released) or unreadable: just try again.
        return false;
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        // Being written right now, or garbage: judge by age.
        return older_than(path, Duration::from_secs(10));
    };
    // This process holds no lock file while it waits for one (the
    // in-process mutex sees to that): our own pid means a dead process
    // whose pid was reused.
    if pid == std::process::id() {
        return true;
    }
    match process_alive(pid) {
        Some(alive) => !alive,
        None => older_than(path, STALE_AFTER),
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d > age)
}

/// Whether `pid` is a running process, where that can be told.
fn process_alive(pid: u32) -> Option<bool> {
    let proc = Path::new("/proc");
    if proc.join("self").exists() {
        Some(proc.join(pid.to_string()).exists())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn lock_is_exclusive_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let lock = DirLock::acquire(dir.path(), |_| panic!("should not wait")).unwrap();
        let text = fs::read_to_string(dir.path().join(".lock")).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(lock);
        assert!(!dir.path().join(".lock").exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn waits_for_a_live_owner_and_takes_over_a_dead_one() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(".lock");

        // A dead owner: the lock is taken over at once.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(&lock, format!("{dead}\n")).unwrap();
        let t = Instant::now();
        drop(DirLock::acquire(dir.path(), |_| panic!("should not wait")).unwrap());
        assert!(t.elapsed() < Duration::from_secs(1));

        // A live owner: we wait until it is gone.
        let mut child = std::process::Command::new("sleep")
            .arg("1")
            .spawn()
            .unwrap();
        fs::write(&lock, format!("{}\n", child.id())).unwrap();
        let reaper = std::thread::spawn(move || child.wait().unwrap());
        let t = Instant::now();
        let mut waited = false;
        let held = DirLock::acquire(dir.path(), |_| waited = true).unwrap();
        assert!(waited);
        assert!(
            t.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        reaper.join().unwrap();
        drop(held);
    }
}
