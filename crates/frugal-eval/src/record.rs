//! The JSON record every `frugal eval` and `frugal bench` result is written
//! as: what was measured (metrics), on which model and data (with sha256s),
//! by which frugal build, on which machine. `frugal report` merges them.
//!
//! Metric keys by task (all in `metrics`; a report reads these names):
//! - `perplexity`: `ppl`, `ppl_stderr`, `nll`, `tokens_scored`.
//! - `kld`: `kld_mean`, `kld_stderr`, `kld_median`, `kld_p99`, `same_top_pct`,
//!   `same_top_stderr_pct`, `rms_dp_pct`, `ppl_model`, `ppl_model_stderr`,
//!   `ppl_base`, `ppl_base_stderr`, `tokens_scored`; also `kld_p90`,
//!   `kld_p999`, `kld_max`, `rms_dp_stderr_pct`, `dp_mean_pct`,
//!   `dp_mean_stderr_pct`, `ln_ppl_ratio`, `ln_ppl_ratio_stderr`. A run that
//!   only saves a base's logits has `ppl_base`, `ppl_base_stderr`, `tokens_scored`.
//! - `lambada`: `acc_pct`, `acc_stderr_pct`, `word_ppl`, `items`, `correct`,
//!   `cut_items`, `target_tokens_mean`, `seconds`.
//! - `hellaswag`, `mc`: `acc_pct` (length-normalized), `acc_stderr_pct`,
//!   `acc_raw_pct` (summed log-probability), `items`, `correct`, `cut_items`,
//!   `tokens_run`, `seconds`.
//! - `bench`: `decode_tps`, `decode_tps_sd`, `prefill_tps` (at the first prompt
//!   length), `prefill` (one entry per prompt length: `n_prompt`, `tps`,
//!   `tps_sd`, `ttft_ms`), `ttft_ms`, `tpot_ms_p50`, `tpot_ms_p90`,
//!   `tpot_ms_p99`, `peak_rss_bytes`, `weight_bytes_per_token`,
//!   `kv_bytes_per_token`, `flops_per_token`, `energy_j_per_token`,
//!   `energy_source`, `usd_per_mtok`.

use crate::data::hex;
use crate::EvalError;
use frugal_model::LoadedModel;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Version of the record layout; bumped when a field changes meaning.
pub const SCHEMA: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    /// "eval" or "bench".
    pub kind: String,
    /// "perplexity", "kld", "lambada", "hellaswag", "mc" or "bench".
    pub task: String,
    /// frugal's version and the git commit it was built from.
    pub frugal_version: String,
    /// Seconds since the Unix epoch when the record was made.
    pub created_unix: u64,
    pub model: ModelInfo,
    /// The reference model of a divergence measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<ModelInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataInfo>,
    /// The options that shape the result (ctx, chunks, limit, ...).
    pub settings: serde_json::Value,
    /// The task's numbers.
    pub metrics: serde_json::Value,
    pub machine: MachineInfo,
}

impl Record {
    pub fn new(
        kind: &str,
        task: &str,
        model: ModelInfo,
        settings: serde_json::Value,
        metrics: serde_json::Value,
    ) -> Record {
        Record {
            schema: SCHEMA,
            kind: kind.into(),
            task: task.into(),
            frugal_version: frugal_version(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model,
            base: None,
            data: None,
            settings,
            metrics,
            machine: MachineInfo::current(),
        }
    }
}

/// A model as a record names it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Short name for tables and plots (the file name without extension, or --label).
    pub label: String,
    pub path: PathBuf,
    /// sha256 of the file (of all files, for a folder).
    pub sha256: String,
    pub file_bytes: u64,
    pub arch: String,
    pub format: String,
    /// Parameters in all tensors.
    pub params: u64,
    /// Bytes of all tensors as stored.
    pub tensor_bytes: u64,
    /// Bits per weight over all tensors.
    pub bpw: f64,
}

impl ModelInfo {
    /// Describe a loaded model, hashing its file(s).
    pub fn of(lm: &LoadedModel, label: Option<&str>) -> Result<ModelInfo, EvalError> {
        let params: u64 = lm
            .source
            .tensors
            .iter()
            .map(|t| t.n_elements() as u64)
            .sum();
        let tensor_bytes: u64 = lm
            .source
            .tensors
            .iter()
            .map(|t| t.bytes().len() as u64)
            .sum();
        let label = label.map(str::to_string).unwrap_or_else(|| {
            let name = lm.path.file_name().unwrap_or_default().to_string_lossy();
            name.strip_suffix(".gguf")
                .or_else(|| name.strip_suffix(".bin"))
                .unwrap_or(&name)
                .to_string()
        });
        Ok(ModelInfo {
            label,
            path: lm.path.clone(),
            sha256: sha256_path(&lm.path)?,
            file_bytes: lm.file_bytes,
            arch: lm.model.config.arch.name().into(),
            format: lm.format.name().into(),
            params,
            tensor_bytes,
            bpw: if params == 0 {
                0.0
            } else {
                tensor_bytes as f64 * 8.0 / params as f64
            },
        })
    }
}

/// A data file as a record names it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataInfo {
    pub path: PathBuf,
    pub sha256: String,
    /// Items evaluated (chunks, tasks, questions).
    pub items: usize,
    /// Malformed lines skipped under `--on-bad-line skip`.
    #[serde(default)]
    pub skipped_lines: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineInfo {
    pub cpu: String,
    pub logical_cpus: usize,
    pub threads: usize,
    /// Kernel instruction set frugal chose.
    pub isa: String,
}

impl MachineInfo {
    pub fn current() -> MachineInfo {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        MachineInfo {
            cpu,
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            threads: rayon::current_num_threads(),
            isa: format!("{:?}", frugal_kernels::detected_isa()),
        }
    }
}

/// "0.1.0 (abc123def456)" when built from git, else the crate version.
pub fn frugal_version() -> String {
    let commit = env!("FRUGAL_GIT_COMMIT");
    if commit.is_empty() {
        env!("CARGO_PKG_VERSION").to_string()
    } else {
        format!("{} ({commit})", env!("CARGO_PKG_VERSION"))
    }
}

/// sha256 of a file, or of a folder's regular files (name and bytes, in name
/// order). A fetched model's `.sha256` marker, newer than the file, is reused.
pub fn sha256_path(path: &Path) -> Result<String, EvalError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| EvalError::Io { path: p, source }
    };
    if path.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        let mut h = Sha256::new();
        for p in &names {
            h.update(p.file_name().unwrap_or_default().as_encoded_bytes());
            h.update([0u8]);
            h.update(sha256_file(p)?.as_bytes());
        }
        return Ok(hex(&h.finalize()));
    }
    if let Some(s) = marker_hash(path) {
        return Ok(s);
    }
    sha256_file(path)
}

fn marker_hash(path: &Path) -> Option<String> {
    let mut name = path.file_name()?.to_os_string();
    name.push(".sha256");
    let marker = path.with_file_name(name);
    let newer = std::fs::metadata(&marker).ok()?.modified().ok()?
        >= std::fs::metadata(path).ok()?.modified().ok()?;
    if !newer {
        return None;
    }
    let s = std::fs::read_to_string(&marker).ok()?;
    let h = s.split_whitespace().next()?;
    (h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).then(|| h.to_ascii_lowercase())
}

/// Streaming sha256 of one file.
pub fn sha256_file(path: &Path) -> Result<String, EvalError> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        }
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_hash_matches_known_digest_and_marker_is_reused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        std::fs::write(&p, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_path(&p).unwrap(), abc);
        // A marker written after the file is trusted (fetch writes these).
        let fake = "0".repeat(64);
        std::fs::write(d.path().join("m.gguf.sha256"), format!("{fake}  m.gguf\n")).unwrap();
        assert_eq!(sha256_path(&p).unwrap(), fake);
        // A folder hashes its files by name and content.
        let a = sha256_path(d.path()).unwrap();
        std::fs::write(d.path().join("z"), b"").unwrap();
        assert_ne!(a, sha256_path(d.path()).unwrap());
    }

    #[test]
    fn record_round_trips() {
        let m = ModelInfo {
            label: "x".into(),
            path: "x.gguf".into(),
            sha256: "0".repeat(64),
            file_bytes: 10,
            arch: "llama".into(),
            format: "gguf".into(),
            params: 8,
            tensor_bytes: 4,
            bpw: 4.0,
        };
        let r = Record::new(
            "eval",
            "kld",
            m,
            serde_json::json!({}),
            serde_json::json!({"kld": 0.1}),
        );
        let s = serde_json::to_string(&r).unwrap();
        let back: Record = serde_json::from_str(&s).unwrap();
        assert_eq!(back.task, "kld");
        assert_eq!(back.metrics["kld"], 0.1);
        assert!(back.frugal_version.starts_with(env!("CARGO_PKG_VERSION")));
    }
}
