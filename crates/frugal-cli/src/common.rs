//! What the subcommands share: the --model/--tokenizer/--threads options,
//! model loading, sampling options, and small reporting helpers.

use anyhow::{Context, Result};
use clap::Args;
use frugal_model::{KvType, LoadedModel, Residency, SamplerConfig};
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a GGUF file, a Hugging Face folder, a llama2.c .bin, or a known
    /// name (smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b) fetched on first use.
    #[arg(short, long, default_value = "smollm2-135m")]
    pub model: String,
    /// Tokenizer file, for models that carry none (llama2.c .bin, tokenizer.json, or a GGUF vocabulary).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// How the KV cache stores keys and values: f32 (as computed), f16, or
    /// the ggml blocks q8 (Q8_0) and q4 (Q4_0), which need heads of a
    /// multiple of 32 values.
    #[arg(long, value_name = "TYPE", default_value = "f32", value_parser = kv_type_parser())]
    pub kv_type: KvType,
    /// Map a GGUF model's weights from the file instead of reading them into
    /// memory first. Reading costs a moment at start; mapping decodes slower
    /// (4 KiB pages instead of 2 MiB huge pages: 2-14 % measured) but lets
    /// the system page the weights out. Files over half the available
    /// memory are mapped anyway.
    #[arg(long)]
    pub mmap: bool,
}

/// `--kv-type`: the names, with what each costs per cached value.
fn kv_type_parser() -> impl clap::builder::TypedValueParser<Value = KvType> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new([
        PossibleValue::new("f32").help("4 bytes per value, exact (the default)"),
        PossibleValue::new("f16").help("2 bytes per value"),
        PossibleValue::new("q8")
            .alias("q8_0")
            .help("Q8_0: 8-bit, 34 bytes per 32 values (1.06 bytes per value)"),
        PossibleValue::new("q4")
            .alias("q4_0")
            .help("Q4_0: 4-bit, 18 bytes per 32 values (0.56 bytes per value)"),
    ])
    .map(|s| s.parse::<KvType>().expect("every listed name parses"))
}

impl ModelArgs {
    /// Load the model and its tokenizer (the thread pool is already sized by `main`).
    pub fn load(&self, quiet: bool) -> Result<LoadedModel> {
        let path = resolve_model(&self.model, quiet)?;
        let residency = if self.mmap {
            Residency::Mapped
        } else if !fits_in_memory(&path) {
            if !quiet {
                eprintln!(
                    "{}: larger than half the available memory; mapping it instead (--mmap)",
                    path.display()
                );
            }
            Residency::Mapped
        } else {
            Residency::InMemory
        };
        let lm = frugal_model::load_with(&path, self.tokenizer.as_deref(), residency)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok(lm)
    }

    pub fn threads(&self) -> usize {
        rayon::current_num_threads()
    }
}

/// Whether reading the file at `path` into memory leaves at least half of
/// the available memory free (`MemAvailable` in /proc/meminfo; true where
/// that cannot be read). A model too big for that is better mapped, where
/// the system can page it.
fn fits_in_memory(path: &std::path::Path) -> bool {
    let Ok(size) = std::fs::metadata(path).map(|m| m.len()) else {
        return true;
    };
    available_memory().is_none_or(|bytes| size <= bytes / 2)
}

/// Bytes of memory available for new work (`MemAvailable` in /proc/meminfo),
/// where the system tells.
pub fn available_memory() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb = m
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// A path as is; a known model name is fetched into the cache first.
pub fn resolve_model(arg: &str, quiet: bool) -> Result<PathBuf> {
    let opts = frugal_fetch::FetchOptions {
        quiet,
        ..Default::default()
    };
    Ok(frugal_fetch::resolve_model_with(arg, &opts)?)
}

/// Size the global thread pool (once, before any parallel work).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = match threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .stack_size(8 << 20)
        .build_global()
        .context("starting the thread pool")?;
    Ok(())
}

#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Temperature; 0 picks the most likely token every time (greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: no limit).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than min-p × the top token's probability (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise recently seen tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty considers.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed: the same seed gives the same output.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn config(&self) -> Result<SamplerConfig> {
        let c = SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        };
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

/// Peak resident memory of this process in bytes (Linux), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The options of commands that produce a result record (eval, bench).
#[derive(Args, Clone, Debug)]
pub struct RecordArgs {
    /// Name for this model in reports (default: the file name).
    #[arg(long)]
    pub label: Option<String>,
    /// Write the result record (JSON) to this file, for `frugal report`.
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Print the result record (JSON) on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

impl RecordArgs {
    /// Write the record to --out (atomically) and print it with --json.
    pub fn emit(&self, record: &frugal_eval::Record) -> Result<()> {
        let text = serde_json::to_string_pretty(record)? + "\n";
        if let Some(out) = &self.out {
            write_atomic(out, text.as_bytes())?;
            if !self.quiet && !self.json {
                eprintln!("wrote {}", out.display());
            }
        }
        if self.json {
            print!("{text}");
        }
        Ok(())
    }
}

/// Write `bytes` to a temporary file beside `path`, then rename it into place,
/// so an error never leaves a half-written file under the final name.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("writing {}", tmp.display())));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("renaming {} to {}", tmp.display(), path.display()))
    })
}

/// `--ctx`: at least 4 tokens, so each chunk has a scored half.
pub fn parse_ctx(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 4 => Ok(n),
        Ok(n) => Err(format!("{n} is too small: at least 4 tokens")),
        Err(e) => Err(e.to_string()),
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A progress bar on stderr, hidden when `quiet`.
pub fn progress_bar(len: u64, quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}
