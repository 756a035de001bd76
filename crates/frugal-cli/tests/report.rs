//! `frugal report` through the binary, on the fixture records of
//! crates/frugal-report (four SmolLM2-135M files: F32 base, Q8_0, Q4_1, Q4_0).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../frugal-report/tests/fixtures");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "fixtures missing in {}", dir.display());
    v
}

fn report(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_frugal"))
        .arg("report")
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn report_prints_markdown_and_writes_html() {
    let d = tempfile::tempdir().unwrap();
    let html = d.path().join("r.html");
    let fx = fixtures();
    let mut args: Vec<&std::ffi::OsStr> = fx.iter().map(|p| p.as_os_str()).collect();
    args.extend([
        "--html".as_ref(),
        html.as_os_str(),
        "--title".as_ref(),
        "Quants".as_ref(),
    ]);
    let out = report(&args);
    ok(&out);
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.starts_with("# Quants\n"), "{md}");
    assert!(
        md.contains("| model | size MiB | bpw | PPL | KLD |"),
        "{md}"
    );
    assert!(
        md.contains("| smollm2-135m-Q4_0 | 85.1 | 5.20 | 20.61 ± 0.23 | 0.0718 ± 0.0008 |"),
        "{md}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg").count(), 2);
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("r.html"));
}

#[test]
fn report_md_is_written_to_the_file_not_stdout() {
    let d = tempfile::tempdir().unwrap();
    let md_path = d.path().join("r.md");
    let fx = fixtures();
    let mut args: Vec<&std::ffi::OsStr> = fx.iter().map(|p| p.as_os_str()).collect();
    args.extend(["--md".as_ref(), md_path.as_os_str()]);
    let out = report(&args);
    ok(&out);
    assert!(out.stdout.is_empty());
    let md = std::fs::read_to_string(&md_path).unwrap();
    assert!(md.starts_with("# frugal report\n"));
    assert!(md.contains("## Provenance"));
    // Written by rename: no temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["r.md"]);
}

#[test]
fn report_names_a_bad_file_and_does_not_panic() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("broken.json");
    std::fs::write(&bad, "{\"schema\": 1, ").unwrap();
    let missing = d.path().join("missing.json");
    let good = &fixtures()[0];
    for (file, want) in [(&bad, "not valid JSON"), (&missing, "missing.json")] {
        let out = report(&[good.as_os_str(), file.as_os_str()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert_eq!(err.matches(want).count(), 1, "said once: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn report_help_explains_inputs_and_outputs() {
    let out = Command::new(env!("CARGO_BIN_EXE_frugal"))
        .args(["report", "--help"])
        .output()
        .unwrap();
    ok(&out);
    let help = String::from_utf8(out.stdout).unwrap();
    for want in [
        "--md",
        "--html",
        "--title",
        "frugal eval --out",
        "frugal bench --out",
        "Pareto",
        "self-contained",
    ] {
        assert!(help.contains(want), "{want} missing from\n{help}");
    }
}

/// "#rrggbb" as bytes.
fn rgb(hex: &str) -> [u8; 3] {
    let h = hex.trim_start_matches('#');
    let c = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).unwrap();
    [c(0), c(2), c(4)]
}

/// Render the HTML report with headless Chromium (scripts/report-screenshot.sh)
/// and check the picture: not blank, and the plots' Pareto and dominated
/// colours (used nowhere else on the page) are there.
#[test]
#[ignore = "needs chromium; run by .ci/run"]
fn report_renders_in_chromium() {
    let d = tempfile::tempdir().unwrap();
    let html = d.path().join("report.html");
    let png_path = d.path().join("report.png");
    let fx = fixtures();
    let mut args: Vec<&std::ffi::OsStr> = fx.iter().map(|p| p.as_os_str()).collect();
    args.extend(["--html".as_ref(), html.as_os_str()]);
    ok(&report(&args));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/report-screenshot.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&html)
        .arg(&png_path)
        .output()
        .unwrap();
    ok(&out);

    let decoder = png::Decoder::new(std::fs::File::open(&png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    assert_eq!((info.width, info.height), (1280, 2000));
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let near = |p: &[u8; 3], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 6);
    let count = |c: [u8; 3]| pixels.iter().filter(|p| near(p, c)).count();
    let background = pixels[0];
    let non_bg = pixels.iter().filter(|p| !near(p, background)).count();
    assert!(
        non_bg > pixels.len() / 4,
        "page looks blank: {non_bg} of {} pixels differ from the background",
        pixels.len()
    );
    let dark = pixels.iter().filter(|p| p.iter().all(|&v| v < 80)).count();
    assert!(
        dark > 5_000,
        "hardly any text rendered ({dark} dark pixels)"
    );
    eprintln!("pixels: {non_bg} non-background, {dark} dark");
    // Pareto points (r 7) and the front line, in two plots plus legends.
    let pareto = count(rgb(frugal_report::plot::PARETO_COLOUR));
    eprintln!("pixels: {pareto} in the Pareto colour");
    assert!(pareto > 500, "Pareto colour: {pareto} pixels");
    // One dominated point (r 6) and the two legend markers.
    let dominated = count(rgb(frugal_report::plot::DOMINATED_COLOUR));
    eprintln!("pixels: {dominated} in the dominated colour");
    assert!(dominated > 100, "dominated colour: {dominated} pixels");
}
