//! `frugal lowrank`: replace block matrices by two low-rank factors, by
//! truncated SVD or by SVD whitened with the calibration activations.

use super::quantize::{calibration, check_writable, default_output_type, file_type, parse_type};
use crate::common::{progress_bar, resolve_model};
use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use frugal_compress::lowrank::pipeline::{lowrank_model, LowRankOptions, LowRanked, KINDS};
use frugal_compress::lowrank::{Decomposition, Target};
use frugal_formats::gguf::GgufWriter;
use frugal_formats::{GgmlType, MetaValue, ModelSource};
use frugal_model::load::load_source;
use frugal_model::Model;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// Truncated SVD of each matrix: the closest rank-r weights, blind to the inputs.
    Svd,
    /// SVD of W·S, S the Cholesky factor of the calibration inputs' XᵀX (SVD-LLM): the rank-r
    /// matrix of least output error on the calibration text. Needs --calib.
    #[value(alias = "asvd", alias = "svd-llm")]
    Whitened,
}

#[derive(clap::Args)]
#[command(after_help = "\
Each factored matrix W (out × in) becomes blk.N.X_a.weight (r × in, applied first) and \
blk.N.X_b.weight (out × r), W ≈ X_b·X_a: r·(in + out) weights instead of in·out. frugal runs \
such files (decoding reads fewer bytes and does fewer FLOPs); llama.cpp does not load them.

--ratio R gives every matrix the rank that removes R of its weights (a multiple of 32, so the \
share removed over the model is near R, not exactly R); --energy E the smallest rank (rounded \
up to a multiple of 32) whose singular values keep E of Σσ², in the whitened space for \
--method whitened. A matrix whose factors would not be smaller stays dense. The token embedding \
and the output matrix are not factored.

The whitened SVD runs layer by layer, so each layer is calibrated on the outputs of the layers \
already factored. Calibrate on text that is not your evaluation text, e.g. wikitext-2 valid.txt \
when you evaluate on wiki.test.raw.

Examples:
  frugal lowrank -m model-f32.gguf -o lr20.gguf --ratio 0.2 --calib valid.txt
  frugal lowrank -m model-f32.gguf -o svd40.gguf --method svd --ratio 0.4
  frugal lowrank -m model-f32.gguf -o lr-q8.gguf --energy 0.9 --type Q8_0 --calib valid.txt")]
pub struct Args {
    /// Model to factor (path or known name), with dense block matrices; a float model gives the
    /// best results.
    #[arg(short, long)]
    pub model: String,
    /// Output GGUF file (written under a temporary name, then renamed).
    #[arg(short, long)]
    pub out: PathBuf,
    /// How each matrix is decomposed.
    #[arg(long, value_enum, default_value = "whitened")]
    pub method: MethodArg,
    /// Fraction of every block matrix's weights to remove, in (0, 1).
    #[arg(long, conflicts_with = "energy", required_unless_present = "energy")]
    pub ratio: Option<f32>,
    /// Fraction of each matrix's singular-value energy Σσ² to keep, in (0, 1).
    #[arg(long)]
    pub energy: Option<f32>,
    /// Storage type of the factors (and of the block matrices left dense): F32, F16, BF16, or a
    /// quantized type (Q8_0, Q4_0, ...; rounded to nearest), which an untied token embedding
    /// then takes too.
    #[arg(long = "type", default_value = "F32")]
    pub ty: String,
    /// Type of the output matrix (and of the embedding when tied). Default: unchanged for a
    /// float --type, else Q6_K (Q8_0 for 8-bit types), as frugal quantize and prune do.
    #[arg(long)]
    pub output_type: Option<String>,
    /// Only these kinds of block matrix are factored (comma-separated: q, k, v, o, gate, up,
    /// down). Default: all seven.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Calibration text file (for --method whitened).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration tokens in all.
    #[arg(long, default_value = "65536")]
    pub calib_tokens: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value = "512")]
    pub calib_ctx: usize,
    /// Damping added to XᵀX, as a fraction of its mean diagonal (raised, with a note, where XᵀX
    /// is not positive definite).
    #[arg(long, default_value = "0.01")]
    pub damp: f32,
    /// Threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The kinds of matrix `--only` names (short or GGUF names).
fn parse_kinds(only: &[String]) -> Result<[bool; 7]> {
    if only.is_empty() {
        return Ok([true; 7]);
    }
    let short = ["q", "k", "v", "o", "gate", "up", "down"];
    let mut kinds = [false; 7];
    for s in only {
        let s = s.trim();
        let k = (0..7)
            .find(|&k| s == short[k] || s == KINDS[k])
            .ok_or_else(|| anyhow!("--only {s}: use q, k, v, o, gate, up or down"))?;
        kinds[k] = true;
    }
    Ok(kinds)
}

pub fn run(a: Args) -> Result<()> {
    let target = match (a.ratio, a.energy) {
        (Some(r), None) => Target::Ratio(r),
        (None, Some(e)) => Target::Energy(e),
        _ => bail!("give one of --ratio R or --energy E"),
    };
    target.validate().map_err(|e| anyhow!("{e}"))?;
    let method = match a.method {
        MethodArg::Svd => Decomposition::Svd,
        MethodArg::Whitened => Decomposition::Whitened,
    };
    if !(0.0..1.0).contains(&a.damp) {
        bail!("--damp {}: use a fraction in [0, 1)", a.damp);
    }
    let ty: GgmlType = parse_type(&a.ty)?;
    let kinds = parse_kinds(&a.only)?;
    let output_ty = match &a.output_type {
        Some(t) => Some(parse_type(t)?),
        None if ty.is_float() => None,
        None => Some(default_output_type(ty)),
    };
    // An untied embedding follows a quantized --type, as in frugal quantize.
    let embd_ty = (!ty.is_float()).then_some(ty);
    if method.needs_calibration() && a.calib.is_none() {
        bail!(
            "--method {} needs calibration text: --calib FILE (or --method svd)",
            method.name()
        );
    }
    if !method.needs_calibration() && a.calib.is_some() && !a.quiet {
        eprintln!("note: --method svd does not use calibration; --calib is ignored");
    }
    check_writable(&a.out)?;

    let path = resolve_model(&a.model, a.quiet)?;
    let (src, _) = load_source(&path).with_context(|| format!("reading {}", path.display()))?;
    let model = Model::from_source(&src)?;
    let calib = match &a.calib {
        Some(p) if method.needs_calibration() => Some(calibration(
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
    let pb = progress_bar(model.config.n_layer as u64, a.quiet, "factoring layers");
    let opts = LowRankOptions {
        method,
        target,
        ty,
        calib: calib.as_ref(),
        damp: a.damp,
        kinds,
        output_ty,
        embd_ty,
    };
    let lr = lowrank_model(&src, &model, &opts, &mut |done, _, _| {
        pb.set_position(done as u64)
    })
    .map_err(|e| anyhow!(e))?;
    pb.finish_and_clear();
    if !a.quiet {
        for n in lr.notes.iter().take(8) {
            eprintln!("note: {n}");
        }
        if lr.notes.len() > 8 {
            eprintln!("note: ... and {} more", lr.notes.len() - 8);
        }
        eprintln!("ranks: {}", lr.rank_summary());
    }
    let meta = vec![
        (
            "frugal.lowrank.method",
            MetaValue::String(method.name().into()),
        ),
        (
            "frugal.lowrank.target",
            MetaValue::String(target.to_string()),
        ),
        (
            "frugal.lowrank.reduction",
            MetaValue::F32(lr.reduction() as f32),
        ),
        ("frugal.lowrank.type", MetaValue::String(ty.name().into())),
    ];
    let bytes = write_lowrank(&src, &lr, ty, meta, &a.out)?;
    eprintln!(
        "wrote {} ({:.1} MB) with {} ({target}) in {:.1} s: {} of {} block matrices factored, \
         {:.1}% of their weights removed",
        a.out.display(),
        bytes as f64 / 1e6,
        method.name(),
        t0.elapsed().as_secs_f64(),
        lr.factored.0,
        lr.factored.1,
        100.0 * lr.reduction()
    );
    Ok(())
}

/// Writes the source's tensors, each block matrix replaced by what `lr`
/// puts in its place, to `out` (under a temporary name, then renamed);
/// returns the file's size.
fn write_lowrank(
    src: &ModelSource,
    lr: &LowRanked,
    ty: GgmlType,
    meta: Vec<(&str, MetaValue)>,
    out: &Path,
) -> Result<u64> {
    let mut w = GgufWriter::new();
    w.set_metadata(src.metadata.clone());
    w.set_meta(
        "general.file_type",
        MetaValue::U32(file_type(ty).unwrap_or(0)),
    );
    for (k, v) in meta {
        w.set_meta(k, v);
    }
    let replaced: std::collections::HashMap<&str, &[_]> = lr
        .replaced
        .iter()
        .map(|(name, ts)| (name.as_str(), ts.as_slice()))
        .collect();
    for t in &src.tensors {
        match replaced.get(t.name.as_str()) {
            Some(ts) => {
                for n in ts.iter() {
                    let dims = n.dims.iter().map(|&d| d as u64).collect();
                    w.add_tensor(n.name.clone(), n.ty, dims, n.bytes.as_slice())?;
                }
            }
            None => w.add(t)?,
        }
    }
    w.write(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(std::fs::metadata(out).map(|m| m.len()).unwrap_or(0))
}
