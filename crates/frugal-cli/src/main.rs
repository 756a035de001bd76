//! `frugal`: run, measure and (later) shrink LLMs on the CPU you have.
//!
//! Each subcommand lives in `cmd/`; they share model loading and thread setup
//! from `common.rs`.

mod cmd;
mod common;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "frugal",
    version,
    about = "Run, measure and shrink LLMs on the CPU you have",
    long_about = "frugal runs Llama-family models (Llama, SmolLM2, Qwen2, llama2.c) from GGUF, \
Hugging Face safetensors folders or llama2.c checkpoints, on the CPU.\n\n\
Every --model accepts a path or a known name (see `frugal fetch --list`), fetched on first use."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download a known model into the cache and print its path.
    Fetch(cmd::fetch::Args),
    /// Show a model's architecture, hyper-parameters, tokenizer and tensors.
    Inspect(cmd::inspect::Args),
    /// Generate text from a prompt, streaming tokens, then report speed.
    Generate(cmd::generate::Args),
    /// Chat interactively using the model's chat template.
    Chat(cmd::chat::Args),
    /// Perplexity of a text file, with llama.cpp's method.
    Perplexity(cmd::perplexity::Args),
    /// Measure quality: perplexity, KL divergence from a base, LAMBADA, HellaSwag, multiple choice.
    Eval(cmd::eval::Args),
    /// Measure speed, latency, memory, energy and cost, like llama-bench and more.
    Bench(cmd::bench::Args),
    /// Merge result files from eval and bench into a Markdown table and an HTML page with plots.
    Report(cmd::report::Args),
    /// Write a model as GGUF or as a Hugging Face safetensors folder.
    Convert(cmd::convert::Args),
    /// Quantize a model: RTN, imatrix, GPTQ, AWQ or SmoothQuant W8A8, with optional mixed precision, into ggml types or frugal's own.
    Quantize(cmd::quantize::Args),
    /// Prune a model: magnitude, Wanda or SparseGPT, unstructured or N:M (2:4), optionally rounding the kept weights into a quantized type in the same pass.
    Prune(cmd::prune::Args),
    /// Factor each block matrix into two low-rank matrices: truncated SVD, or SVD whitened by the calibration activations (SVD-LLM), to a parameter-reduction ratio or an energy threshold.
    Lowrank(cmd::lowrank::Args),
    /// Compose structured pruning, low-rank, pruning and quantization from a TOML recipe.
    Compress(cmd::compress::Args),
}

impl Command {
    /// The --threads option of commands that run a model.
    fn threads(&self) -> Option<usize> {
        match self {
            Command::Generate(a) => a.model.threads,
            Command::Chat(a) => a.model.threads,
            Command::Perplexity(a) => a.model.threads,
            Command::Eval(a) => a.model.threads,
            Command::Bench(a) => a.model.threads,
            Command::Quantize(a) => a.threads,
            Command::Prune(a) => a.threads,
            Command::Lowrank(a) => a.threads,
            Command::Compress(a) => a.threads,
            Command::Fetch(_) | Command::Inspect(_) | Command::Convert(_) | Command::Report(_) => {
                None
            }
        }
    }

    fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Fetch(a) => cmd::fetch::run(a),
            Command::Inspect(a) => cmd::inspect::run(a),
            Command::Generate(a) => cmd::generate::run(a),
            Command::Chat(a) => cmd::chat::run(a),
            Command::Perplexity(a) => cmd::perplexity::run(a),
            Command::Eval(a) => cmd::eval::run(a),
            Command::Bench(a) => cmd::bench::run(a),
            Command::Report(a) => cmd::report::run(a),
            Command::Convert(a) => cmd::convert::run(a),
            Command::Quantize(a) => cmd::quantize::run(a),
            Command::Prune(a) => cmd::prune::run(a),
            Command::Lowrank(a) => cmd::lowrank::run(a),
            Command::Compress(a) => cmd::compress::run(a),
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let result = common::init_threads(cli.command.threads())
        // Run the command on a pool thread: each matmul then hands work to the
        // other threads in about a microsecond, instead of paying a cross-thread
        // wake-up from outside the pool (hundreds of matmuls per token).
        .and_then(|()| rayon::scope(|_| cli.command.run()));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
