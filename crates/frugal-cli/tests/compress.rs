//! `frugal compress --recipe` on the real SmolLM2 (fetched on first use).

// Shared with the quantize and prune tests; this one needs only some of it.
#[allow(dead_code)]
mod common;
#[allow(dead_code)]
mod quantize_common;

use frugal_formats::GgmlType;
use frugal_model::load::load_source;
use quantize_common::{fails, ok};

#[test]
fn a_recipe_chains_its_stages_and_leaves_only_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let m = frugal_fetch::fetch("smollm2-135m").unwrap();
    let recipe = dir.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        "[structured]\nmethod = \"magnitude\"\nffn = 0.25\n\n[quantize]\ntype = \"Q8_0\"\n",
    )
    .unwrap();
    let out = dir.path().join("small.gguf");
    ok(&[
        "compress",
        "-q",
        "-m",
        m.to_str().unwrap(),
        "--recipe",
        recipe.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let (src, _) = load_source(&out).unwrap();
    let model = frugal_model::Model::from_source(&src).unwrap();
    // 1536 channels less a quarter, a multiple of 32.
    assert_eq!(model.config.n_ff, 1152);
    assert_eq!(
        src.tensor("blk.0.ffn_down.weight").unwrap().ty,
        GgmlType::Q8_0
    );
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec!["recipe.toml", "small.gguf"]);

    // A typo in a recipe is an error naming it, and writes nothing.
    std::fs::write(&recipe, "[prune]\nsparsty = 0.5\n").unwrap();
    let bad = dir.path().join("bad.gguf");
    let compress_fails = |needle: &str| {
        fails(
            &[
                "compress",
                "-m",
                m.to_str().unwrap(),
                "--recipe",
                recipe.to_str().unwrap(),
                "-o",
                bad.to_str().unwrap(),
            ],
            needle,
        )
    };
    compress_fails("sparsty");
    // A stage that fails (more heads than the model has) stops the recipe
    // and leaves no intermediate file.
    std::fs::write(
        &recipe,
        "[structured]\nmethod = \"magnitude\"\nheads = 9\n\n[quantize]\ntype = \"Q8_0\"\n",
    )
    .unwrap();
    compress_fails("the model has 9");
    // The second stage fails after the first wrote its model: that
    // intermediate goes too.
    std::fs::write(
        &recipe,
        "[structured]\nmethod = \"magnitude\"\nffn = 0.25\n\n[quantize]\ntype = \"Q9_9\"\n",
    )
    .unwrap();
    compress_fails("stage 2");
    let left = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(left, 2, "a failed recipe left files");
}
