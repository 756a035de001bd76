//! Generic multiple choice: one `{"context": str, "choices": [str, ...],
//! "label": int}` per line (2 or more choices), scored like HellaSwag
//! ([`super::choice`]). Other fields are ignored.

use super::choice::ChoiceItem;
use super::{json_object, Rec};
use crate::data::TaskFile;
use serde_json::Value;

const EXPECTED: &str =
    "one {\"context\": str, \"choices\": [str, ...], \"label\": int} object per line";

/// The records of an mc jsonl file (blank lines are ignored).
pub fn records(f: &TaskFile) -> impl Iterator<Item = Rec<ChoiceItem>> + '_ {
    f.lines()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| parse_line(l).map(|it| (n, it)).map_err(|e| (n, e)))
}

/// One line, checked: a string context, 2+ string choices, a label in range.
pub fn parse_line(line: &str) -> Result<ChoiceItem, String> {
    let obj = json_object(line, EXPECTED)?;
    let field = |k: &str| {
        obj.get(k)
            .ok_or_else(|| format!("no \"{k}\" field; expected {EXPECTED}"))
    };
    let context = match field("context")? {
        Value::String(s) => s.clone(),
        _ => return Err("\"context\" is not a string".into()),
    };
    let Value::Array(arr) = field("choices")? else {
        return Err("\"choices\" is not an array of strings".into());
    };
    let choices = arr
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(format!("choice {i} is not a string")),
        })
        .collect::<Result<Vec<String>, String>>()?;
    if choices.len() < 2 {
        return Err(format!(
            "{} choice(s): at least 2 are needed",
            choices.len()
        ));
    }
    let label = field("label")?;
    let label = label
        .as_u64()
        .ok_or_else(|| format!("\"label\" {label} is not a non-negative integer"))?;
    if label >= choices.len() as u64 {
        return Err(format!(
            "\"label\" {label} is out of range for {} choices (0-based)",
            choices.len()
        ));
    }
    Ok(ChoiceItem {
        context,
        choices,
        label: label as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::OnBadLine;
    use crate::tasks::collect;

    #[test]
    fn good_line() {
        let it = parse_line(r#"{"context": "Q", "choices": ["a", "b", "c"], "label": 2, "id": 7}"#)
            .unwrap();
        assert_eq!(it.context, "Q");
        assert_eq!(it.choices, ["a", "b", "c"]);
        assert_eq!(it.label, 2);
    }

    #[test]
    fn each_defect_is_explained() {
        let cases = [
            (
                r#"{"context": "Q", "choices": ["a", "b"], "label": 2}"#,
                "out of range",
            ),
            (
                r#"{"context": "Q", "choices": ["a", "b"], "label": -1}"#,
                "non-negative",
            ),
            (
                r#"{"context": "Q", "choices": ["a", "b"], "label": "0"}"#,
                "non-negative",
            ),
            (
                r#"{"context": "Q", "choices": ["a"], "label": 0}"#,
                "at least 2",
            ),
            (
                r#"{"context": "Q", "choices": ["a", 1], "label": 0}"#,
                "choice 1",
            ),
            (
                r#"{"context": "Q", "choices": "a", "label": 0}"#,
                "not an array",
            ),
            (r#"{"choices": ["a", "b"], "label": 0}"#, "no \"context\""),
            (r#"{"context": "Q", "choices": ["a", "b"]}"#, "no \"label\""),
            (
                r#"{"context": 1, "choices": ["a", "b"], "label": 0}"#,
                "not a string",
            ),
            (
                r#"{"context": "Q", "choices": ["a", "b"], "label": 0"#,
                "not valid JSON",
            ),
            ("[1, 2]", "not a JSON object"),
        ];
        for (line, want) in cases {
            let e = parse_line(line).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn errors_name_the_file_line() {
        let text = "{\"context\": \"Q\", \"choices\": [\"a\", \"b\"], \"label\": 0}\n\n\
                    {\"context\": \"Q\", \"choices\": [\"a\"], \"label\": 0}\n";
        let f = TaskFile::from_text("q.jsonl", text.to_string());
        let e = collect(&f, records(&f), OnBadLine::Stop, None, "questions", Ok).unwrap_err();
        assert!(e.to_string().starts_with("q.jsonl:3: 1 choice(s)"), "{e}");
        let p = collect(&f, records(&f), OnBadLine::Skip, None, "questions", Ok).unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.skipped[0].line, 3);
    }
}
