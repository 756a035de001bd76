//! `frugal quantize`: a model through a rounding method into a storage format.

use crate::common::{available_memory, progress_bar, resolve_model};
use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use frugal_compress::calib::Calibration;
use frugal_compress::quant::budget;
use frugal_compress::quant::imatrix::Imatrix;
use frugal_compress::quant::pipeline::{quantize_model, QuantizeOptions, Quantized};
use frugal_compress::quant::scales::Scaling;
use frugal_compress::quant::{Gptq, Method, Rtn};
use frugal_formats::gguf::GgufWriter;
use frugal_formats::{FrugalType, GgmlType, MetaValue};
use frugal_model::load::{load_source, load_tokenizer};
use frugal_model::Model;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Round to nearest, block by block (llama-quantize's output, byte for byte, for ggml types).
    Rtn,
    /// Round to nearest with each block's scales searched under the calibration's per-channel
    /// activation energy (llama.cpp's imatrix). Needs --calib.
    Imatrix,
    /// GPTQ: column-by-column rounding with error feedback through the calibration Hessian.
    Gptq,
    /// AWQ, then round to nearest: per input channel, scales s = RMS(x)^α (α searched on a grid
    /// of 20 in [0, 1), or --alpha) multiply the weight columns and divide the inputs (folded
    /// into the RMSNorm before Q, K, V and gate, up, into up's rows for down), chosen for the
    /// smallest output error of the rounded weights. Needs --calib.
    Awq,
    /// AWQ's scales, then GPTQ on the scaled weights. Needs --calib.
    AwqGptq,
    /// SmoothQuant W8A8: s_j = max|x_j|^α / max|W_j|^(1-α) (--alpha, default 0.5) moves the
    /// activations' outlier channels into the weights (folded as for awq), then int8 weights by
    /// round to nearest. For --type W8_row (implied), whose activations are int8 per token,
    /// quantized on the fly. Needs --calib.
    Smoothquant,
}

/// How `--budget-bpw` compares the matrices' errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BudgetSensitivity {
    /// Weighted squared output error of each matrix, scaled by the KL divergence of the model's
    /// output when that matrix alone is rounded.
    Kld,
    /// Weighted squared output error of each matrix, relative to the residual stream entering it.
    Proxy,
}

#[derive(clap::Args)]
#[command(after_help = "\
Formats: ggml types Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K (llama.cpp reads them), or \
frugal's own FQ<bits><a|s>_g<group> / FQ<bits><a|s>_row (asymmetric or symmetric, groups of \
32-256 or one scale per row; llama.cpp refuses them). --bits/--group/--sym pick the ggml type \
when one expresses the scheme, else a frugal type.

Calibrate on text that is not your evaluation text, e.g. wikitext-2 valid.txt when you evaluate on wiki.test.raw.

Examples:
  frugal quantize -m model-f32.gguf -o q4_0.gguf --type Q4_0
  frugal quantize -m model-f32.gguf -o imx-q4k.gguf --method imatrix --type Q4_K --calib valid.txt
  frugal quantize -m model-f32.gguf -o gptq3.gguf --method gptq --bits 3 --group 128 --calib valid.txt
  frugal quantize -m model-f32.gguf -o awq-q4_0.gguf --method awq --type Q4_0 --calib valid.txt
  frugal quantize -m model-f32.gguf -o w8a8.gguf --method smoothquant --type W8_row --calib valid.txt")]
pub struct Args {
    /// Model to quantize (path or known name). A float model gives the best results.
    #[arg(short, long)]
    pub model: String,
    /// Output GGUF file (written under a temporary name, then renamed).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Rounding method.
    #[arg(long, value_enum, default_value = "rtn")]
    pub method: MethodArg,
    /// Storage type of the block matrices (see below). Conflicts with --bits.
    #[arg(long = "type", conflicts_with_all = ["bits", "group", "sym"])]
    pub ty: Option<String>,
    /// Bits per weight code, 2 to 8 (with --group and --sym), instead of --type.
    #[arg(long)]
    pub bits: Option<u8>,
    /// Elements per scale: 32, 64, 128 or 256; 0 for one scale per row (per channel).
    #[arg(long, default_value = "32", requires = "bits")]
    pub group: u16,
    /// Symmetric codes (scale only) instead of asymmetric (scale and offset).
    #[arg(long, requires = "bits")]
    pub sym: bool,
    /// Type of the output matrix (and of the embedding when the model ties them).
    /// Default: Q6_K, or Q8_0 for 8-bit types (with llama.cpp's fallbacks).
    #[arg(long)]
    pub output_type: Option<String>,
    /// Type of the token embedding when untied. Default: the block type.
    #[arg(long)]
    pub embd_type: Option<String>,
    /// Mixed precision: give each block matrix its own type (of
    /// --budget-types, llama.cpp's fallbacks applied) so the whole stays within this many bits
    /// per weight, spending bits where the sensitivity measured on the
    /// calibration text (see --budget-sensitivity) says they cut the most
    /// output error. Needs --calib; --type is then optional (it only sets the
    /// default output type).
    #[arg(long, value_name = "BPW")]
    pub budget_bpw: Option<f64>,
    /// With --budget-bpw: the candidate types, comma-separated. Default:
    /// Q2_K,Q3_K,Q4_0,Q4_K,Q4_1,Q5_0,Q5_K,Q5_1,Q6_K,Q8_0 (all of them load in
    /// llama.cpp). frugal's own types (FQ4a_g128, ...) may be listed too; the
    /// file then needs frugal to run.
    #[arg(
        long,
        value_name = "TYPES",
        value_delimiter = ',',
        requires = "budget_bpw"
    )]
    pub budget_types: Vec<String>,
    /// With --budget-bpw: how the matrices' errors are compared. `kld`
    /// measures, for each matrix, the KL divergence of the model's output
    /// when that matrix alone is rounded (to the largest candidate of at
    /// most 4.5 bpw, else the cheapest), and weighs its options by it (one
    /// extra pass per matrix over --budget-kld-tokens). `proxy` compares the
    /// one-pass weighted squared error alone (faster).
    #[arg(long, value_enum, default_value = "kld", requires = "budget_bpw")]
    pub budget_sensitivity: BudgetSensitivity,
    /// With `--budget-sensitivity kld`: calibration tokens for the KLD
    /// measurement, the first ones of --calib. They are run 512 at a time
    /// (or one --calib-ctx sequence, if longer), so time grows with N and
    /// memory does not. Ignored with `proxy`.
    #[arg(long, default_value = "512", value_name = "N", requires = "budget_bpw")]
    pub budget_kld_tokens: usize,
    /// Calibration text file (for imatrix, gptq, awq, awq-gptq and smoothquant).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration tokens in all.
    #[arg(long, default_value = "65536")]
    pub calib_tokens: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value = "512")]
    pub calib_ctx: usize,
    /// GPTQ: visit columns by decreasing activation energy (static groups).
    #[arg(long)]
    pub act_order: bool,
    /// GPTQ: choose each block's scales by the importance-weighted search of
    /// --method imatrix (weights: the input channels' energies) instead of
    /// the format's plain round-to-nearest fit.
    #[arg(long)]
    pub weighted_scales: bool,
    /// SmoothQuant's migration strength α in [0, 1] (default 0.5); for awq and
    /// awq-gptq, a fixed α in [0, 1) instead of the grid search.
    #[arg(long)]
    pub alpha: Option<f32>,
    /// GPTQ: damping, as a fraction of the Hessian's mean diagonal.
    #[arg(long, default_value = "0.01")]
    pub damp: f32,
    /// Threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// A type name (ggml's or frugal's), as a quantized weight type.
pub(crate) fn parse_type(s: &str) -> Result<GgmlType> {
    let t = GgmlType::from_name(s).ok_or_else(|| {
        anyhow!("unknown type `{s}` (try Q4_0, Q4_K, Q8_0, FQ3a_g128, FQ4s_row, ...)")
    })?;
    if matches!(
        t,
        GgmlType::Q8_1 | GgmlType::Q8K | GgmlType::Frugal(FrugalType::I8Tok)
    ) {
        bail!("{t} is an activation type, not a weight type");
    }
    Ok(t)
}

/// The type for `--bits/--group/--sym`: a ggml type where one is exactly
/// this scheme, else frugal's own.
fn type_for_bits(bits: u8, group: u16, sym: bool) -> Result<GgmlType> {
    if !(2..=8).contains(&bits) {
        bail!("--bits {bits}: frugal quantizes to 2 to 8 bits");
    }
    if !matches!(group, 0 | 32 | 64 | 128 | 256) {
        bail!("--group {group}: use 32, 64, 128, 256, or 0 for one scale per row");
    }
    Ok(match (bits, group, sym) {
        (8, 32, true) => GgmlType::Q8_0,
        (4, 32, true) => GgmlType::Q4_0,
        (4, 32, false) => GgmlType::Q4_1,
        (5, 32, true) => GgmlType::Q5_0,
        (5, 32, false) => GgmlType::Q5_1,
        _ => GgmlType::Frugal(FrugalType::Affine { bits, group, sym }),
    })
}

/// llama.cpp's `general.file_type` for a pure model of `ty`, if it has one.
pub(crate) fn file_type(ty: GgmlType) -> Option<u32> {
    use GgmlType::*;
    Some(match ty {
        F32 => 0,
        F16 => 1,
        Q4_0 => 2,
        Q4_1 => 3,
        Q8_0 => 7,
        Q5_0 => 8,
        Q5_1 => 9,
        Q2K => 10,
        Q3K => 11,
        Q4K => 14,
        Q5K => 16,
        Q6K => 18,
        BF16 => 32,
        _ => return None,
    })
}

/// Fails early (before minutes of work) if `out` cannot be written.
/// The output matrix's type when the user names none, for block matrices
/// rounded into the quantized type `ty`: Q8_0 beside 8-bit types, else Q6_K
/// (llama.cpp's choice for its k-quant mixes).
pub(crate) fn default_output_type(ty: GgmlType) -> GgmlType {
    let eight_bit = ty == GgmlType::Q8_0
        || matches!(
            ty,
            GgmlType::Frugal(
                FrugalType::Affine { bits: 8, .. }
                    | FrugalType::W8Row
                    | FrugalType::SparseQ8 { .. }
                    | FrugalType::Sparse24Q8
            )
        );
    if eight_bit {
        GgmlType::Q8_0
    } else {
        GgmlType::Q6K
    }
}

pub(crate) fn check_writable(out: &std::path::Path) -> Result<()> {
    if out.is_dir() {
        bail!("--out {} is a directory", out.display());
    }
    let mut probe = out.as_os_str().to_owned();
    probe.push(format!(".probe{}", std::process::id()));
    let probe = PathBuf::from(probe);
    std::fs::File::create(&probe)
        .with_context(|| format!("cannot write next to {}", out.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let ty = match (&a.ty, a.bits) {
        (Some(t), _) => parse_type(t)?,
        (None, Some(b)) => type_for_bits(b, a.group, a.sym)?,
        (None, None) if a.method == MethodArg::Smoothquant => GgmlType::Frugal(FrugalType::W8Row),
        (None, None) if a.budget_bpw.is_some() => GgmlType::Q4K,
        (None, None) => bail!("give a storage type: --type Q4_K, or --bits N [--group G] [--sym]"),
    };
    if ty.is_float() {
        bail!("{ty} is not a quantized type; use `frugal convert --type` for float conversions");
    }
    let method: Box<dyn Method> = match a.method {
        MethodArg::Rtn | MethodArg::Awq | MethodArg::Smoothquant => Box::new(Rtn),
        MethodArg::Imatrix => Box::new(Imatrix),
        MethodArg::Gptq | MethodArg::AwqGptq => {
            if !(0.0..1.0).contains(&a.damp) {
                bail!("--damp {}: use a fraction in [0, 1)", a.damp);
            }
            Box::new(Gptq {
                damp: a.damp,
                act_order: a.act_order,
                weighted_scales: a.weighted_scales,
                ..Gptq::default()
            })
        }
    };
    let scaling = match a.method {
        MethodArg::Awq | MethodArg::AwqGptq => match a.alpha {
            Some(x) if !(0.0..1.0).contains(&x) => {
                bail!("--alpha {x}: AWQ's exponent is in [0, 1)")
            }
            alpha => Scaling::Awq { alpha, grid: 20 },
        },
        MethodArg::Smoothquant => {
            if ty != GgmlType::Frugal(FrugalType::W8Row) {
                bail!(
                    "--method smoothquant makes int8 weights for int8 per-token activations: \
                     use --type W8_row (not {ty})"
                );
            }
            let alpha = a.alpha.unwrap_or(0.5);
            if !(0.0..=1.0).contains(&alpha) {
                bail!("--alpha {alpha}: SmoothQuant's migration strength is in [0, 1]");
            }
            Scaling::SmoothQuant { alpha }
        }
        _ => {
            if a.alpha.is_some() {
                bail!("--alpha is for --method awq, awq-gptq and smoothquant");
            }
            Scaling::None
        }
    };
    let method_name = match scaling.name() {
        Some(sc) => format!("{sc}+{}", method.name()),
        None => method.name(),
    };
    let output_ty = match &a.output_type {
        Some(t) => parse_type(t)?,
        None => default_output_type(ty),
    };
    let embd_ty = match &a.embd_type {
        Some(t) => parse_type(t)?,
        None => ty,
    };
    let candidates = match a.budget_types.as_slice() {
        [] => budget::GGML_LADDER.to_vec(),
        names => {
            let mut v = Vec::with_capacity(names.len());
            for n in names {
                let t = parse_type(n.trim()).with_context(|| format!("--budget-types: `{n}`"))?;
                if t.is_float() {
                    bail!("--budget-types: {t} is not a quantized type");
                }
                if !v.contains(&t) {
                    v.push(t);
                }
            }
            v
        }
    };
    if a.budget_kld_tokens == 0 {
        bail!("--budget-kld-tokens 0: the KLD measurement needs at least one token");
    }
    if let Some(b) = a.budget_bpw {
        if !(b.is_finite() && b > 0.0) {
            bail!("--budget-bpw {b}: give a positive number of bits per weight, e.g. 4.5");
        }
        if a.calib.is_none() {
            bail!(
                "--budget-bpw measures each matrix's sensitivity on calibration text: --calib FILE"
            );
        }
    }
    let calibrate = method.needs_calibration() || !scaling.is_none();
    if calibrate && a.calib.is_none() {
        let arg = a.method.to_possible_value().expect("no skipped values");
        bail!(
            "--method {} needs calibration text: --calib FILE",
            arg.get_name()
        );
    }
    check_writable(&a.out)?;

    let path = resolve_model(&a.model, a.quiet)?;
    let (src, _) = load_source(&path).with_context(|| format!("reading {}", path.display()))?;
    let model = Model::from_source(&src)?;
    let calib = match &a.calib {
        Some(p) if calibrate || a.budget_bpw.is_some() => Some(calibration(
            &src,
            &model,
            p,
            a.calib_tokens,
            a.calib_ctx,
            a.quiet,
        )?),
        _ => None,
    };

    let t0 = Instant::now();
    let mut tensor_types = std::collections::HashMap::new();
    if let (Some(bpw), Some(c)) = (a.budget_bpw, calib.as_ref()) {
        let pb = progress_bar(
            model.config.n_layer as u64,
            a.quiet,
            "measuring sensitivity",
        );
        let mut sens = budget::measure(&src, &model, c, &candidates, &mut |done, _, _| {
            pb.set_position(done as u64)
        })
        .map_err(|e| anyhow!(e))?;
        pb.finish_and_clear();
        // A budget below the cheapest types fails here, before the KLD pass.
        budget::allocate(&sens, bpw).map_err(|e| anyhow!(e))?;
        if a.budget_sensitivity == BudgetSensitivity::Kld {
            let short = c.prefix(a.budget_kld_tokens);
            let need = budget::kld_memory_bytes(&model, &short, sens.len());
            if let Some(have) = available_memory().filter(|&have| need > have) {
                bail!(
                    "--calib-ctx {}: the KLD measurement would hold about {:.1} GB at once \
                     (a residual stream per matrix and the next-token probabilities for one \
                     sequence), more than the {:.1} GB available; give shorter sequences",
                    a.calib_ctx,
                    need as f64 / 1e9,
                    have as f64 / 1e9
                );
            }
            let pb = progress_bar(1, a.quiet, "measuring KLD per matrix");
            budget::weigh_by_kld(&src, &model, &short, &mut sens, &mut |done, total, _| {
                pb.set_length(total as u64);
                pb.set_position(done as u64)
            })
            .map_err(|e| anyhow!(e))?;
            pb.finish_and_clear();
        }
        tensor_types = budget::allocate(&sens, bpw).map_err(|e| anyhow!(e))?;
        if !a.quiet {
            let mut count: Vec<(GgmlType, usize)> = Vec::new();
            for t in tensor_types.values() {
                match count.iter_mut().find(|c| c.0 == *t) {
                    Some(c) => c.1 += 1,
                    None => count.push((*t, 1)),
                }
            }
            count.sort_by_key(|c| std::cmp::Reverse(c.1));
            let list: Vec<String> = count.iter().map(|(t, n)| format!("{n} {t}")).collect();
            eprintln!(
                "budget {bpw} bpw: {:.3} bpw over the block matrices ({})",
                budget::allocated_bpw(&sens, &tensor_types),
                list.join(", ")
            );
        }
    }
    let pb = progress_bar(model.config.n_layer as u64, a.quiet, "quantizing layers");
    let opts = QuantizeOptions {
        method: method.as_ref(),
        ty,
        embd_ty,
        output_ty,
        calib: calib.as_ref(),
        tensor_types,
        scaling,
        prune: None,
    };
    let q = quantize_model(&src, &model, &opts, &mut |done, _, _| {
        pb.set_position(done as u64)
    })
    .map_err(|e| anyhow!(e))?;
    pb.finish_and_clear();

    let mut meta = vec![(
        "frugal.quantize.method",
        MetaValue::String(method_name.clone()),
    )];
    if let Some(b) = a.budget_bpw {
        meta.push(("frugal.quantize.budget_bpw", MetaValue::F32(b as f32)));
    }
    let bytes = write_result(&src, &q, ty, meta, &a.out, a.quiet)?;
    eprintln!(
        "wrote {} ({:.1} MB) with {} into {} in {:.1} s",
        a.out.display(),
        bytes as f64 / 1e6,
        method_name,
        ty,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `n_tokens` calibration tokens from the text file `p`, in sequences of `ctx`.
pub(crate) fn calibration(
    src: &frugal_formats::ModelSource,
    model: &Model,
    p: &std::path::Path,
    n_tokens: usize,
    ctx: usize,
    quiet: bool,
) -> Result<Calibration> {
    let tok = load_tokenizer(src, model.config.n_vocab, None)?;
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("reading calibration text {}", p.display()))?;
    let c = Calibration::from_text(&tok, &text, n_tokens, ctx)
        .map_err(|e| anyhow!("{}: {e}", p.display()))?;
    if !quiet {
        eprintln!(
            "calibration: {} tokens in {} sequences from {}",
            c.n_tokens(),
            c.seqs.len(),
            p.display()
        );
    }
    Ok(c)
}

/// Writes the source's tensors, with those of `q` in place of their
/// originals, to `out` (under a temporary name, then renamed); `ty` is the
/// block matrices' type, `meta` extra metadata. Prints `q`'s notes unless
/// `quiet`; returns the file's size.
pub(crate) fn write_result(
    src: &frugal_formats::ModelSource,
    q: &Quantized,
    ty: GgmlType,
    meta: Vec<(&str, MetaValue)>,
    out: &std::path::Path,
    quiet: bool,
) -> Result<u64> {
    let mut w = GgufWriter::new();
    w.set_metadata(src.metadata.clone());
    w.set_meta(
        "general.file_type",
        MetaValue::U32(file_type(ty).unwrap_or(0)),
    );
    w.set_meta("general.quantization_version", MetaValue::U32(2));
    w.set_meta("frugal.quantize.type", MetaValue::String(ty.name().into()));
    for (k, v) in meta {
        w.set_meta(k, v);
    }
    let frugal_types: Vec<MetaValue> = {
        let mut v: Vec<&str> = q
            .tensors
            .iter()
            .filter(|t| !t.ty.is_ggml())
            .map(|t| t.ty.name())
            .collect();
        v.sort();
        v.dedup();
        v.into_iter().map(|s| MetaValue::String(s.into())).collect()
    };
    if !frugal_types.is_empty() {
        w.set_meta(
            "frugal.quantize.frugal_types",
            MetaValue::Array(frugal_formats::MetaType::String, frugal_types),
        );
    }
    for t in &src.tensors {
        match q.tensors.iter().find(|n| n.name == t.name) {
            Some(n) => {
                let dims = n.dims.iter().map(|&d| d as u64).collect();
                w.add_tensor(n.name.clone(), n.ty, dims, n.bytes.as_slice())?;
            }
            None => w.add(t)?,
        }
    }
    // A pruned output matrix split from a tied embedding is the one tensor
    // the source lacks; it goes last.
    for n in &q.tensors {
        if !src.tensors.iter().any(|t| t.name == n.name) {
            if n.name != "output.weight" {
                bail!("{}: not a tensor of the source model", n.name);
            }
            let dims = n.dims.iter().map(|&d| d as u64).collect();
            w.add_tensor(n.name.clone(), n.ty, dims, n.bytes.as_slice())?;
        }
    }
    w.write(out)
        .with_context(|| format!("writing {}", out.display()))?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    if !quiet {
        let mut notes = q.notes.clone();
        notes.dedup_by(|x, y| x.split(':').nth(1) == y.split(':').nth(1));
        for n in notes.iter().take(8) {
            eprintln!("note: {n}");
        }
        if notes.len() > 8 {
            eprintln!("note: ... and {} more fallbacks", notes.len() - 8);
        }
        if !frugal_types_used(q) {
            eprintln!("llama.cpp can read this file");
        } else {
            eprintln!("this file uses frugal's own types: only frugal reads it");
        }
    }
    Ok(bytes)
}

fn frugal_types_used(q: &Quantized) -> bool {
    q.tensors.iter().any(|t| !t.ty.is_ggml())
}
