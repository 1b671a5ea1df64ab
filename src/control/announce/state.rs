//! The state file: which addresses this process added to its device, so
//! that a restart after a crash or SIGKILL removes them before claiming.
//! A lock file beside it, held while the process lives, tells a live
//! owner from a dead one.

use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    pub pid: u32,
    pub device: String,
    /// `(address, prefix length)` as added.
    pub addresses: Vec<(IpAddr, u8)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "another rusty_rail holds {path} (it runs on the same device in this network namespace); stop it first"
    )]
    Busy { path: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the state file {path}: {message}")]
    Read { path: PathBuf, message: String },
}

/// `<RR_STATE_DIR>/<device>.<netns>.json`: device names repeat across
/// network namespaces, so the namespace's inode is part of the name.
#[derive(Debug, Clone)]
pub struct File {
    path: PathBuf,
}

impl File {
    pub fn new(dir: &Path, device: &str) -> File {
        File {
            path: dir.join(format!("{device}.{}.json", netns_inode())),
        }
    }

    /// Takes the lock for this device, held until the `Lock` drops (or the
    /// process dies): only one rusty_rail manages a device's addresses.
    pub fn lock(&self) -> Result<Lock, Error> {
        let path = self.path.with_extension("lock");
        let err = |source| Error::Lock {
            path: path.clone(),
            source,
        };
        // Without it, nodes in different namespaces would share a file.
        if netns_inode() == 0 {
            return Err(err(std::io::Error::other(
                "cannot read /proc/self/ns/net to tell this network namespace apart",
            )));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err)?;
        match file.try_lock() {
            Ok(()) => Ok(Lock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy { path }),
            Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// None when there is no file.
    pub fn read(&self) -> Result<Option<Saved>, Error> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Read {
                    path: self.path.clone(),
                    message: e.to_string(),
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Read {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Replaces the file whole (write aside, then rename), so a crash
    /// mid-write leaves the old list or the new one; an empty list
    /// removes it.
    pub fn write(&self, saved: &Saved) -> Result<(), Error> {
        if saved.addresses.is_empty() {
            self.remove();
            return Ok(());
        }
        let err = |source| Error::Write {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        // Serialising plain data cannot fail.
        let text = serde_json::to_string(saved).unwrap_or_default();
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An exclusive lock on a device's state, released on drop or death.
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

/// The inode of our network namespace (`/proc/self/ns/net` links to
/// `net:[4026531840]`), or 0 when it cannot be read.
fn netns_inode() -> u64 {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|link| {
            let text = link.to_string_lossy().into_owned();
            text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rr-state-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn written_state_reads_back_and_an_empty_list_removes_the_file() {
        let d = dir("roundtrip");
        let f = File::new(&d.join("sub"), "eth0");
        assert!(f.read().unwrap().is_none());
        let saved = Saved {
            pid: 42,
            device: "eth0".to_string(),
            addresses: vec![
                ("192.168.77.100".parse().unwrap(), 24),
                ("fd00::100".parse().unwrap(), 64),
            ],
        };
        f.write(&saved).unwrap();
        assert_eq!(f.path(), d.join(format!("sub/eth0.{}.json", netns_inode())));
        assert_ne!(netns_inode(), 0);
        assert_eq!(f.read().unwrap(), Some(saved.clone()));
        f.write(&Saved {
            addresses: Vec::new(),
            ..saved
        })
        .unwrap();
        assert!(!f.path().exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_garbled_file_is_an_error_naming_it() {
        let d = dir("garbled");
        std::fs::create_dir_all(&d).unwrap();
        let f = File::new(&d, "eth0");
        std::fs::write(f.path(), "{not json").unwrap();
        let err = f.read().unwrap_err().to_string();
        assert!(err.contains("eth0.") && !err.contains('\n'), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_lock_is_exclusive_until_dropped() {
        let d = dir("lock");
        let f = File::new(&d, "eth0");
        let held = f.lock().unwrap();
        let err = f.lock().unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        assert!(!err.to_string().contains('\n'));
        drop(held);
        f.lock().unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
