//! HellaSwag in llama.cpp's 6-line format: per task a context line, the gold
//! ending's index (0-3), then the 4 endings. Scored as llama.cpp's
//! `hellaswag_score` scores it (see [`super::choice`]), but over the first
//! tasks in file order, where llama.cpp draws tasks at random.

use super::choice::ChoiceItem;
use super::{is_json_object, Rec};
use crate::data::TaskFile;
use crate::EvalError;

/// Lines per task.
pub const GROUP: usize = 6;

/// The tasks of a HellaSwag file, each named by its first line. A file whose
/// first line is a JSON object is refused as a whole (wrong format).
pub fn records(f: &TaskFile) -> Result<Vec<Rec<ChoiceItem>>, EvalError> {
    let mut lines: Vec<(usize, &str)> = f.lines().collect();
    while lines.last().is_some_and(|(_, l)| l.trim().is_empty()) {
        lines.pop();
    }
    if lines.first().is_some_and(|(_, l)| is_json_object(l)) {
        return Err(EvalError::Format {
            path: f.path.clone(),
            reason: "line 1 is a JSON object, but the hellaswag task reads llama.cpp's \
                     6-line text format (context, gold index, 4 endings); \
                     for JSON lines use mc:FILE"
                .into(),
        });
    }
    Ok(lines.chunks(GROUP).map(group).collect())
}

/// One 6-line group.
pub fn group(g: &[(usize, &str)]) -> Rec<ChoiceItem> {
    let first = g.first().map_or(0, |l| l.0);
    if g.len() < GROUP {
        return Err((
            first,
            format!(
                "truncated task: the file ends {} line(s) into a 6-line task \
                 (context, gold index, 4 endings)",
                g.len()
            ),
        ));
    }
    let (gl, gs) = g[1];
    let label: usize = gs.trim().parse().map_err(|_| {
        (
            gl,
            format!("gold ending index {gs:?} is not a number 0-3 (is the file in llama.cpp's 6-line format?)"),
        )
    })?;
    if label >= 4 {
        return Err((gl, format!("gold ending index {label} is out of range 0-3")));
    }
    Ok((
        first,
        ChoiceItem {
            context: g[0].1.to_string(),
            choices: g[2..GROUP].iter().map(|l| l.1.to_string()).collect(),
            label,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::OnBadLine;
    use crate::tasks::collect;

    const TWO: &str = "Ctx one: a man\n2\nrun.\nwalk.\nsit.\nfly.\nCtx two\n0\na\nb\nc\nd\n";

    fn parse(text: &str, on_bad: OnBadLine) -> Result<crate::data::Parsed<ChoiceItem>, EvalError> {
        let f = TaskFile::from_text("hs.txt", text.to_string());
        collect(&f, records(&f)?, on_bad, None, "tasks", Ok)
    }

    #[test]
    fn groups_of_six() {
        let p = parse(TWO, OnBadLine::Stop).unwrap();
        assert_eq!(p.items.len(), 2);
        assert_eq!(p.items[0].context, "Ctx one: a man");
        assert_eq!(p.items[0].label, 2);
        assert_eq!(p.items[0].choices, ["run.", "walk.", "sit.", "fly."]);
        assert_eq!(p.items[1].label, 0);
        // Trailing blank lines and CRLF are fine.
        let crlf = TWO.replace('\n', "\r\n") + "\r\n\r\n";
        assert_eq!(parse(&crlf, OnBadLine::Stop).unwrap().items, p.items);
    }

    #[test]
    fn bad_gold_index_names_its_line() {
        let bad = TWO.replacen("\n0\n", "\nzero\n", 1);
        let e = parse(&bad, OnBadLine::Stop).unwrap_err().to_string();
        assert!(e.starts_with("hs.txt:8: gold ending index \"zero\""), "{e}");
        let p = parse(&bad, OnBadLine::Skip).unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.skipped[0].line, 8);

        let bad = TWO.replacen("\n2\n", "\n4\n", 1);
        let e = parse(&bad, OnBadLine::Stop).unwrap_err().to_string();
        assert!(
            e.starts_with("hs.txt:2: gold ending index 4 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn truncated_last_group_is_named() {
        let cut = TWO.lines().take(10).collect::<Vec<_>>().join("\n");
        let e = parse(&cut, OnBadLine::Stop).unwrap_err().to_string();
        assert!(e.starts_with("hs.txt:7: truncated task"), "{e}");
        let p = parse(&cut, OnBadLine::Skip).unwrap();
        assert_eq!((p.items.len(), p.skipped.len()), (1, 1));
    }

    #[test]
    fn json_lines_are_the_wrong_format() {
        let e = parse(
            "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 0}\n",
            OnBadLine::Skip,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("6-line"), "{e}");
        // Prose that is neither: every group is bad, so nothing is usable.
        let e = parse("just\nsome\nprose\nlines\nhere\nok\n", OnBadLine::Skip)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no usable tasks"), "{e}");
        assert!(parse("\n\n", OnBadLine::Stop)
            .unwrap_err()
            .to_string()
            .contains("no tasks"));
    }
}
