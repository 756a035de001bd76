//! `frugal prune`: zero a fraction of every block matrix's weights, by
//! magnitude, Wanda or SparseGPT, unstructured or N:M; optionally round the
//! rest into a quantized type in the same pass. Or, structured: remove
//! whole heads, FFN channels and blocks, for a smaller dense model.

use super::quantize::{
    calibration, check_writable, default_output_type, file_type, parse_type, write_result,
};
use crate::common::{progress_bar, resolve_model};
use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use frugal_compress::prune::owl::{block_outliers, Owl};
use frugal_compress::prune::structured::{prune_structured, Scoring, Spec};
use frugal_compress::prune::{Criterion, Pattern, Sparsity};
use frugal_compress::quant::gptq::ObsMask;
use frugal_compress::quant::pipeline::{quantize_model, Prune, QuantizeOptions};
use frugal_compress::quant::scales::Scaling;
use frugal_compress::quant::{Gptq, Method, Rtn};
use frugal_formats::gguf::GgufWriter;
use frugal_formats::{FrugalType, GgmlType, MetaValue};
use frugal_model::load::load_source;
use frugal_model::{Arch, Model};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CriterionArg {
    /// |W|: no calibration, and the worst of the three.
    Magnitude,
    /// Wanda: |W| times the norm of the weight's input channel on calibration text. Needs --calib.
    Wanda,
    /// SparseGPT: prunes the weights whose loss costs least under the calibration Hessian and
    /// updates the rest to make up for them (a GPTQ-style sweep). Needs --calib.
    Sparsegpt,
}

#[derive(clap::Args)]
#[command(after_help = "\
Each output row keeps the same number of weights (the lowest-scoring ones of the row are pruned), \
the token embedding and the output matrix are not pruned (as in the Wanda and SparseGPT papers); \
--prune-output prunes the output matrix too.

With a quantized --type the kept weights are rounded after pruning (round to nearest, or --gptq: \
GPTQ holding the zeros; with --method sparsegpt, pruning and GPTQ share one sweep).

Structured pruning (--shrink, --heads, --ffn, --layers) removes whole query heads (the same number \
from each GQA group), FFN channels and blocks: every block keeps the same number of heads and \
channels, chosen by --method: magnitude (weight norms), wanda (their output's energy on calibration \
text) or sparsegpt (the same, then the kept weights of O and down are refitted by least squares to \
make up for the removed ones). Blocks go by their influence on calibration text. The result is a \
smaller dense GGUF that llama.cpp loads; quantize it afterwards.

Calibrate on text that is not your evaluation text, e.g. wikitext-2 valid.txt when you evaluate on \
wiki.test.raw.

Examples:
  frugal prune -m model-f32.gguf -o mag50.gguf --method magnitude --sparsity 0.5
  frugal prune -m model-f32.gguf -o wanda24.gguf --method wanda --pattern 2:4 --calib valid.txt
  frugal prune -m model-f32.gguf -o sgpt50-q8.gguf --method sparsegpt --type Q8_0 --gptq --calib valid.txt
  frugal prune -m model-f32.gguf -o small.gguf --method sparsegpt --shrink 0.2 --calib valid.txt")]
pub struct Args {
    /// Model to prune (path or known name). A float model gives the best results.
    #[arg(short, long)]
    pub model: String,
    /// Output GGUF file (written under a temporary name, then renamed).
    #[arg(short, long)]
    pub out: PathBuf,
    /// How weights are scored.
    #[arg(long, value_enum, default_value = "wanda")]
    pub method: CriterionArg,
    /// Fraction of each row's weights to prune, in (0, 1).
    #[arg(long, default_value = "0.5", conflicts_with = "pattern")]
    pub sparsity: f32,
    /// Semi-structured N:M instead: keep N of every M consecutive weights (2:4, 4:8).
    #[arg(long, value_name = "N:M")]
    pub pattern: Option<String>,
    /// Storage type of the block matrices: F32, F16, BF16 (pruning only); `sparse` for frugal's
    /// sparse int8 types, which store only the kept weights (SQ8_2of4 for 2:4, else
    /// SQ8_{K}of64 with room for the pattern's K of every 64: 5.5 bits per weight at 50%, and
    /// faster to decode); or a dense quantized type (Q8_0, Q4_K, FQ4a_g64, ...).
    #[arg(long = "type", default_value = "F32")]
    pub ty: String,
    /// Round with GPTQ instead of round to nearest (a quantized --type; needs --calib).
    #[arg(long)]
    pub gptq: bool,
    /// Prune the output matrix too, to the same --sparsity or --pattern, scored (wanda,
    /// sparsegpt) on the final norm's output after the pruned blocks; with --type sparse it is
    /// stored sparse as well. It is a large share of the bytes a small model with a large
    /// vocabulary reads per token (28 % of Qwen2.5-0.5B at Q8_0), so this decodes faster, at a
    /// cost in quality. A model that ties it to the token embedding gets a separate output
    /// matrix: the embedding's lookups keep every weight.
    #[arg(long, conflicts_with_all = ["shrink", "heads", "ffn", "layers", "layer_sparsity"])]
    pub prune_output: bool,
    /// Type of the output matrix (and of the embedding when tied, unless --prune-output unties
    /// them). Default: unchanged for a float --type, else Q6_K (Q8_0 for 8-bit types); with
    /// --prune-output --type sparse, the blocks' sparse type.
    #[arg(long)]
    pub output_type: Option<String>,
    /// Calibration text file (for wanda, sparsegpt and --gptq).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration tokens in all.
    #[arg(long, default_value = "65536")]
    pub calib_tokens: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value = "512")]
    pub calib_ctx: usize,
    /// OWL: give each block its own unstructured sparsity, lower where the block has more outlier
    /// weights (Wanda scores above --owl-m times the mean), with the same mean as --sparsity.
    /// Needs --calib.
    #[arg(long, conflicts_with_all = ["pattern", "layer_sparsity"])]
    pub owl: bool,
    /// OWL: block sparsities span --sparsity ± this.
    #[arg(long, default_value = "0.08", requires = "owl")]
    pub owl_lambda: f32,
    /// OWL: a weight is an outlier when its score is above this many times its matrix's mean.
    #[arg(long, default_value = "5", requires = "owl")]
    pub owl_m: f32,
    /// Unstructured sparsity of each block, set by hand: one fraction per block, comma-separated.
    #[arg(long, value_name = "LIST", conflicts_with_all = ["pattern", "sparsity"])]
    pub layer_sparsity: Option<String>,
    /// Structured: remove this fraction of the model's parameters (all of them, as LLM-Pruner
    /// counts; the embedding and output stay, so the blocks lose more): after any --layers, whole
    /// query heads (the blocks' share of each GQA group, rounded down; none on Qwen2, whose
    /// llama.cpp loader needs them all; or --heads), then FFN channels for the rest.
    #[arg(long, value_name = "R", conflicts_with_all = ["pattern", "sparsity", "ffn"])]
    pub shrink: Option<f64>,
    /// Structured: query heads to remove from every block, a multiple of the K/V heads (each GQA
    /// group loses the same number).
    #[arg(long, value_name = "N", conflicts_with_all = ["pattern", "sparsity"])]
    pub heads: Option<usize>,
    /// Structured: fraction of the FFN channels to remove from every block, in (0, 1) (the kept
    /// width is rounded to a multiple of 32).
    #[arg(long, value_name = "F", conflicts_with_all = ["pattern", "sparsity"])]
    pub ffn: Option<f64>,
    /// Structured: whole blocks to remove, the least influential on the calibration text (needs
    /// --calib).
    #[arg(long, value_name = "N", conflicts_with_all = ["pattern", "sparsity"])]
    pub layers: Option<usize>,
    /// SparseGPT and GPTQ: damping, as a fraction of the Hessian's mean diagonal.
    #[arg(long, default_value = "0.01")]
    pub damp: f32,
    /// Threads (default: all cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(a: Args) -> Result<()> {
    if a.shrink.is_some() || a.heads.is_some() || a.ffn.is_some() || a.layers.is_some() {
        return run_structured(a);
    }
    let pattern = match &a.pattern {
        Some(p) => {
            if !p.contains(':') {
                bail!("--pattern {p}: give N:M, e.g. 2:4 (for a fraction use --sparsity)");
            }
            Pattern::parse(p).map_err(|e| anyhow!("--pattern: {e}"))?
        }
        None => {
            let p = Pattern::Unstructured(a.sparsity);
            p.validate().map_err(|e| anyhow!("--sparsity: {e}"))?;
            p
        }
    };
    let criterion = match a.method {
        CriterionArg::Magnitude => Criterion::Magnitude,
        CriterionArg::Wanda => Criterion::Wanda,
        CriterionArg::Sparsegpt => Criterion::SparseGpt,
    };
    if !(0.0..1.0).contains(&a.damp) {
        bail!("--damp {}: use a fraction in [0, 1)", a.damp);
    }
    let ty = if a.ty.eq_ignore_ascii_case("sparse") {
        match pattern {
            Pattern::NM { n: 2, m: 4 } => GgmlType::Frugal(FrugalType::Sparse24Q8),
            p => GgmlType::Frugal(FrugalType::SparseQ8 {
                keep: sparse_keep(p.ratio()),
            }),
        }
    } else {
        parse_type(&a.ty)?
    };
    if a.gptq && ty.is_float() {
        bail!("--gptq rounds into a quantized --type (Q8_0, Q4_K, ...), not {ty}");
    }
    let sparsity = Sparsity {
        damp: a.damp,
        ..Sparsity::new(criterion, pattern)
    };
    let joint = a.gptq && criterion == Criterion::SparseGpt;
    let method: Box<dyn Method> = if a.gptq {
        Box::new(Gptq {
            damp: a.damp,
            mask: if joint {
                ObsMask::Select(pattern)
            } else {
                ObsMask::KeepZeros
            },
            ..Gptq::default()
        })
    } else {
        Box::new(Rtn)
    };
    let per_block = a.owl || a.layer_sparsity.is_some();
    if per_block && joint {
        bail!(
            "per-block sparsity (--owl, --layer-sparsity) with --method sparsegpt --gptq: \
             prune into a float type first, then quantize"
        );
    }
    if a.owl && a.calib.is_none() {
        bail!("--owl needs calibration text: --calib FILE");
    }
    if (criterion.needs_calibration() || a.gptq) && a.calib.is_none() {
        let what = if a.gptq && !criterion.needs_calibration() {
            "--gptq".to_string()
        } else {
            format!("--method {}", criterion.name())
        };
        bail!("{what} needs calibration text: --calib FILE");
    }
    check_writable(&a.out)?;

    let path = resolve_model(&a.model, a.quiet)?;
    let (src, _) = load_source(&path).with_context(|| format!("reading {}", path.display()))?;
    let model = Model::from_source(&src)?;
    let c = &model.config;
    for cols in [c.n_embd, c.n_head * c.head_dim, c.n_ff] {
        pattern
            .check_cols(cols)
            .map_err(|e| anyhow!("--pattern: {e}"))?;
    }
    let sparse = matches!(
        ty,
        GgmlType::Frugal(FrugalType::SparseQ8 { .. } | FrugalType::Sparse24Q8)
    );
    let source_ty = |name: &str| src.tensor(name).map(|t| t.ty);
    // The type a whole output matrix gets by default (and a tied
    // embedding, which --prune-output leaves whole).
    let whole_output_ty = if ty.is_float() {
        source_ty("output.weight")
            .or(source_ty("token_embd.weight"))
            .unwrap_or(GgmlType::F32)
    } else {
        default_output_type(ty)
    };
    let output_ty = match &a.output_type {
        Some(t) => parse_type(t)?,
        // A pruned output matrix is stored as sparse as the blocks (OWL
        // sets the blocks' ratios around the pattern's, which it keeps).
        None if a.prune_output && sparse => ty,
        None => whole_output_ty,
    };
    let embd_ty = if model.weights.tied_output && a.prune_output {
        whole_output_ty
    } else if ty.is_float() {
        source_ty("token_embd.weight").unwrap_or(GgmlType::F32)
    } else if sparse {
        GgmlType::Q8_0
    } else {
        ty
    };
    let calib = match &a.calib {
        Some(p) if criterion.needs_calibration() || a.gptq || a.owl => Some(calibration(
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
    let block_ratios = if a.owl {
        let owl = Owl {
            m: a.owl_m,
            lambda: a.owl_lambda,
        };
        let fractions = block_outliers(&model, calib.as_ref().expect("checked above"), owl.m)
            .map_err(|e| anyhow!(e))?;
        Some(
            owl.block_ratios(&fractions, pattern.ratio())
                .map_err(|e| anyhow!(e))?,
        )
    } else if let Some(list) = &a.layer_sparsity {
        Some(parse_block_ratios(list, model.config.n_layer)?)
    } else {
        None
    };
    // Sparse storage sized for each block's own ratio.
    let mut tensor_types = std::collections::HashMap::new();
    if let (Some(r), GgmlType::Frugal(FrugalType::SparseQ8 { .. })) = (&block_ratios, ty) {
        for (li, &ratio) in r.iter().enumerate() {
            let keep = sparse_keep(ratio);
            for s in frugal_model::BLOCK_MATRIX_NAMES {
                tensor_types.insert(
                    format!("blk.{li}.{s}.weight"),
                    GgmlType::Frugal(FrugalType::SparseQ8 { keep }),
                );
            }
        }
    }
    if let (Some(r), false) = (&block_ratios, a.quiet) {
        let (lo, hi) = r
            .iter()
            .fold((1.0f32, 0.0f32), |(a, b), &x| (a.min(x), b.max(x)));
        eprintln!("block sparsities from {lo:.3} to {hi:.3}");
    }
    let pb = progress_bar(model.config.n_layer as u64, a.quiet, "pruning layers");
    let opts = QuantizeOptions {
        method: method.as_ref(),
        ty,
        embd_ty,
        output_ty,
        calib: calib.as_ref(),
        tensor_types,
        scaling: Scaling::None,
        prune: Some(Prune {
            sparsity,
            by_method: joint,
            block_ratios: block_ratios.clone(),
            output: a.prune_output,
        }),
    };
    let q = quantize_model(&src, &model, &opts, &mut |done, _, _| {
        pb.set_position(done as u64)
    })
    .map_err(|e| anyhow!(e))?;
    pb.finish_and_clear();
    let shape = if a.owl {
        format!("OWL, mean {pattern}")
    } else if a.layer_sparsity.is_some() {
        "per-block unstructured".to_string()
    } else {
        pattern.to_string()
    };
    let what = format!("{}({shape})+{}", criterion.name(), method.name());
    let meta = vec![
        (
            "frugal.prune.method",
            MetaValue::String(criterion.name().into()),
        ),
        ("frugal.prune.pattern", MetaValue::String(shape.clone())),
        ("frugal.quantize.method", MetaValue::String(what.clone())),
    ];
    let mut meta = meta;
    if a.prune_output {
        meta.push(("frugal.prune.output", MetaValue::Bool(true)));
    }
    if let Some(r) = &block_ratios {
        meta.push((
            "frugal.prune.block_ratios",
            MetaValue::Array(
                frugal_formats::MetaType::F32,
                r.iter().map(|&x| MetaValue::F32(x)).collect(),
            ),
        ));
    }
    let bytes = write_result(&src, &q, ty, meta, &a.out, a.quiet)?;
    let (z, n) = q.zeros;
    eprintln!(
        "wrote {} ({:.1} MB) with {what} into {ty} in {:.1} s: {:.1}% of the block{} weights are zero",
        a.out.display(),
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        100.0 * z as f64 / n.max(1) as f64,
        if a.prune_output { " and output" } else { "" }
    );
    Ok(())
}

/// Room in a sparse row for the weights a `ratio` pruning keeps, of every 64.
fn sparse_keep(ratio: f32) -> u8 {
    (64.0 * (1.0 - ratio as f64)).ceil().clamp(1.0, 63.0) as u8
}

/// `--layer-sparsity`: one fraction in (0, 1) per block.
fn parse_block_ratios(list: &str, n_layer: usize) -> Result<Vec<f32>> {
    let r = list
        .split(',')
        .map(|x| {
            let v: f32 = x
                .trim()
                .parse()
                .map_err(|_| anyhow!("--layer-sparsity: `{x}` is not a number"))?;
            if !(v > 0.0 && v < 1.0) {
                bail!("--layer-sparsity: {v} must be in (0, 1)");
            }
            Ok(v)
        })
        .collect::<Result<Vec<f32>>>()?;
    if r.len() != n_layer {
        bail!(
            "--layer-sparsity gives {} fractions for the model's {n_layer} blocks",
            r.len()
        );
    }
    Ok(r)
}

/// Structured pruning: heads, FFN channels and blocks removed, shapes shrunk.
fn run_structured(a: Args) -> Result<()> {
    let scoring = match a.method {
        CriterionArg::Magnitude => Scoring::Magnitude,
        CriterionArg::Wanda => Scoring::Activation,
        CriterionArg::Sparsegpt => Scoring::ActivationRefit { damp: a.damp },
    };
    if !(0.0..1.0).contains(&a.damp) {
        bail!("--damp {}: use a fraction in [0, 1)", a.damp);
    }
    let ty = parse_type(&a.ty)?;
    if !ty.is_float() || a.gptq {
        bail!(
            "structured pruning writes a float model (--type F32, F16 or BF16): \
             quantize the result afterwards with frugal quantize"
        );
    }
    if a.output_type.is_some() {
        bail!(
            "--output-type is for unstructured pruning: structured pruning keeps the output matrix"
        );
    }
    if let Some(r) = a.shrink.filter(|r| !(*r > 0.0 && *r < 1.0)) {
        bail!("--shrink {r}: give a fraction of the parameters in (0, 1)");
    }
    if let Some(f) = a.ffn.filter(|f| !(*f > 0.0 && *f < 1.0)) {
        bail!("--ffn {f}: give a fraction of the channels in (0, 1)");
    }
    let layers = a.layers.unwrap_or(0);
    if (scoring.needs_calibration() || layers > 0) && a.calib.is_none() {
        let what = if layers > 0 {
            "--layers".to_string()
        } else {
            format!(
                "--method {}",
                a.method.to_possible_value().unwrap().get_name()
            )
        };
        bail!("{what} needs calibration text: --calib FILE");
    }
    check_writable(&a.out)?;

    let path = resolve_model(&a.model, a.quiet)?;
    let (src, _) = load_source(&path).with_context(|| format!("reading {}", path.display()))?;
    let model = Model::from_source(&src)?;
    let c = &model.config;
    // Parameters outside the blocks (embedding, output, final norm): not
    // pruned, but counted in --shrink's fraction, as LLM-Pruner counts.
    let other_params: usize = src
        .tensors
        .iter()
        .filter(|t| !t.name.starts_with("blk."))
        .map(|t| t.n_elements())
        .sum();
    // llama.cpp's qwen2 loader wants Q as n_embd × n_embd (its llama loader
    // reads head_count × key_length), so a Qwen2 file without some heads
    // runs in frugal only: --shrink leaves Qwen2's heads alone unless asked.
    let qwen2 = c.arch == Arch::Qwen2;
    let heads = match a.heads {
        None if qwen2 => Some(0),
        h => h,
    };
    if qwen2 && heads.unwrap_or(0) > 0 && !a.quiet {
        eprintln!(
            "note: llama.cpp's qwen2 loader does not take a model with query heads removed \
             (it wants Q as n_embd × n_embd); frugal runs it. --heads 0 keeps it loadable there."
        );
    }
    let spec = match a.shrink {
        Some(r) => Spec::for_shrink(c, r, heads, layers, other_params),
        None => {
            let ffn = match a.ffn {
                Some(f) => Spec::ffn_for_fraction(c, f).map_err(|e| anyhow!(e))?,
                None => 0,
            };
            let s = Spec {
                heads: heads.unwrap_or(0),
                ffn,
                layers,
            };
            s.check(c).map(|_| s)
        }
    }
    .map_err(|e| anyhow!(e))?;
    let calib = match &a.calib {
        Some(p) if scoring.needs_calibration() || layers > 0 => Some(calibration(
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
    let steps = c.n_layer * (1 + (layers > 0) as usize);
    let pb = progress_bar(steps as u64, a.quiet, "pruning blocks");
    let shrunk = prune_structured(
        &model,
        spec,
        scoring,
        calib.as_ref(),
        &mut |done, _, what| {
            pb.set_message(what.to_string());
            pb.set_position(done as u64)
        },
    )
    .map_err(|e| anyhow!(e))?;
    pb.finish_and_clear();
    let tensors = shrunk.block_tensors(&model, ty).map_err(|e| anyhow!(e))?;

    let mut w = GgufWriter::new();
    w.set_metadata(src.metadata.clone());
    for (k, v) in shrunk.metadata(c) {
        w.set_meta(k, v);
    }
    let method = format!(
        "structured-{}",
        a.method.to_possible_value().unwrap().get_name()
    );
    w.set_meta(
        "general.file_type",
        MetaValue::U32(file_type(ty).unwrap_or(0)),
    );
    w.set_meta("frugal.prune.method", MetaValue::String(method.clone()));
    w.set_meta(
        "frugal.prune.removed_blocks",
        MetaValue::Array(
            frugal_formats::MetaType::U32,
            shrunk
                .removed_blocks
                .iter()
                .map(|&b| MetaValue::U32(b as u32))
                .collect(),
        ),
    );
    for t in src.tensors.iter().filter(|t| !t.name.starts_with("blk.")) {
        w.add(t)?;
    }
    for t in &tensors {
        let dims = t.dims.iter().map(|&d| d as u64).collect();
        w.add_tensor(t.name.clone(), t.ty, dims, t.bytes.as_slice())?;
    }
    w.write(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let bytes = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({:.1} MB) in {:.1} s with {method}: {} of {} blocks, {} of {} heads and {} of {} \
         FFN channels per block kept: {:.1}% of the parameters removed ({:.1}% of the blocks')",
        a.out.display(),
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        shrunk.blocks.len(),
        c.n_layer,
        shrunk.n_head,
        c.n_head,
        shrunk.n_ff,
        c.n_ff,
        100.0 * spec.removed_fraction(c, other_params),
        100.0 * spec.removed_fraction(c, 0)
    );
    if !shrunk.removed_blocks.is_empty() && !a.quiet {
        eprintln!("removed blocks: {:?}", shrunk.removed_blocks);
    }
    Ok(())
}
