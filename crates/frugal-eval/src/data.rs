//! Task files: read whole (transparently decompressing `.bz2`), hashed for
//! provenance, and parsed line by line with errors that name the line.

use crate::EvalError;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest task file (or decompressed text) read: 1 GiB, far above any
/// benchmark's size, so a wrong path or a decompression bomb fails cleanly.
pub const MAX_TASK_BYTES: u64 = 1 << 30;

/// What to do with a malformed line (or record) in a task file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnBadLine {
    /// Fail, naming the line (the default: a bad file should not pass quietly).
    #[default]
    Stop,
    /// Skip it, count it, and go on.
    Skip,
}

impl std::str::FromStr for OnBadLine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop" => Ok(OnBadLine::Stop),
            "skip" => Ok(OnBadLine::Skip),
            _ => Err(format!("unknown bad-line policy {s:?}: use stop or skip")),
        }
    }
}

/// A task file's text and the sha256 of its bytes as stored.
#[derive(Clone, Debug)]
pub struct TaskFile {
    pub path: PathBuf,
    pub text: String,
    /// Lowercase hex sha256 of the file's bytes on disk (compressed, if it is).
    pub sha256: String,
}

/// A line that was skipped under [`OnBadLine::Skip`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SkippedLine {
    pub line: usize,
    pub reason: String,
}

/// Items parsed from a task file, and the lines skipped.
#[derive(Clone, Debug)]
pub struct Parsed<T> {
    pub items: Vec<T>,
    pub skipped: Vec<SkippedLine>,
}

impl TaskFile {
    /// Read `path`; a name ending in `.bz2` is decompressed. The text must be UTF-8.
    pub fn read(path: &Path) -> Result<TaskFile, EvalError> {
        let io = |source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.is_dir() {
            return Err(EvalError::Format {
                path: path.to_path_buf(),
                reason: "is a directory, not a task file".into(),
            });
        }
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_TASK_BYTES {
            return Err(EvalError::Format {
                path: path.to_path_buf(),
                reason: format!(
                    "{len} bytes: larger than the {MAX_TASK_BYTES}-byte limit for a task file"
                ),
            });
        }
        let raw = std::fs::read(path).map_err(io)?;
        let sha256 = sha256_hex(&raw);
        let bytes = if path.extension().is_some_and(|e| e == "bz2") {
            let mut out = Vec::new();
            bzip2::read::MultiBzDecoder::new(&raw[..])
                .take(MAX_TASK_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(|e| EvalError::Format {
                    path: path.to_path_buf(),
                    reason: format!("not a valid bzip2 file: {e}"),
                })?;
            if out.len() as u64 > MAX_TASK_BYTES {
                return Err(EvalError::Format {
                    path: path.to_path_buf(),
                    reason: format!("decompresses to more than {MAX_TASK_BYTES} bytes"),
                });
            }
            out
        } else {
            raw
        };
        let text = String::from_utf8(bytes).map_err(|e| EvalError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        Ok(TaskFile {
            path: path.to_path_buf(),
            text,
            sha256,
        })
    }

    /// A task file from text in memory (tests, generated tasks).
    pub fn from_text(name: &str, text: String) -> TaskFile {
        let sha256 = sha256_hex(text.as_bytes());
        TaskFile {
            path: PathBuf::from(name),
            text,
            sha256,
        }
    }

    /// Lines with their 1-based numbers (a trailing `\r` is removed).
    pub fn lines(&self) -> impl Iterator<Item = (usize, &str)> {
        self.text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
    }

    /// Parse every non-blank line with `parse`. A line it rejects stops the
    /// parse with an error naming the line, or is recorded and skipped.
    pub fn parse_lines<T>(
        &self,
        on_bad: OnBadLine,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<Parsed<T>, EvalError> {
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        for (line, text) in self.lines() {
            if text.trim().is_empty() {
                continue;
            }
            match parse(text) {
                Ok(v) => items.push(v),
                Err(reason) => self.bad(on_bad, line, reason, &mut skipped)?,
            }
        }
        Ok(Parsed { items, skipped })
    }

    /// Handle one malformed record at `line`: the error under `Stop`, recorded under `Skip`.
    pub fn bad(
        &self,
        on_bad: OnBadLine,
        line: usize,
        reason: String,
        skipped: &mut Vec<SkippedLine>,
    ) -> Result<(), EvalError> {
        match on_bad {
            OnBadLine::Stop => Err(EvalError::BadLine {
                path: self.path.clone(),
                line,
                reason,
            }),
            OnBadLine::Skip => {
                skipped.push(SkippedLine { line, reason });
                Ok(())
            }
        }
    }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_line_is_named_or_skipped() {
        let f = TaskFile::from_text("t.jsonl", "1\n\nx\n3\r\n".into());
        let parse = |l: &str| l.parse::<i32>().map_err(|e| e.to_string());
        let err = f.parse_lines(OnBadLine::Stop, parse).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("t.jsonl:3: "), "{msg}");
        let p = f.parse_lines(OnBadLine::Skip, parse).unwrap();
        assert_eq!(p.items, vec![1, 3]);
        assert_eq!(p.skipped.len(), 1);
        assert_eq!(p.skipped[0].line, 3);
    }

    #[test]
    fn bz2_is_decompressed_and_hashed_as_stored() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.txt.bz2");
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        enc.write_all(b"hello\nworld\n").unwrap();
        let raw = enc.finish().unwrap();
        std::fs::write(&p, &raw).unwrap();
        let f = TaskFile::read(&p).unwrap();
        assert_eq!(f.text, "hello\nworld\n");
        assert_eq!(f.sha256, sha256_hex(&raw));
        // A corrupt bz2 is a clear error, not a panic.
        std::fs::write(&p, b"BZh9 garbage").unwrap();
        let e = TaskFile::read(&p).unwrap_err().to_string();
        assert!(e.contains("bzip2"), "{e}");
        let e = TaskFile::read(&dir.path().join("missing.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.jsonl"), "{e}");
    }
}
