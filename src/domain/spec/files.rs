//! Source specs written as files (`config/sources/*.json|toml|yaml|yml`):
//! which names are source files, and how one file's text becomes specs.
//! A file holds one spec, or a list of them: a JSON or YAML array, or a
//! top-level `sources` list (`[[sources]]` tables in TOML). A file is taken
//! whole or not at all: one bad spec makes the whole file broken, and the
//! error names the spec (`sources[1].schedule.every_secs`).

use super::*;

/// Largest source file read, in bytes.
pub const MAX_SOURCE_FILE_BYTES: u64 = 1024 * 1024;
/// Most specs one file may hold.
pub const MAX_SPECS_PER_FILE: usize = 1000;

/// The syntax of a source file, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Json,
    Toml,
    Yaml,
}

impl FileFormat {
    /// The format of a file name, if it names a source file (hidden files
    /// and editors' temporary files are not).
    pub fn of(name: &str) -> Option<FileFormat> {
        if name.starts_with('.') || name.ends_with('~') {
            return None;
        }
        let (_, ext) = name.rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "json" => Some(FileFormat::Json),
            "toml" => Some(FileFormat::Toml),
            "yaml" | "yml" => Some(FileFormat::Yaml),
            _ => None,
        }
    }
}

/// Parses one source file: its specs, each validated in full, ids unique.
pub fn parse_source_file(format: FileFormat, text: &str) -> Result<Vec<SourceSpec>, SpecError> {
    let document: serde_json::Value = match format {
        FileFormat::Json => serde_json::from_str(text)
            .map_err(|e| SpecError::new("", format!("not valid JSON: {e}")))?,
        FileFormat::Toml => {
            let table: toml::Table = toml::from_str(text)
                .map_err(|e| SpecError::new("", format!("not valid TOML: {e}")))?;
            serde_json::to_value(table)
                .map_err(|e| SpecError::new("", format!("not valid TOML: {e}")))?
        }
        FileFormat::Yaml => serde_saphyr::from_str(text)
            .map_err(|e| SpecError::new("", format!("not valid YAML: {e}")))?,
    };
    let (prefix, list) = match document {
        serde_json::Value::Array(list) => ("", list),
        serde_json::Value::Object(mut map)
            if map.len() == 1 && map.get("sources").is_some_and(|s| s.is_array()) =>
        {
            let Some(serde_json::Value::Array(list)) = map.remove("sources") else {
                unreachable!("checked to be an array")
            };
            ("sources", list)
        }
        single @ serde_json::Value::Object(_) => {
            let spec = SourceSpec::from_value(single)?;
            spec.validate()?;
            return Ok(vec![spec]);
        }
        _ => {
            return Err(SpecError::new(
                "",
                "a source file holds one source spec (an object) or a list of them",
            ))
        }
    };
    if list.len() > MAX_SPECS_PER_FILE {
        return Err(SpecError::new(
            prefix,
            format!("at most {MAX_SPECS_PER_FILE} sources in one file"),
        ));
    }
    let mut specs: Vec<SourceSpec> = Vec::with_capacity(list.len());
    for (i, value) in list.into_iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        let within = |e: SpecError| {
            let field = if e.field.is_empty() {
                at.clone()
            } else {
                format!("{at}.{}", e.field)
            };
            SpecError::new(field, e.message)
        };
        let spec = SourceSpec::from_value(value).map_err(within)?;
        spec.validate().map_err(within)?;
        if specs.iter().any(|s| s.id == spec.id) {
            return Err(SpecError::new(
                format!("{at}.id"),
                format!("'{}' is given twice in this file", spec.id),
            ));
        }
        specs.push(spec);
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_JSON: &str = r#"{"id": "a", "url": "https://example.org/", "collection": "c",
        "extract": {"fields": {"t": "h1"}}}"#;

    #[test]
    fn names_pick_the_format_and_skip_hidden_and_backup_files() {
        assert_eq!(FileFormat::of("books.json"), Some(FileFormat::Json));
        assert_eq!(FileFormat::of("books.TOML"), Some(FileFormat::Toml));
        assert_eq!(FileFormat::of("b.yml"), Some(FileFormat::Yaml));
        assert_eq!(FileFormat::of("b.yaml"), Some(FileFormat::Yaml));
        assert_eq!(FileFormat::of(".b.json"), None);
        assert_eq!(FileFormat::of("b.json~"), None);
        assert_eq!(FileFormat::of("b.txt"), None);
        assert_eq!(FileFormat::of("json"), None);
    }

    #[test]
    fn one_spec_or_a_list_in_every_format() {
        let one = parse_source_file(FileFormat::Json, ONE_JSON).unwrap();
        assert_eq!(one[0].id, "a");
        let list = format!("[{ONE_JSON}, {}]", ONE_JSON.replace("\"a\"", "\"b\""));
        assert_eq!(parse_source_file(FileFormat::Json, &list).unwrap().len(), 2);
        let toml = r#"
            [[sources]]
            id = "a"
            url = "https://example.org/"
            collection = "c"
            schedule = { cron = "*/5 * * * *" }
            extract.fields.t = { css = "h1", type = "text" }

            [[sources]]
            id = "b"
            url = "https://example.org/b"
            collection = "c"
            extract.fields.t = "h1"
        "#;
        let specs = parse_source_file(FileFormat::Toml, toml).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].schedule.cron.as_deref(), Some("*/5 * * * *"));
        let single_toml = "id = \"a\"\nurl = \"https://example.org/\"\ncollection = \"c\"\n[extract.fields]\nt = \"h1\"\n";
        assert_eq!(
            parse_source_file(FileFormat::Toml, single_toml).unwrap()[0].id,
            "a"
        );
        let yaml = "- id: a\n  url: https://example.org/\n  collection: c\n  schedule: {every_secs: 60}\n  extract:\n    fields:\n      t: h1\n";
        let specs = parse_source_file(FileFormat::Yaml, yaml).unwrap();
        assert_eq!(specs[0].schedule.every_secs, Some(60));
    }

    #[test]
    fn hostile_documents_are_refused_quickly() {
        // An alias bomb: each level doubles the last (2^30 strings).
        let mut bomb = String::from("a: &a0 [x, x]\n");
        for i in 1..30 {
            bomb.push_str(&format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1));
        }
        let started = std::time::Instant::now();
        assert!(parse_source_file(FileFormat::Yaml, &bomb).is_err());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_source_file(FileFormat::Json, &deep).is_err());
        assert!(parse_source_file(FileFormat::Yaml, &deep).is_err());
        let deep_toml = format!("a = {}1{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_source_file(FileFormat::Toml, &deep_toml).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_bad_spec_breaks_the_file_and_is_named() {
        let list = format!(
            "[{ONE_JSON}, {}]",
            ONE_JSON.replace("\"a\"", "\"b\"").replace("h1", "")
        );
        let e = parse_source_file(FileFormat::Json, &list).unwrap_err();
        assert_eq!(e.field, "[1].extract.fields.t.css");
        let e =
            parse_source_file(FileFormat::Json, &format!("[{ONE_JSON}, {ONE_JSON}]")).unwrap_err();
        assert_eq!(e.field, "[1].id");
        let yaml = "sources:\n  - id: a\n    url: https://example.org/\n    collection: c\n    colour: red\n    extract: {fields: {t: h1}}\n";
        let e = parse_source_file(FileFormat::Yaml, yaml).unwrap_err();
        assert_eq!(e.field, "sources[0].colour");
        let e = parse_source_file(FileFormat::Toml, "id = ").unwrap_err();
        assert!(e.message.starts_with("not valid TOML"), "{e}");
        let e = parse_source_file(FileFormat::Json, "42").unwrap_err();
        assert!(e.message.contains("one source spec"), "{e}");
    }
}
