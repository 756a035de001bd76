//! The report from the fixture records (four SmolLM2-135M files: F32 base,
//! Q8_0, Q4_1, Q4_0 with perplexity, KLD, LAMBADA, HellaSwag and bench
//! results), and from altered copies of them for merging and error cases.

use frugal_report::{html, markdown, read_record, Report, ReportError};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
    p
}

const F32: &str = "smollm2-135m-F32";
const Q8: &str = "smollm2-135m-Q8_0";
const Q41: &str = "smollm2-135m-Q4_1";
const Q40: &str = "smollm2-135m-Q4_0";

/// The cells of the Markdown table row starting with `label`.
fn md_row(md: &str, label: &str) -> Vec<String> {
    md.lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .unwrap_or_else(|| panic!("no row for {label} in\n{md}"))
        .trim_matches('|')
        .split(" | ")
        .map(|c| c.trim().to_string())
        .collect()
}

fn md_headers(md: &str) -> Vec<String> {
    md_row(md, "model")
}

/// Labels of the points with `class` in the plot `short` ("size"/"speed").
fn plot_points(html: &str, short: &str, class: &str) -> Vec<String> {
    let start = html
        .find(&format!("data-plot=\"{short}\""))
        .unwrap_or_else(|| panic!("no {short} plot"));
    let svg = &html[start..start + html[start..].find("</svg>").unwrap()];
    let needle = format!("class=\"point {class}\" data-label=\"");
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(i) = rest.find(&needle) {
        rest = &rest[i + needle.len()..];
        out.push(rest[..rest.find('"').unwrap()].to_string());
    }
    out.sort();
    out
}

#[test]
fn fixtures_merge_into_one_row_per_model_largest_first() {
    let r = Report::load(&fixtures()).unwrap();
    let labels: Vec<&str> = r.models.iter().map(|m| m.label.as_str()).collect();
    assert_eq!(labels, [F32, Q8, Q41, Q40]);
    assert_eq!(r.files.len(), 17);
    assert_eq!(r.kld_base.as_deref(), Some(F32));
    assert!(r.models[0].is_kld_base);
    assert_eq!(r.models[0].metric("kld", "kld_mean"), Some(0.0));
    assert_eq!(r.models[3].metric("kld", "kld_mean"), Some(0.0718));
    // Nothing merged or suspicious; only what the cost columns rest on.
    let all = [F32, Q8, Q41, Q40].join(", ");
    assert_eq!(
        r.notes,
        [
            format!("J/token source: rapl package counter (whole CPU package) ({all})."),
            format!("$/Mtok: decode tokens at $0.1 per machine-hour ({all})."),
        ]
    );
}

#[test]
fn markdown_table_has_the_measured_columns_only() {
    let md = markdown(&Report::load(&fixtures()).unwrap(), "Quants");
    assert!(md.starts_with("# Quants\n"));
    let h = md_headers(&md);
    assert_eq!(
        h,
        [
            "model",
            "size MiB",
            "bpw",
            "PPL",
            "KLD",
            "same top %",
            "LAMBADA %",
            "HellaSwag %",
            "decode t/s",
            "prefill t/s",
            "TTFT ms",
            "peak RSS MiB",
            "J/token",
            "$/Mtok",
            "Pareto"
        ]
    );
    let col = |name: &str| h.iter().position(|x| x == name).unwrap();
    let f32 = md_row(&md, F32);
    assert_eq!(f32[col("size MiB")], "513.2");
    assert_eq!(f32[col("bpw")], "32.00");
    assert_eq!(f32[col("PPL")], "18.92 ± 0.21");
    assert_eq!(f32[col("KLD")], "0 (base)");
    assert_eq!(f32[col("same top %")], "100 (base)");
    assert_eq!(f32[col("decode t/s")], "44.8 ± 0.6");
    assert_eq!(f32[col("peak RSS MiB")], "560");
    let q40 = md_row(&md, Q40);
    assert_eq!(q40[col("KLD")], "0.0718 ± 0.0008");
    assert_eq!(q40[col("same top %")], "87.12 ± 0.15");
    assert_eq!(q40[col("HellaSwag %")], "40.3 ± 1.6");
    assert_eq!(q40[col("Pareto")], "size, speed");
    let q8 = md_row(&md, Q8);
    assert_eq!(q8[col("KLD")], "0.000930 ± 0.000020");
    assert_eq!(q8[col("HellaSwag %")], "—");
    let q41 = md_row(&md, Q41);
    assert_eq!(q41[col("Pareto")], "size");
    assert_eq!(q41[col("$/Mtok")], "0.206");
    // Provenance: data with sha256 prefix and item counts, versions, machines.
    assert!(md.contains("- perplexity: /work/shared/data/wikitext-2-raw/wiki.test.raw (sha256 `4f3e427e4aff`), 100 items, 4 models"), "{md}");
    assert!(md.contains("lambada_test.jsonl"));
    assert!(md.contains("- 0.1.0 (800be42a1b2c) (17 records)"));
    assert!(md.contains("Intel(R) Xeon(R) Processor, 2 logical CPUs, 2 threads, Avx512"));
}

#[test]
fn html_is_self_contained_with_two_plots_and_the_right_fronts() {
    let page = html(&Report::load(&fixtures()).unwrap(), "Quants <&>");
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("<title>Quants &lt;&amp;&gt;</title>"));
    for bad in [
        "http://", "https://", "<script", "src=", "href=", "@import", "url(",
    ] {
        assert!(!page.contains(bad), "page contains {bad}");
    }
    assert_eq!(page.matches("<svg").count(), 2);
    assert_eq!(page.matches("</svg>").count(), 2);
    assert!(page.contains("File size (MiB, smaller is better)"));
    assert!(page.contains("Decode speed (tokens/s, higher is better)"));
    assert!(page.contains(">KL divergence from smollm2-135m-F32 (nats)</text>"));
    // KLD spans 77x beside the base's 0: a log axis with a slot for the zero.
    assert!(page.contains(">log scale, lower is better</text>"));
    assert!(page.contains("class=\"axis-break\""));
    assert!(page.contains("Pareto-optimal"));
    assert!(page.contains("dominated"));
    for l in [F32, Q8, Q41, Q40] {
        // In the table, and as a point label in each plot.
        assert!(page.matches(&format!(">{l}</text>")).count() == 2, "{l}");
        assert!(
            page.contains(&format!("<td class=\"text model\">{l}</td>")),
            "{l}"
        );
    }
    assert_eq!(plot_points(&page, "size", "pareto"), [F32, Q40, Q41, Q8]);
    assert!(plot_points(&page, "size", "dominated").is_empty());
    assert_eq!(plot_points(&page, "speed", "pareto"), [F32, Q40, Q8]);
    assert_eq!(plot_points(&page, "speed", "dominated"), [Q41]);
    // The front is drawn as a line in both plots, and the table is there.
    assert_eq!(page.matches("<polyline class=\"front\"").count(), 2);
    assert!(page.contains("<th class=\"num\">KLD</th>"));
}

#[test]
fn newest_record_of_a_task_wins_and_a_note_says_so() {
    let d = tempfile::tempdir().unwrap();
    let mut old = fixture("q4_0.kld.json");
    old["created_unix"] = Value::from(1_700_000_000u64);
    old["metrics"]["kld_mean"] = Value::from(0.5);
    let old_p = write(d.path(), "old.json", &old);
    let new_p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/q4_0.kld.json");
    // The newer record wins whatever the order given.
    for paths in [[&new_p, &old_p], [&old_p, &new_p]] {
        let r = Report::load(&paths).unwrap();
        assert_eq!(r.models.len(), 2, "the model and its KLD base");
        let m = r.models.iter().find(|m| m.label == Q40).unwrap();
        assert_eq!(m.metric("kld", "kld_mean"), Some(0.0718));
        let n = r.notes.iter().find(|n| n.contains(" kld records")).unwrap();
        assert!(
            n.contains("2 kld records") && n.contains("kept the newest"),
            "{n}"
        );
        assert!(n.contains("old.json") && n.contains("q4_0.kld.json"), "{n}");
    }
    // Equal times: the one given last wins, and the note says how it chose.
    let mut same = fixture("q4_0.kld.json");
    same["metrics"]["kld_mean"] = Value::from(0.25);
    let same_p = write(d.path(), "same.json", &same);
    let r = Report::load(&[&new_p, &same_p]).unwrap();
    let m = r.models.iter().find(|m| m.label == Q40).unwrap();
    assert_eq!(m.metric("kld", "kld_mean"), Some(0.25));
    assert!(
        r.notes.iter().any(|n| n.contains("the last given")),
        "{:?}",
        r.notes
    );
}

#[test]
fn the_bases_own_save_logits_record_keeps_its_kld_at_zero() {
    // `frugal eval --task kld --save-logits` without --base: the model is its
    // own base, and the record has only the base perplexity.
    let d = tempfile::tempdir().unwrap();
    let mut own = fixture("q4_0.kld.json");
    own["model"] = own["base"].clone();
    own["metrics"] =
        serde_json::json!({"ppl_base": 18.92, "ppl_base_stderr": 0.212, "tokens_scored": 51100});
    let mut paths = fixtures();
    paths.push(write(d.path(), "f32.kld.json", &own));
    let r = Report::load(&paths).unwrap();
    let f32 = &r.models[0];
    assert!(f32.tasks.contains_key("kld") && f32.is_kld_base);
    assert_eq!(f32.metric("kld", "kld_mean"), Some(0.0));
    let md = markdown(&r, "t");
    assert!(md_row(&md, F32).contains(&"0 (base)".to_string()), "{md}");
    assert!(html(&r, "t").contains(">KL divergence from smollm2-135m-F32 (nats)</text>"));
}

#[test]
fn kld_records_without_a_named_base_imply_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut a = fixture("q4_0.kld.json");
    a.as_object_mut().unwrap().remove("base");
    let pa = write(d.path(), "a.json", &a);
    let pb = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/q8_0.kld.json");
    let r = Report::load(&[pa, pb]).unwrap();
    assert_eq!(r.models.len(), 2);
    assert!(r.models.iter().all(|m| !m.is_kld_base));
    assert!(
        r.notes.iter().any(|n| n.contains("1 without one")),
        "{:?}",
        r.notes
    );
}

#[test]
fn two_files_with_one_label_are_told_apart_by_sha256() {
    let d = tempfile::tempdir().unwrap();
    let a = fixture("q4_0.perplexity.json");
    let mut b = a.clone();
    b["model"]["sha256"] = Value::from("ff".repeat(32));
    b["metrics"]["ppl"] = Value::from(30.0);
    let pa = write(d.path(), "a.json", &a);
    let pb = write(d.path(), "b.json", &b);
    let r = Report::load(&[pa, pb]).unwrap();
    let mut labels: Vec<&str> = r.models.iter().map(|m| m.label.as_str()).collect();
    labels.sort();
    assert_eq!(
        labels,
        [format!("{Q40} (bf77cfa4)"), format!("{Q40} (ffffffff)")]
    );
    assert!(
        r.notes.iter().any(|n| n.contains("told apart by sha256")),
        "{:?}",
        r.notes
    );
    let md = markdown(&r, "t");
    assert!(md.contains(&format!("| {Q40} (ffffffff) |")));
}

#[test]
fn without_kld_everywhere_plots_use_perplexity_and_say_what_is_left_out() {
    // Perplexity for all four, KLD for one, bench for three.
    let fx = fixtures();
    let pick: Vec<&PathBuf> = fx
        .iter()
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".perplexity.json")
                || n == "q8_0.kld.json"
                || (n.ends_with(".bench.json") && n != "q4_1.bench.json")
        })
        .collect();
    let r = Report::load(&pick).unwrap();
    let page = html(&r, "t");
    assert!(
        page.contains(">Perplexity on wiki.test.raw</text>"),
        "{page}"
    );
    assert!(page.contains(">lower is better</text>"));
    assert!(!page.contains("KL divergence from"));
    assert!(page.contains(&format!("Not plotted: {Q41} (no decode speed)")));
    assert_eq!(plot_points(&page, "speed", "pareto"), [F32, Q40, Q8]);
    // F32 (18.92) and Q8_0 (18.94): Q8_0 is smaller, so both are on the size front.
    assert_eq!(plot_points(&page, "size", "pareto"), [F32, Q40, Q41, Q8]);
}

#[test]
fn a_plot_without_data_is_left_out_with_a_note() {
    let fx = fixtures();
    let pick: Vec<&PathBuf> = fx
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".perplexity.json"))
        .collect();
    let r = Report::load(&pick).unwrap();
    let page = html(&r, "t");
    assert_eq!(page.matches("<svg").count(), 1);
    assert!(page.contains("No quality-against-decode speed plot"));
    let md = markdown(&r, "t");
    assert!(!md_headers(&md)
        .iter()
        .any(|h| h == "decode t/s" || h == "KLD"));
}

#[test]
fn incomparable_results_get_notes() {
    let d = tempfile::tempdir().unwrap();
    let mut a = fixture("q4_0.perplexity.json");
    a["data"]["sha256"] = Value::from("0".repeat(64));
    a["data"]["path"] = Value::from("/data/other.txt");
    let pa = write(d.path(), "a.json", &a);
    let pb = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/q8_0.perplexity.json");
    let mut k1 = fixture("q4_1.kld.json");
    k1["base"]["sha256"] = Value::from("1".repeat(64));
    k1["base"]["label"] = Value::from("other-base");
    let pk1 = write(d.path(), "k1.json", &k1);
    let pk2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/q4_0.kld.json");
    let r = Report::load(&[pa, pb, pk1, pk2]).unwrap();
    let all = r.notes.join("\n");
    assert!(
        all.contains("perplexity results come from 2 different data files"),
        "{all}"
    );
    assert!(all.contains("2 different base models"), "{all}");
    assert!(!r.kld_comparable);
    assert!(r.models.iter().all(|m| !m.is_kld_base));
}

#[test]
fn labels_are_escaped_in_html_and_markdown() {
    let d = tempfile::tempdir().unwrap();
    let mut a = fixture("q4_0.perplexity.json");
    a["model"]["label"] = Value::from("<b>x|y</b>");
    let r = Report::load(&[write(d.path(), "a.json", &a)]).unwrap();
    let page = html(&r, "t");
    assert!(!page.contains("<b>x"));
    assert!(page.contains("&lt;b&gt;x|y&lt;/b&gt;"));
    let md = markdown(&r, "t");
    assert!(md.contains("| \\<b\\>x\\|y\\</b\\> |"), "{md}");
}

#[test]
fn bad_files_are_named_in_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad.json", "{ not json".into(), "not valid JSON"),
        (
            "array.json",
            "[1, 2]".into(),
            "the JSON is an array, not an object",
        ),
        ("other.json", r#"{"name": "x"}"#.into(), "no `schema` field"),
        (
            "schema.json",
            {
                let mut v = fixture("q4_0.bench.json");
                v["schema"] = Value::from(2);
                v.to_string()
            },
            "record schema 2 is not supported",
        ),
        (
            "nomodel.json",
            {
                let mut v = fixture("q4_0.bench.json");
                v.as_object_mut().unwrap().remove("model");
                v.to_string()
            },
            "missing field `model`",
        ),
        (
            "kind.json",
            {
                let mut v = fixture("q4_0.bench.json");
                v["kind"] = Value::from("train");
                v.to_string()
            },
            "kind \"train\"",
        ),
    ];
    for (name, text, want) in &cases {
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = read_record(&p).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with(&p.display().to_string()), "{msg}");
        assert!(msg.contains(want), "{name}: {msg}");
        // The whole report fails on the first bad file, naming it.
        let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/q8_0.bench.json");
        let e = Report::load(&[good, p.clone()]).unwrap_err();
        assert!(e.to_string().contains(name), "{e}");
    }
    let missing = d.path().join("missing.json");
    let e = read_record(&missing).unwrap_err();
    assert!(matches!(e, ReportError::Io { .. }));
    assert!(e.to_string().contains("missing.json"), "{e}");
}

#[test]
fn a_real_record_from_frugal_eval_loads() {
    // Shape written by `frugal eval --task perplexity:... --json` today.
    let text = r#"{
  "schema": 1, "kind": "eval", "task": "perplexity",
  "frugal_version": "0.1.0 (676f7726f3f5-dirty)", "created_unix": 1795279164,
  "model": {"label": "SmolLM2-135M-Instruct.Q4_1",
    "path": "/root/.cache/frugal/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf",
    "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    "file_bytes": 98362432, "arch": "llama", "format": "gguf", "params": 134515008,
    "tensor_bytes": 96576768, "bpw": 5.743702174853233},
  "data": {"path": "/work/shared/data/wikitext-2-raw/wiki.test.raw",
    "sha256": "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c",
    "items": 2, "skipped_lines": 0},
  "settings": {"chunks": 2, "ctx": 512, "text_tokens": 304830},
  "metrics": {"nll": 3.0616199833617763, "ppl": 21.362135450340475,
    "ppl_stderr": 3.139237309289231, "tokens_scored": 510},
  "machine": {"cpu": "Intel(R) Xeon(R) Processor", "logical_cpus": 2, "threads": 2, "isa": "Avx512"}
}"#;
    let l = frugal_report::load::parse_record(Path::new("real.json"), text.as_bytes()).unwrap();
    let r = Report::from_records(vec![l]);
    let md = markdown(&r, "t");
    let row = md_row(&md, "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(row[1..4], ["93.8", "5.74", "21.36 ± 3.14"]);
    assert_eq!(html(&r, "t").matches("<svg").count(), 1);
}
