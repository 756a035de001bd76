//! Records grouped into models. A model is its file's sha256 (labels are
//! only names, and two files may share one); per task the newest record
//! counts. Everything the merge decided or found suspicious becomes a note,
//! so a reader of the table knows what it rests on.

use crate::fmt::{plural, sha_short, utc};
use crate::load::{read_record, Loaded, EVAL_TASKS};
use crate::ReportError;
use frugal_eval::record::ModelInfo;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

const MIB: f64 = 1024.0 * 1024.0;

/// One model: its newest description and its newest record of each task.
#[derive(Clone, Debug)]
pub struct ModelEntry {
    /// Unique within the report (a shared label gets a sha256 prefix).
    pub label: String,
    pub info: ModelInfo,
    /// Task name to the record kept for it.
    pub tasks: BTreeMap<String, Loaded>,
    /// The base every kld record measures against: its KLD is 0 by
    /// definition, which puts the reference model on the quality plots.
    /// Comes with no KLD record of its own; see [`ModelEntry::metric`].
    pub is_kld_base: bool,
}

impl ModelEntry {
    pub fn size_mib(&self) -> f64 {
        self.info.file_bytes as f64 / MIB
    }

    /// A finite number from the kept record of `task`, or the definitional
    /// KLD values of the base model.
    pub fn metric(&self, task: &str, key: &str) -> Option<f64> {
        self.measured(task, key).or_else(|| self.implied(task, key))
    }

    /// Whether [`metric`](Self::metric) would give a definitional value.
    pub fn is_implied(&self, task: &str, key: &str) -> bool {
        self.measured(task, key).is_none() && self.implied(task, key).is_some()
    }

    fn measured(&self, task: &str, key: &str) -> Option<f64> {
        self.tasks
            .get(task)?
            .record
            .metrics
            .get(key)
            .and_then(Value::as_f64)
            .filter(|v| v.is_finite())
    }

    /// The base compared with itself. Its own kld record, if any, is the
    /// one `--save-logits` writes: base perplexity only, no divergence.
    fn implied(&self, task: &str, key: &str) -> Option<f64> {
        if task != "kld" || !self.is_kld_base {
            return None;
        }
        match key {
            "kld_mean"
            | "kld_stderr"
            | "kld_median"
            | "kld_p99"
            | "rms_dp_pct"
            | "same_top_stderr_pct" => Some(0.0),
            "same_top_pct" => Some(100.0),
            _ => None,
        }
    }
}

/// All models of a report, with the notes the merge made.
#[derive(Clone, Debug)]
pub struct Report {
    /// Largest file first: the usual order of a quantization table.
    pub models: Vec<ModelEntry>,
    pub notes: Vec<String>,
    /// Every file read, in the order given.
    pub files: Vec<PathBuf>,
    /// Label of the model all kld records measure against, when they agree.
    pub kld_base: Option<String>,
    /// False when kld records measure against different bases.
    pub kld_comparable: bool,
}

/// Where a task's data came from and who used it.
#[derive(Clone, Debug)]
pub struct DataUse {
    pub task: String,
    pub path: PathBuf,
    pub sha256: String,
    pub items: BTreeSet<usize>,
    pub skipped_lines: usize,
    pub models: Vec<String>,
}

/// A machine (as records describe it) and what was measured on it.
#[derive(Clone, Debug)]
pub struct MachineUse {
    pub description: String,
    pub tasks: BTreeSet<String>,
    pub records: usize,
}

/// What the kept records rest on.
#[derive(Clone, Debug)]
pub struct Provenance {
    pub data: Vec<DataUse>,
    /// frugal version and how many kept records it wrote.
    pub versions: Vec<(String, usize)>,
    pub machines: Vec<MachineUse>,
    /// Oldest and newest record time.
    pub created: Option<(u64, u64)>,
}

impl Report {
    /// Read every file (the first bad one is the error) and merge.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Report, ReportError> {
        let records = paths
            .iter()
            .map(|p| read_record(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Report::from_records(records))
    }

    /// Merge records (in the order given: on equal times the later one wins).
    pub fn from_records(records: Vec<Loaded>) -> Report {
        let mut notes = Vec::new();
        let files = records.iter().map(|l| l.path.clone()).collect();
        let mut order: Vec<String> = Vec::new();
        let mut groups: HashMap<String, Vec<Loaded>> = HashMap::new();
        for l in records {
            let sha = l.record.model.sha256.trim().to_ascii_lowercase();
            if !groups.contains_key(&sha) {
                order.push(sha.clone());
            }
            groups.entry(sha).or_default().push(l);
        }

        let mut models = Vec::new();
        for sha in order {
            let recs = groups.remove(&sha).unwrap_or_default();
            models.push(merge_model(&sha, recs, &mut notes));
        }

        let (kld_base, kld_comparable) = mark_kld_base(&mut models, &mut notes);
        models.sort_by(|a, b| {
            b.info
                .file_bytes
                .cmp(&a.info.file_bytes)
                .then_with(|| a.label.cmp(&b.label))
        });
        disambiguate(&mut models, &mut notes);
        let kld_base = kld_base.and_then(|sha| {
            models
                .iter()
                .find(|m| m.info.sha256.eq_ignore_ascii_case(&sha))
                .map(|m| m.label.clone())
        });
        let mut report = Report {
            models,
            notes,
            files,
            kld_base,
            kld_comparable,
        };
        report.note_incomparable();
        report
    }

    /// Kept records with their model, in table order then task order.
    pub fn kept(&self) -> impl Iterator<Item = (&ModelEntry, &Loaded)> {
        self.models
            .iter()
            .flat_map(|m| m.tasks.values().map(move |l| (m, l)))
    }

    /// Data files, frugal versions and machines behind the kept records.
    pub fn provenance(&self) -> Provenance {
        let mut data: Vec<DataUse> = Vec::new();
        let mut versions: BTreeMap<String, usize> = BTreeMap::new();
        let mut machines: Vec<MachineUse> = Vec::new();
        let mut created: Option<(u64, u64)> = None;
        for (m, l) in self.kept() {
            let r = &l.record;
            if let Some(d) = &r.data {
                let sha = d.sha256.to_ascii_lowercase();
                match data
                    .iter_mut()
                    .find(|u| u.task == r.task && u.sha256 == sha)
                {
                    Some(u) => {
                        u.items.insert(d.items);
                        u.skipped_lines = u.skipped_lines.max(d.skipped_lines);
                        u.models.push(m.label.clone());
                    }
                    None => data.push(DataUse {
                        task: r.task.clone(),
                        path: d.path.clone(),
                        sha256: sha,
                        items: BTreeSet::from([d.items]),
                        skipped_lines: d.skipped_lines,
                        models: vec![m.label.clone()],
                    }),
                }
            }
            *versions.entry(r.frugal_version.clone()).or_default() += 1;
            let desc = machine(l);
            match machines.iter_mut().find(|u| u.description == desc) {
                Some(u) => {
                    u.tasks.insert(r.task.clone());
                    u.records += 1;
                }
                None => machines.push(MachineUse {
                    description: desc,
                    tasks: BTreeSet::from([r.task.clone()]),
                    records: 1,
                }),
            }
            let t = r.created_unix;
            created = Some(created.map_or((t, t), |(a, b)| (a.min(t), b.max(t))));
        }
        data.sort_by_key(|d| task_rank(&d.task));
        Provenance {
            data,
            versions: versions.into_iter().collect(),
            machines,
            created,
        }
    }

    /// Notes for results of one task that do not compare across models:
    /// different data, amounts of data, settings or (for speed) machines.
    fn note_incomparable(&mut self) {
        let mut by_task: BTreeMap<&str, Vec<&Loaded>> = BTreeMap::new();
        for (_, l) in self.kept() {
            by_task.entry(l.record.task.as_str()).or_default().push(l);
        }
        let mut notes = Vec::new();
        for (task, ls) in by_task {
            if ls.len() < 2 {
                continue;
            }
            let data: BTreeSet<String> = ls
                .iter()
                .filter_map(|l| l.record.data.as_ref())
                .map(|d| {
                    let name = d.path.file_name().unwrap_or(d.path.as_os_str());
                    format!(
                        "{} {}",
                        name.to_string_lossy(),
                        sha_short(&d.sha256.to_ascii_lowercase())
                    )
                })
                .collect();
            if data.len() > 1 {
                notes.push(format!(
                    "{task} results come from {} different data files ({}): they do not compare across models.",
                    data.len(),
                    join(&data)
                ));
            } else {
                let items: BTreeSet<usize> = ls
                    .iter()
                    .filter_map(|l| l.record.data.as_ref().map(|d| d.items))
                    .collect();
                if items.len() > 1 {
                    notes.push(format!(
                        "{task} results cover different numbers of items ({}): compare them with care.",
                        join(&items)
                    ));
                }
            }
            let diffs = setting_diffs(&ls);
            if !diffs.is_empty() {
                notes.push(format!(
                    "{task} settings differ between models: {}.",
                    diffs.join("; ")
                ));
            }
            if task == "bench" {
                let ms: BTreeSet<String> = ls.iter().map(|l| machine(l)).collect();
                if ms.len() > 1 {
                    notes.push(format!(
                        "bench results come from {} different machines or thread counts: their speeds do not compare.",
                        ms.len()
                    ));
                }
            }
        }
        notes.extend(self.cost_notes());
        self.notes.extend(notes);
    }

    /// What J/token and $/Mtok rest on: the energy source and the price of
    /// an hour, per group of models.
    fn cost_notes(&self) -> Vec<String> {
        let mut energy: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        let mut price: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for m in &self.models {
            let Some(l) = m.tasks.get("bench") else {
                continue;
            };
            let r = &l.record;
            if m.metric("bench", "energy_j_per_token").is_some() {
                let src = r.metrics.get("energy_source").and_then(Value::as_str);
                energy
                    .entry(src.unwrap_or("not recorded").to_string())
                    .or_default()
                    .push(&m.label);
            }
            if m.metric("bench", "usd_per_mtok").is_some() {
                if let Some(p) = r.settings.get("usd_per_hour").and_then(Value::as_f64) {
                    price.entry(format!("${p}")).or_default().push(&m.label);
                }
            }
        }
        let mut out = Vec::new();
        for (src, ms) in &energy {
            out.push(format!("J/token source: {src} ({}).", join(ms)));
        }
        for (p, ms) in &price {
            out.push(format!(
                "$/Mtok: decode tokens at {p} per machine-hour ({}).",
                join(ms)
            ));
        }
        out
    }
}

/// One model's records: its newest description, its newest record per task.
fn merge_model(sha: &str, recs: Vec<Loaded>, notes: &mut Vec<String>) -> ModelEntry {
    let newest = newest_index(&recs);
    let info = recs[newest].record.model.clone();
    let labels: BTreeSet<&str> = recs.iter().map(|l| l.record.model.label.as_str()).collect();
    if labels.len() > 1 {
        notes.push(format!(
            "Model {} is labelled {} in different records; the newest says {:?}.",
            sha_short(sha),
            join(labels.iter().map(|l| format!("{l:?}"))),
            info.label
        ));
    }
    let mut by_task: BTreeMap<String, Vec<Loaded>> = BTreeMap::new();
    for l in recs {
        by_task.entry(l.record.task.clone()).or_default().push(l);
    }
    let mut tasks = BTreeMap::new();
    for (task, mut ls) in by_task {
        if task != "bench" && !EVAL_TASKS.contains(&task.as_str()) {
            notes.push(format!(
                "{}: task {task:?} is not one this report shows; left out.",
                join(ls.iter().map(|l| l.path.display()))
            ));
            continue;
        }
        let keep = newest_index(&ls);
        if ls.len() > 1 {
            let t = ls[keep].record.created_unix;
            let tie = ls.iter().filter(|l| l.record.created_unix == t).count() > 1;
            notes.push(format!(
                "{}: {} {task} records ({}); kept {} {} ({}).",
                info.label,
                ls.len(),
                join(ls.iter().map(|l| l.path.display())),
                if tie {
                    "the last given of the newest,"
                } else {
                    "the newest,"
                },
                ls[keep].path.display(),
                utc(t)
            ));
        }
        tasks.insert(task, ls.swap_remove(keep));
    }
    ModelEntry {
        label: info.label.clone(),
        info,
        tasks,
        is_kld_base: false,
    }
}

/// Index of the newest record; on equal times the last one.
fn newest_index(ls: &[Loaded]) -> usize {
    ls.iter()
        .enumerate()
        .max_by_key(|(i, l)| (l.record.created_unix, *i))
        .map_or(0, |(i, _)| i)
}

/// Find the base that all kld records share and mark it (adding it as a
/// model when it has no records of its own). Returns its sha256 and whether
/// the kld results compare with each other.
fn mark_kld_base(models: &mut Vec<ModelEntry>, notes: &mut Vec<String>) -> (Option<String>, bool) {
    let kld: Vec<&Loaded> = models.iter().filter_map(|m| m.tasks.get("kld")).collect();
    if kld.is_empty() {
        return (None, true);
    }
    let mut bases: BTreeMap<String, ModelInfo> = BTreeMap::new();
    let mut unnamed = 0;
    for l in &kld {
        match &l.record.base {
            Some(b) => {
                bases
                    .entry(b.sha256.trim().to_ascii_lowercase())
                    .or_insert_with(|| b.clone());
            }
            None => unnamed += 1,
        }
    }
    if bases.len() > 1 {
        notes.push(format!(
            "The kld records measure divergence from {} different base models ({}): their KLD values do not compare, so the plots use perplexity.",
            bases.len(),
            join(bases.values().map(|b| b.label.clone()))
        ));
        return (None, false);
    }
    let Some((sha, base)) = bases.into_iter().next() else {
        return (None, true);
    };
    if unnamed > 0 {
        notes.push(format!(
            "Not every kld record names its base model ({unnamed} without one), so the KLD of {} is not taken to be 0.",
            base.label
        ));
        return (None, true);
    }
    match models
        .iter_mut()
        .find(|m| m.info.sha256.eq_ignore_ascii_case(&sha))
    {
        Some(m) => m.is_kld_base = true,
        None => {
            notes.push(format!(
                "{} appears only as the base of the kld records; its size comes from them.",
                base.label
            ));
            models.push(ModelEntry {
                label: base.label.clone(),
                info: base,
                tasks: BTreeMap::new(),
                is_kld_base: true,
            });
        }
    }
    (Some(sha), true)
}

/// Give models that share a label a sha256 prefix long enough to tell them apart.
fn disambiguate(models: &mut [ModelEntry], notes: &mut Vec<String>) {
    let mut by_label: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, m) in models.iter().enumerate() {
        by_label.entry(m.label.clone()).or_default().push(i);
    }
    for (label, idx) in by_label {
        if idx.len() < 2 {
            continue;
        }
        let shas: Vec<String> = idx
            .iter()
            .map(|&i| models[i].info.sha256.to_ascii_lowercase())
            .collect();
        let mut n = 8;
        while n < 64 {
            let prefixes: BTreeSet<&str> = shas.iter().map(|s| s.get(..n).unwrap_or(s)).collect();
            if prefixes.len() == shas.len() {
                break;
            }
            n += 4;
        }
        for (&i, sha) in idx.iter().zip(&shas) {
            models[i].label = format!("{label} ({})", sha.get(..n).unwrap_or(sha));
        }
        notes.push(format!(
            "{} different model files are labelled {label:?}; they are told apart by sha256 prefix.",
            idx.len()
        ));
    }
}

/// "cpu, N logical CPUs, T threads, ISA": what a speed depends on.
fn machine(l: &Loaded) -> String {
    let m = &l.record.machine;
    format!(
        "{}, {}, {}, {}",
        m.cpu,
        plural(m.logical_cpus, "logical CPU"),
        plural(m.threads, "thread"),
        m.isa
    )
}

/// Settings keys whose values differ between records, with their values.
fn setting_diffs(ls: &[&Loaded]) -> Vec<String> {
    // How a KLD base was supplied (live, saved, which file) does not change
    // the numbers: a saved base reproduces the live one exactly.
    const INCIDENTAL: [&str; 3] = ["base_mode", "logits_file", "saved"];
    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for l in ls {
        if let Some(o) = l.record.settings.as_object() {
            keys.extend(
                o.keys()
                    .map(String::as_str)
                    .filter(|k| !INCIDENTAL.contains(k)),
            );
        }
    }
    let mut out = Vec::new();
    for k in keys {
        let values: BTreeSet<String> = ls
            .iter()
            .map(|l| match l.record.settings.get(k) {
                Some(v) => v.to_string(),
                None => "unset".into(),
            })
            .collect();
        if values.len() > 1 {
            out.push(format!("{k} ({})", join(&values)));
        }
    }
    out
}

/// Order of tasks in provenance: quality first, then speed.
pub fn task_rank(task: &str) -> usize {
    EVAL_TASKS
        .iter()
        .position(|t| *t == task)
        .unwrap_or(if task == "bench" {
            EVAL_TASKS.len()
        } else {
            EVAL_TASKS.len() + 1
        })
}

fn join<I, T>(items: I) -> String
where
    I: IntoIterator<Item = T>,
    T: std::fmt::Display,
{
    items
        .into_iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
